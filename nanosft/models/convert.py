"""nanochat base checkpoint -> Hugging Face checkpoint, lossless, with nothing dropped silently.

    python -m nanosft.convert <nanochat_ckpt_dir> <out_dir> [--step N] [--tokenizer-dir DIR] [--dtype ...]

Input: nanochat's ``base_checkpoints/<tag>/`` folder (``model_<step>.pt`` state dict, ``meta_<step>.json``
with ``model_config`` {sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd[, window_pattern]} and
``user_config``) and a nanochat tokenizer folder (``tokenizer.tiktoken`` + ``tokenizer_meta.json``, or nanochat's
``tokenizer.pkl``). Output: safetensors + config, the tokenizer with the nanochat chat template and special
tokens, and the meta json (so ``nanosft.optim.schedule`` can inherit the base LRs, T and batch sizes).

Two generations of nanochat's GPT, told apart by the tensors and the meta (``checkpoint_generation``):

- current (2026: value embeddings + gates, residual/x0 lambdas, smear, backout, sliding windows, rotary base
  100,000, q/k x 1.2): nanosft's ``NanoChatGPTForCausalLM`` (``nanosft/models/nanochat_gpt``), key map in
  ``map_current_state_dict``. The folder ships the model's configuration/modeling files and an ``auto_map``:
  ``trust_remote_code=True`` loads it where nanosft is not installed.
- October 2025 (none of those tensors, all-L windows): transformers' ``NanoChatForCausalLM``, no remote code.
  Key map ``transformer.wte`` -> ``model.embed_tokens``; ``transformer.h.{i}.attn.c_{q,k,v,proj}`` ->
  ``model.layers.{i}.self_attn.{q,k,v,o}_proj``; ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``fc2``;
  ``lm_head`` -> ``lm_head``. Numerics of that nanochat version (checked against its nanochat/gpt.py):
  relu^2 MLP, RoPE theta 10,000 then QK RMSNorm with no q/k scale, norm after the embedding, softcap 15,
  untied head; ``rms_norm_eps`` is float32's machine epsilon, what ``F.rms_norm(x, (d,))`` uses in fp32.

Every key must map and every target must be filled, else ``UnsupportedCheckpointError`` names each tensor
(with its shape) and feature that has no place. transformers' ``convert_nanochat_checkpoints.py`` (not shipped
in the wheel) instead prints "Skipped N legacy entries" and converts anyway - a model that silently computes
something else.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import os
import pickle
import re
import shutil
import tempfile

import torch
from transformers import NanoChatConfig, NanoChatForCausalLM

from ..files import follow_umask
from ..format.tokenizer import ASSISTANT_END, BOS, build_nanochat_tokenizer
from .nanochat_gpt import NanoChatGPTConfig, NanoChatGPTForCausalLM

logger = logging.getLogger(__name__)

_MODEL_RE = re.compile(r"model_(\d+)\.pt$")
_LAYER_MAP = {
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}
_NANOCHAT_ROPE_THETA = 10000.0  # nanochat/gpt.py _precompute_rotary_embeddings(base=10000)
_NANOCHAT_SOFTCAP = 15.0  # nanochat/gpt.py forward: softcap * tanh(logits / softcap)


class UnsupportedCheckpointError(ValueError):
    """The nanochat checkpoint has tensors or features that no nanosft/transformers model can place."""


# Tensors that only the current nanochat GPT has (nanochat/gpt.py after January 2026).
_CURRENT_ONLY = re.compile(r"^(value_embeds\.\d+\.weight|transformer\.h\.\d+\.attn\.ve_gate\.weight|resid_lambdas|"
                           r"x0_lambdas|smear_gate\.weight|smear_lambda|backout_lambda)$")
_CURRENT_LAYER_MAP = {**_LAYER_MAP, "attn.ve_gate.weight": "self_attn.ve_gate.weight"}
_CURRENT_TOP_MAP = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight",
                    "resid_lambdas": "model.resid_lambdas", "x0_lambdas": "model.x0_lambdas",
                    "smear_gate.weight": "model.smear_gate.weight", "smear_lambda": "model.smear_lambda",
                    "backout_lambda": "model.backout_lambda"}


def checkpoint_generation(state: dict[str, torch.Tensor], meta: dict) -> str:
    """"current" (nanochat's GPT with value embeddings, lambdas, smear, windows: ``NanoChatGPTForCausalLM``) or
    "nanochat-2025" (the October 2025 GPT: transformers' ``NanoChatForCausalLM``), from the tensors and the meta.

    Any current-only tensor, or a ``window_pattern`` in ``meta["model_config"]`` other than all-L, means current.
    """
    mc = meta.get("model_config") or meta
    window = str(mc.get("window_pattern") or "L").upper()
    if any(_CURRENT_ONLY.match(k.removeprefix("_orig_mod.")) for k in state) or set(window) - {"L"}:
        return "current"
    return "nanochat-2025"


def map_current_state_dict(state: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], object]:
    """Rename a current nanochat GPT state dict to ``NanoChatGPTForCausalLM``'s and build its ``NanoChatGPTConfig``.

    Key map: ``transformer.wte`` -> ``model.embed_tokens``; ``transformer.h.{i}.attn.c_{q,k,v,proj}`` ->
    ``model.layers.{i}.self_attn.{q,k,v,o}_proj``; ``attn.ve_gate`` -> ``self_attn.ve_gate``; ``mlp.c_fc``/``c_proj``
    -> ``mlp.fc1``/``fc2``; ``value_embeds.{i}`` -> ``model.value_embeds.{i}``; the lambdas and ``smear_gate`` ->
    ``model.<name>``; ``lm_head`` -> ``lm_head``. ``_orig_mod.`` prefixes (torch.compile) are stripped. Missing
    ``resid_lambdas``/``x0_lambdas`` become 1/0 and a missing ``window_pattern`` "L", as nanochat's loader
    does (nanochat/checkpoint_manager.py ``_patch_missing_keys``, ``_patch_missing_config_keys``).

    Raises:
        UnsupportedCheckpointError: naming every tensor that has no place (with its shape), every expected
            tensor that is missing, and every shape that disagrees with ``model_config``.
    """
    mc = dict(meta.get("model_config") or meta)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    n_layer, n_head = int(mc["n_layer"]), int(mc["n_head"])
    n_kv_head, n_embd = int(mc.get("n_kv_head") or n_head), int(mc["n_embd"])
    state.setdefault("resid_lambdas", torch.ones(n_layer))
    state.setdefault("x0_lambdas", torch.zeros(n_layer))
    config = NanoChatGPTConfig(
        vocab_size=int(mc["vocab_size"]), hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv_head,
        max_position_embeddings=int(mc.get("sequence_len", 2048)), window_pattern=mc.get("window_pattern") or "L")
    pairs = dict(_CURRENT_TOP_MAP)
    for i in range(n_layer):
        for a, b in _CURRENT_LAYER_MAP.items():
            if a != "attn.ve_gate.weight" or config.has_value_embedding(i):
                pairs[f"transformer.h.{i}.{a}"] = f"model.layers.{i}.{b}"
        if config.has_value_embedding(i):
            pairs[f"value_embeds.{i}.weight"] = f"model.value_embeds.{i}.weight"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in NanoChatGPTForCausalLM(config).state_dict().items()}
    out, problems = {}, []
    for src, dst in pairs.items():
        if src not in state:
            problems.append(f"missing tensor {src}")
        elif tuple(state[src].shape) != expected[dst]:
            problems.append(f"{src}: shape {tuple(state[src].shape)}, expected {expected[dst]} from model_config {mc}")
        else:
            out[dst] = state[src]
    for key in sorted(set(state) - set(pairs)):
        problems.append(f"unplaceable tensor {key} {tuple(state[key].shape)}")
    if problems:
        raise UnsupportedCheckpointError(
            "this nanochat checkpoint does not match the current nanochat GPT (nanosft NanoChatGPTForCausalLM):\n  "
            + "\n  ".join(problems))
    return out, config


def is_nanochat_checkpoint(path: str | None) -> bool:
    """True for a folder holding nanochat's ``model_<step>.pt`` and ``meta_<step>.json``."""
    return bool(path) and os.path.isdir(path) and bool(glob.glob(os.path.join(path, "model_*.pt"))) \
        and bool(glob.glob(os.path.join(path, "meta_*.json")))


def find_step(ckpt_dir: str, step: int | None = None) -> int:
    """The step to convert: ``step`` if given (must exist), else the largest ``model_<step>.pt``.

    Raises:
        FileNotFoundError: no ``model_*.pt`` in ``ckpt_dir`` or the given step is missing.
    """
    steps = sorted(int(m.group(1)) for f in os.listdir(ckpt_dir) if (m := _MODEL_RE.match(f)))
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir}: no nanochat model_<step>.pt file")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"{ckpt_dir}: no model_{step:06d}.pt (steps present: {steps})")
    return step


def _step_file(ckpt_dir: str, prefix: str, ext: str, step: int) -> str:
    for name in (f"{prefix}_{step:06d}.{ext}", f"{prefix}_{step}.{ext}"):
        if os.path.isfile(os.path.join(ckpt_dir, name)):
            return os.path.join(ckpt_dir, name)
    raise FileNotFoundError(f"{ckpt_dir}: no {prefix}_{step:06d}.{ext}")


def map_state_dict(state: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename a nanochat GPT state dict to NanoChatForCausalLM's and derive the ``NanoChatConfig`` kwargs.

    Args:
        state: nanochat ``model.state_dict()`` (``_orig_mod.`` prefixes of torch.compile are stripped).
        meta: the ``meta_<step>.json`` dict (``model_config`` is read).

    Returns:
        (hf_state_dict, config_kwargs).

    Raises:
        UnsupportedCheckpointError: listing every tensor that has no counterpart (with its shape), every
            expected tensor that is missing, and unsupported ``model_config`` features (sliding windows).
    """
    mc = dict(meta.get("model_config") or meta)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    n_layer, n_head = int(mc["n_layer"]), int(mc["n_head"])
    n_kv_head, n_embd = int(mc.get("n_kv_head") or n_head), int(mc["n_embd"])
    out, used, problems = {}, set(), []
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"), ("lm_head.weight", "lm_head.weight")]
    pairs += [(f"transformer.h.{i}.{a}", f"model.layers.{i}.{b}") for i in range(n_layer) for a, b in _LAYER_MAP.items()]
    for src, dst in pairs:
        if src in state:
            out[dst] = state[src]
            used.add(src)
        else:
            problems.append(f"missing tensor {src}")
    for key in sorted(set(state) - used):
        problems.append(f"unsupported tensor {key} {tuple(state[key].shape)}")
    window = mc.get("window_pattern") or mc.get("sliding_window_pattern")
    if window and set(str(window).upper()) - {"L"}:
        problems.append(f"unsupported sliding-window attention pattern {window!r} (model_config.window_pattern)")
    if problems:
        raise UnsupportedCheckpointError(
            "this nanochat checkpoint cannot be converted to transformers' NanoChat without changing the model "
            "(value embeddings, gates, residual lambdas and sliding windows are not in the port):\n  "
            + "\n  ".join(problems))
    head_dim = n_embd // n_head
    vocab = out["model.embed_tokens.weight"].shape[0]
    if out["lm_head.weight"].shape[0] != vocab:
        raise UnsupportedCheckpointError(f"lm_head has {out['lm_head.weight'].shape[0]} rows, wte {vocab}")
    expect = {"model.layers.0.self_attn.q_proj.weight": (n_head * head_dim, n_embd),
              "model.layers.0.self_attn.k_proj.weight": (n_kv_head * head_dim, n_embd)}
    for key, shape in expect.items():
        if tuple(out[key].shape) != shape:
            raise UnsupportedCheckpointError(f"{key}: shape {tuple(out[key].shape)}, expected {shape} from "
                                             f"model_config {mc}")
    config = dict(
        vocab_size=vocab, hidden_size=n_embd, intermediate_size=out["model.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
        max_position_embeddings=int(mc.get("sequence_len", 2048)), hidden_act="relu2",
        rms_norm_eps=torch.finfo(torch.float32).eps, final_logit_softcapping=_NANOCHAT_SOFTCAP,
        rope_parameters={"rope_type": "default", "rope_theta": _NANOCHAT_ROPE_THETA},
        tie_word_embeddings=False, attention_bias=False, pad_token_id=None,
    )
    return out, config


def find_tokenizer_dir(ckpt_dir: str, tokenizer_dir: str | None = None) -> str:
    """The nanochat tokenizer folder: ``tokenizer_dir``, else ``<ckpt>/tokenizer``, ``<ckpt>``,
    ``<base_dir>/tokenizer`` (nanochat keeps ``base_checkpoints/<tag>`` and ``tokenizer/`` side by side),
    ``$NANOCHAT_BASE_DIR/tokenizer``, ``~/.cache/nanochat/tokenizer``.

    Raises:
        FileNotFoundError: none of them holds ``tokenizer.tiktoken`` or ``tokenizer.pkl``.
    """
    base = os.environ.get("NANOCHAT_BASE_DIR", os.path.expanduser("~/.cache/nanochat"))
    candidates = [tokenizer_dir] if tokenizer_dir else [
        os.path.join(ckpt_dir, "tokenizer"), ckpt_dir, os.path.join(ckpt_dir, "..", "..", "tokenizer"),
        os.path.join(base, "tokenizer")]
    for d in candidates:
        if d and any(os.path.isfile(os.path.join(d, f)) for f in ("tokenizer.tiktoken", "tokenizer.pkl")):
            return os.path.normpath(d)
    raise FileNotFoundError(f"no nanochat tokenizer (tokenizer.tiktoken or tokenizer.pkl) in {candidates}; "
                            "pass --tokenizer-dir (config: tokenizer_name_or_path)")


def load_nanochat_tokenizer(tokenizer_dir: str):
    """``nanosft.format.tokenizer.build_nanochat_tokenizer`` for a rank-file folder or nanochat's ``tokenizer.pkl``.

    A pickled ``tiktoken.Encoding`` is written out as ``tokenizer.tiktoken`` + ``tokenizer_meta.json`` in a
    temporary folder first (ranks, split pattern and special-token ids are read from the Encoding).
    """
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.tiktoken")):
        return build_nanochat_tokenizer(tokenizer_dir)

    with open(os.path.join(tokenizer_dir, "tokenizer.pkl"), "rb") as f:
        enc = pickle.load(f)  # nanochat's own file (trusted input, as torch.load of the model)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.tiktoken"), "w", encoding="ascii") as f:
            for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")
        with open(os.path.join(tmp, "tokenizer_meta.json"), "w", encoding="utf-8") as f:
            json.dump({"pattern": enc._pat_str, "special_tokens": dict(enc._special_tokens)}, f)
        return build_nanochat_tokenizer(tmp)


def convert_checkpoint(ckpt_dir: str, out_dir: str, step: int | None = None, tokenizer_dir: str | None = None,
                       dtype: str | None = None) -> str:
    """Convert ``ckpt_dir`` (nanochat) into an HF folder ``out_dir``; returns ``out_dir``.

    Args:
        ckpt_dir: nanochat ``base_checkpoints/<tag>`` (or ``chatsft_checkpoints/<tag>``) folder.
        out_dir: output folder (created; files overwritten).
        step: which ``model_<step>.pt``; default the latest.
        tokenizer_dir: nanochat tokenizer folder; default searched (``find_tokenizer_dir``).
        dtype: "float32" | "bfloat16" | "float16"; default the checkpoint's own dtype.

    Raises:
        UnsupportedCheckpointError: see ``map_state_dict``. FileNotFoundError: missing inputs.
    """
    step = find_step(ckpt_dir, step)
    meta_path = _step_file(ckpt_dir, "meta", "json", step)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    state = torch.load(_step_file(ckpt_dir, "model", "pt", step), map_location="cpu", weights_only=True)
    generation = checkpoint_generation(state, meta)
    if generation == "current":
        hf_state, config = map_current_state_dict(state, meta)
        model_cls = NanoChatGPTForCausalLM
    else:
        hf_state, config_kwargs = map_state_dict(state, meta)
        config, model_cls = NanoChatConfig(**config_kwargs), NanoChatForCausalLM
    tokenizer = load_nanochat_tokenizer(find_tokenizer_dir(ckpt_dir, tokenizer_dir))
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model's embedding {config.vocab_size}")
    bos, end = tokenizer.convert_tokens_to_ids(BOS), tokenizer.convert_tokens_to_ids(ASSISTANT_END)
    torch_dtype = getattr(torch, dtype) if dtype else hf_state["model.embed_tokens.weight"].dtype
    config.bos_token_id, config.eos_token_id = bos, end
    with torch.device("meta"):
        model = model_cls(config)
    model.load_state_dict({k: v.to(torch_dtype) for k, v in hf_state.items()}, strict=True, assign=True)
    if generation == "current":  # non-persistent buffers (rotary inv_freq) were built on the meta device
        rot = model.model.rotary_emb
        inv_freq = rot.compute_default_rope_parameters(config)[0]
        rot.inv_freq, rot.original_inv_freq = inv_freq, inv_freq.clone()
    model.config.dtype = torch_dtype
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = bos, end
    model.generation_config.pad_token_id = bos
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    follow_umask(out_dir, ".safetensors")  # safetensors writes 0600 whatever the umask
    tokenizer.save_pretrained(out_dir)
    shutil.copy(meta_path, os.path.join(out_dir, os.path.basename(meta_path)))  # base LRs for nanosft.optim.schedule
    logger.info("converted %s step %d (%s nanochat GPT) -> %s (%s, %d tensors, %s)", ckpt_dir, step, generation,
                out_dir, model_cls.__name__, len(hf_state), torch_dtype)
    return out_dir
