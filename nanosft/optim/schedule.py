"""The SFT learning-rate recipe of nanochat (scripts/chat_sft.py): which LRs, and how they move.

- Which: the embedding / unembedding / matrix / scalar LRs are inherited from the base
  checkpoint's training config when it has one, else defaults: nanochat's (0.3, 0.004, 0.02, 0.5) for a
  Muon-pretrained base, the SmolLM2 recipe's (0.002, 0.002, 0.005, 1e-4) for any other pretrained model;
  a value set in the SFT config overrides all of these. Each choice is logged, so a run says where
  every LR came from.
- How: every LR starts at ``init_lr_frac`` (0.8) of that value - applied once by
  ``nanosft.optim.muon.build_optimizer`` - then follows one multiplier for all groups: linear warmup
  over ``warmup_ratio`` (0 in SFT), constant, then linear warmdown to ``final_lr_frac`` (0) over
  the last ``warmdown_ratio`` (0.5) of the run.

Trade-off: progress is the fraction of optimizer steps done, including the current one
((step + 1) / N), where nanochat counts conversations consumed / dataset size; both reach 1 on
the last step, which therefore runs at ``final_lr_frac`` (0 by default: like nanochat, the last
of N steps leaves the weights unchanged - 1 step in 467 for nanochat's d20 SFT).
``transformers.get_wsd_schedule`` has the same linear warmdown one step earlier, but warms up
from ``min_lr_ratio`` instead of 0, so it is not reused.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers.utils import cached_file

from .muon import LR_KEYS, NANOCHAT_DEFAULT_LRS, PRETRAINED_FINETUNE_LRS

logger = logging.getLogger(__name__)


def lr_multiplier(progress: float, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.5,
                  final_lr_frac: float = 0.0) -> float:
    """LR multiplier at ``progress`` in [0, 1] (fraction of the run; clamped), nanochat chat_sft.py.

    progress < warmup_ratio: progress / warmup_ratio; up to 1 - warmdown_ratio: 1;
    after that linear from 1 to ``final_lr_frac``: (1 - d) + d * final_lr_frac with
    d = (progress - (1 - warmdown_ratio)) / warmdown_ratio.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_ratio:
        return progress / warmup_ratio
    if progress <= 1.0 - warmdown_ratio:
        return 1.0
    decay = (progress - (1.0 - warmdown_ratio)) / warmdown_ratio
    return (1.0 - decay) + decay * final_lr_frac


def build_scheduler(optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.0,
                    warmdown_ratio: float = 0.5, final_lr_frac: float = 0.0) -> LambdaLR:
    """LambdaLR giving every group ``initial_lr * lr_multiplier((step + 1) / num_training_steps)``.

    ``step`` is the 0-based optimizer step (the scheduler is stepped after each optimizer step,
    as transformers' Trainer does). Works for ``MuonAdamW``, ``torch.optim.AdamW`` and DeepSpeed's
    optimizer alike, since it only scales each group's ``initial_lr``.

    Raises:
        ValueError: num_training_steps < 1, or ratios outside [0, 1] / summing above 1.
    """
    if num_training_steps < 1:
        raise ValueError(f"num_training_steps must be >= 1, got {num_training_steps}")
    if not (0 <= warmup_ratio <= 1 and 0 <= warmdown_ratio <= 1 and warmup_ratio + warmdown_ratio <= 1):
        raise ValueError(f"need 0 <= warmup_ratio, warmdown_ratio and their sum <= 1; "
                         f"got {warmup_ratio}, {warmdown_ratio}")

    def multiplier(step: int) -> float:
        return lr_multiplier((step + 1) / num_training_steps, warmup_ratio, warmdown_ratio, final_lr_frac)

    return LambdaLR(optimizer, multiplier)


def _base_training_config(base) -> tuple[dict, str]:
    """(training config dict, where it came from) for a base checkpoint, or ({}, "")."""
    if isinstance(base, dict):
        return base, "the given config"
    if not base or not os.path.isdir(str(base)):
        return {}, ""
    path = os.path.join(base, TRAINING_CONFIG_NAME)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f), path
    metas = [(int(m.group(1)), f) for f in glob.glob(os.path.join(base, "meta_*.json"))
             if (m := re.search(r"meta_(\d+)\.json$", f))]
    if metas:
        path = max(metas)[1]
        with open(path) as f:
            return json.load(f), path
    return {}, ""


