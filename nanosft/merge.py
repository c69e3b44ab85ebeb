"""Merge a LoRA checkpoint into a plain HF model: ``python -m nanosft.merge <adapter_checkpoint> <out_dir>``.

A LoRA run saves only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, a few MB) and
the tokenizer. This command rebuilds the base exactly as ``nanosft.train`` did - from the run config
recorded next to the adapter (``run_config.json`` in the run folder or its parent, or a checkpoint's
``nanosft_state.json``), so ``pkg://``/GGUF paths, the nanochat special tokens (rows resized with mean
init) and the generation config (stop at ``<|assistant_end|>``) all match - loads the adapter with
``peft.PeftModel.from_pretrained``, folds it in with ``merge_and_unload`` (W + (alpha / r) B A; trained
token rows written into the embedding), and saves a model that plain ``AutoModelForCausalLM`` loads with
no peft installed: safetensors, config, generation config, tokenizer and chat template.

Trade-off: the merged folder is the full model again (540 MB for SmolLM2-135M in fp32 vs ~2-5 MB of
adapter); serve the adapter with peft when disk matters, merge when a tool needs a plain checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from transformers import AutoTokenizer

from .files import follow_umask
from .models.pretrained import load_model
from .training.config import NanoSFTConfig

logger = logging.getLogger(__name__)


def find_run_config(checkpoint: str) -> dict | None:
    """The YAML config dict of the run that wrote ``checkpoint`` (see the module docstring), or None."""
    candidates = [(os.path.join(checkpoint, "nanosft_state.json"), "config"),
                  (os.path.join(checkpoint, "run_config.json"), "config"),
                  (os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "run_config.json"), "config")]
    for path, key in candidates:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f).get(key)
            if isinstance(config, dict) and (config.get("model_name_or_path") or config.get("model_config")):
                return config
    return None


def load_base_model(checkpoint: str, tokenizer, base: str | None = None):
    """The base model the adapter in ``checkpoint`` was trained on, resized to ``tokenizer``.

    Args:
        checkpoint: folder with ``adapter_config.json``.
        tokenizer: the checkpoint's tokenizer (nanochat tokens included).
        base: override the base model path (else the run config's, else the adapter config's).

    Raises:
        ValueError: the run trained a fresh ``model_config`` model, whose initial weights were never saved.
    """
    config = dict(find_run_config(checkpoint) or {})
    if base is None and not config.get("model_name_or_path"):
        if config.get("model_config"):
            raise ValueError(f"{checkpoint}: the run trained LoRA on a fresh `model_config` model; its initial "
                             "weights were never saved. Pass --base <folder> with that model.")
        with open(os.path.join(checkpoint, "adapter_config.json"), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    keep = {k: config[k] for k in ("model_name_or_path", "model_init_kwargs", "bf16") if config.get(k) is not None}
    if base is not None:
        keep["model_name_or_path"] = base
    cfg = NanoSFTConfig(output_dir=os.path.join(checkpoint, "_merge"), report_to="none", **keep)
    return load_model(cfg, tokenizer)


def merge_adapter(checkpoint: str, out_dir: str, base: str | None = None) -> str:
    """Merge the LoRA adapter in ``checkpoint`` into its base and save a plain HF model in ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: ``checkpoint`` has no ``adapter_config.json`` (not a LoRA checkpoint).
    """
    from peft import PeftModel  # heavy; only LoRA checkpoints need it

    if not os.path.isfile(os.path.join(checkpoint, "adapter_config.json")):
        raise FileNotFoundError(f"{checkpoint}: no adapter_config.json; this is not a LoRA (peft) checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_base_model(checkpoint, tokenizer, base)
    generation_config = model.generation_config
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    merged.generation_config = generation_config
    for attr in ("nanosft_new_token_ids", "peft_config"):
        if hasattr(merged, attr):
            delattr(merged, attr)
    os.makedirs(out_dir, exist_ok=True)
    merged.save_pretrained(out_dir)
    follow_umask(out_dir, ".safetensors")  # safetensors writes 0600 whatever the umask
    tokenizer.save_pretrained(out_dir)  # tokenizer.json + chat_template.jinja
    logger.info("merged %s into %s (%.1fM parameters)", checkpoint, out_dir, merged.num_parameters() / 1e6)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanosft.merge", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a LoRA run's output_dir or checkpoint-<step> (holds adapter_config.json)")
    p.add_argument("out_dir", help="where to write the merged model")
    p.add_argument("--base", default=None, help="base model path (default: the run config's model_name_or_path)")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    print(merge_adapter(args.checkpoint, args.out_dir, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
