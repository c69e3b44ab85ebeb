"""Shared command lines for the checkpoint and distributed tests: a tiny, fast, deterministic run.

A 2-layer x 64 NanoChat with the real nanochat tokenizer (the 65,536-row embedding and lm_head dominate
the step), rows of 128 tokens, 64 GSM8K conversations, no evaluation: ~1-2 s per step on 2 CPU cores.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
TINY_MODEL = "{hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4}"


def tiny_overrides(data_dir: str, output_dir: str, **extra) -> list[str]:
    """``--set`` arguments for configs/tiny.yaml: small model, T=128, no eval, fp32, seeded."""
    sets = {
        "model_config": TINY_MODEL,
        "max_length": 128,
        "datasets": "[{name: gsm8k, max_rows: 64}]",
        "eval_datasets": "null",
        "eval_strategy": '"no"',
        "data_dir": data_dir,
        "tokenizer_name_or_path": os.path.join(data_dir, "nanochat_tokenizer"),
        "output_dir": output_dir,
        "dataloader_num_workers": 0,
        "bf16": "false",
        "report_to": "none",
        "disable_tqdm": "true",
        "chatcore_every": -1,
    }
    sets.update({k: v for k, v in extra.items()})
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def bin_path(name: str) -> str:
    """An executable of the current virtual environment (accelerate, deepspeed)."""
    return os.path.join(os.path.dirname(sys.executable), name)