MUON_MODEL_TYPES = ("nanochat", "nanochat_gpt")  # transformers' NanoChat (nanochat Oct 2025), nanosft's current GPT
TRAINING_CONFIG_NAME = "nanosft_config.json"  # written by NanoSFTTrainer beside every saved model


def pretraining_optimizer(model_name_or_path, fresh: bool = False) -> tuple[str, str]:
    """(``"muon"`` | ``"adamw"``, reason): the optimizer the base was trained with, as far as its files tell.
    "muon" for a fresh NanoChat (``fresh``); a nanochat checkpoint, raw or converted (``meta_<step>.json``) or by
    ``model_type``; a nanosft checkpoint whose ``nanosft_config.json`` says "muon". "adamw" otherwise (every HF
    model). Used for the reason ``choose_optimizer`` prints and for which default LRs apply
    (``resolve_learning_rates``)."""
    if fresh:
        return "muon", "fresh NanoChat model (model_config), trained from scratch as nanochat does"
    record, source = _base_training_config(model_name_or_path)
    if os.path.basename(source).startswith("meta_"):
        return "muon", f"nanochat checkpoint ({os.path.basename(source)})"
    try:  # a GGUF file, a pkg:// path or an unknown repo has no config.json
        path = cached_file(model_name_or_path, "config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        path = None
    model_type = None
    if path:
        with open(path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    if model_type in MUON_MODEL_TYPES:
        return "muon", f"nanochat checkpoint (model_type {model_type})"
    if source.endswith(TRAINING_CONFIG_NAME) and record.get("optimizer") in ("muon", "adamw"):
        return record["optimizer"], f"the base model's {TRAINING_CONFIG_NAME} records {record['optimizer']}"
    return "adamw", "base model has no Muon pretraining record"


AB_EVIDENCE = ("Muon still beat AdamW fine-tuning the AdamW-pretrained SmolLM2-135M "
               "(SpellingBee 0.80 vs 0.63, bench/results/optimizer_ab.txt)")


def choose_optimizer(cfg) -> str:
    """Resolve ``cfg.optimizer == "auto"`` in place and return the line saying why, e.g. "optimizer auto -> muon:
    nanochat checkpoint (meta_000650.json)" or "optimizer muon: set in the config".

    auto is Muon for every base. For a Muon-pretrained one (``pretraining_optimizer``) that is nanochat's recipe.
    For an AdamW-pretrained one, switching optimizer between pretraining and fine-tuning is reported to hurt
    (Qu, Huang, Horvath, arXiv:2605.10468), but nanosft's A/B on SmolLM2-135M found otherwise
    (bench/results/optimizer_ab.txt: same data, steps and seed; Muon 0.80 on SpellingBee against 0.63 for AdamW
    at its best LR by val bpb, 0.62 for LoRA, 0.39 for one-LR Hugging Face AdamW; the other tasks and val bpb
    within noise or slightly favouring AdamW), so Muon stays, with ``PRETRAINED_FINETUNE_LRS``
    (``resolve_learning_rates``). ``optimizer: adamw`` remains the override.
    """
    if cfg.optimizer != "auto":
        return f"optimizer {cfg.optimizer}: set in the config"
    pretrained, reason = pretraining_optimizer(cfg.model_name_or_path, fresh=cfg.model_config is not None)
    cfg.optimizer = "muon"
    return f"optimizer auto -> muon: {reason}" + (f"; {AB_EVIDENCE}" if pretrained != "muon" else "")


def used_learning_rates(args) -> dict:
    """The learning rates the optimizer trains with, for records and model cards: ``{"learning_rate": lr}`` for
    Hugging Face's one-LR AdamW (``optimizer: adamw`` with ``optimizer_kwargs: {lr: ...}``), else nanochat's four
    group LRs ``{"embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr"}`` (None where not resolved yet)."""
    lr = (getattr(args, "optimizer_kwargs", None) or {}).get("lr")
    if lr is not None:
        return {"learning_rate": lr}
    return {k: getattr(args, k, None) for k in LR_KEYS}


def _find_lrs(config: dict) -> dict:
    """LR keys at the top level or one level down (nanochat meta: ``user_config``)."""
    found = {k: config[k] for k in LR_KEYS if config.get(k) is not None}
    for sub in ("user_config", "training", "training_args", "optimizer"):
        if isinstance(config.get(sub), dict):
            found = {**{k: v for k, v in config[sub].items() if k in LR_KEYS and v is not None}, **found}
    return found


def resolve_learning_rates(base_model_path_or_config, overrides: dict | None = None,
                           muon_pretrained: bool = True) -> dict:
    """Embedding/unembedding/matrix/scalar LRs for SFT: override > base checkpoint > default.

    Looks for the base checkpoint's training config in, in order: a dict passed directly;
    ``<folder>/nanosft_config.json`` (``nanosft.checkpoint.write_training_config``); nanochat's
    ``<folder>/meta_<step>.json`` of the latest step (LR keys under ``user_config``, as scripts/base_train.py
    saves its arguments). ``overrides`` entries that are None mean "not set". The default is nanochat's
    (``NANOCHAT_DEFAULT_LRS``) for a Muon-pretrained base (``muon_pretrained``), else the fine-tuning LRs of a
    pretrained model (``PRETRAINED_FINETUNE_LRS``). Logs one line per LR: inherited, overridden, or default.

    Returns:
        {"embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr"} -> float.
    """
    config, source = _base_training_config(base_model_path_or_config)
    inherited = _find_lrs(config)
    overrides = {k: v for k, v in (overrides or {}).items() if k in LR_KEYS and v is not None}
    defaults, default_name = ((NANOCHAT_DEFAULT_LRS, "nanochat default") if muon_pretrained else
                              (PRETRAINED_FINETUNE_LRS, "default for a base not pretrained with Muon"))
    if not source:
        logger.info("learning rates: no training config found for base %r; an LR not set takes its %s",
                    base_model_path_or_config, default_name)
    out = {}
    for key in LR_KEYS:
        if key in overrides:
            out[key] = float(overrides[key])
            how = f"overridden (base had {inherited[key]})" if key in inherited else "overridden"
        elif key in inherited:
            out[key], how = float(inherited[key]), f"inherited from {source}"
        else:
            out[key], how = defaults[key], default_name
        logger.info("learning rates: %s = %g (%s)", key, out[key], how)
    return out


# nanochat meta keys (scripts/base_train.py save_checkpoint meta) -> nanosft config keys; chat_sft.py inherits
# max_seq_len, device_batch_size and total_batch_size from the base checkpoint unless overridden.
BATCH_SHAPE_KEYS = {"max_length": ("max_seq_len", "sequence_len"),
                    "per_device_train_batch_size": ("device_batch_size",),
                    "total_batch_size": ("total_batch_size",)}


def inherit_batch_shape(raw: dict) -> tuple[dict, list[str]]:
    """Fill ``max_length``, ``per_device_train_batch_size`` and ``total_batch_size`` that the user config does
    not set from the base checkpoint's nanochat meta (``max_seq_len`` or ``model_config.sequence_len``,
    ``device_batch_size``, ``total_batch_size``), as nanochat's chat_sft.py does. ``total_batch_size`` is not
    inherited when the config sets ``gradient_accumulation_steps``.

    Args:
        raw: the user's config dict (before defaults); not mutated.

    Returns:
        (config dict with the inherited keys added, one log line per inherited key). Nothing is inherited for a
        fresh ``model_config`` model or a base without a nanochat meta.
    """
    if raw.get("model_config") is not None:
        return raw, []
    base, source = _base_training_config(raw.get("model_name_or_path"))
    if not source.endswith(".json") or "model_config" not in base:
        return raw, []
    flat = {**(base.get("model_config") or {}), **base}
    out, lines = dict(raw), []
    for key, names in BATCH_SHAPE_KEYS.items():
        value = next((flat[n] for n in names if flat.get(n) is not None), None)
        if key == "total_batch_size" and "gradient_accumulation_steps" in raw:
            continue  # the config fixed the accumulation itself
        if key not in raw and value is not None:
            out[key] = int(value)
            lines.append(f"batch shape: {key} = {int(value)} (inherited from {source})")
    return out, lines
