"""Atomic checkpoints, ``resume_from_checkpoint: auto``, and the record every checkpoint carries.

Design. transformers' ``Trainer._save_checkpoint`` (5.24) writes ``<output_dir>/checkpoint-<step>/``
file by file (model, optimizer, scheduler, RNG, ``trainer_state.json``) with no atomic step: a process
killed mid-save leaves a folder that ``get_last_checkpoint`` picks and ``resume_from_checkpoint`` then
fails on (or silently loads half a state). ``NanoSFTTrainer._save_checkpoint`` lets the Trainer write
into ``<output_dir>/tmp-checkpoint-<step>/checkpoint-<step>/`` instead, adds ``nanosft_state.json``
and the model card, waits for every rank, and only then moves the folder to
``<output_dir>/checkpoint-<step>`` with one ``os.replace`` (atomic on POSIX within one filesystem).
So a ``checkpoint-<step>`` folder either exists complete or not at all, and ``latest_checkpoint``
ignores ``tmp-*`` leftovers. Rotation (``save_total_limit``) and the Hub push run after the rename.

Trade-off: one extra directory rename per save (microseconds) and, for a kill during a save, the
partial ``tmp-checkpoint-*`` stays on disk until the next save of that run removes it. A multi-node
run needs ``output_dir`` on a shared filesystem (or ``save_on_each_node: true``), as for the Trainer.

The record (``nanosft_state.json``): ``checkpoint_record``; beside it ``nanosft_config.json``
(``write_training_config``), which the next run starting from the checkpoint reads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys

import accelerate
import torch
import transformers
import trl

from .. import __version__
from ..errors import ConfigError, MissingPathError
from ..files import write_json_atomic
from ..optim.schedule import LR_KEYS, TRAINING_CONFIG_NAME, used_learning_rates

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
TMP_PREFIX = "tmp-checkpoint-"
RECORD_NAME = "nanosft_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
# Metric keys copied into the record (latest value of each in state.log_history).
_METRIC_RE = re.compile(r"^(eval_)?(val_bpb|bpb|loss)$|^(eval_)?chatcore((_metric|_cat)(/.+)?|/.+)$|^eval_.*bpb$")
# Secrets in records: keys ending in token/secret/password/key (``hub_token``, ``wandb_api_key``), any value
# holding a Hugging Face token (``hf_`` + 30 or more letters/digits, https://huggingface.co/docs/hub/security-tokens).
_SECRET_KEY_RE = re.compile(r"(token|secret|password|(^|_)key)$", re.IGNORECASE)
_SECRET_VALUE_RE = re.compile(r"\bhf_[A-Za-z0-9]{30,}")


def is_complete(folder: str) -> bool:
    """A checkpoint folder the Trainer can resume from: it holds ``trainer_state.json``.

    Folders written by nanosft are complete by construction (renamed into place last); the check
    also guards folders written by a stock Trainer that was killed mid-save.
    """
    return os.path.isfile(os.path.join(folder, "trainer_state.json"))


def latest_checkpoint(output_dir: str) -> str | None:
    """The complete ``checkpoint-<step>`` folder with the highest step in ``output_dir``, or None.

    ``tmp-checkpoint-*`` folders (a save that never finished) and incomplete folders are skipped,
    with a warning naming them.
    """
    found, skipped = [], []
    for name in checkpoint_folders(output_dir):
        m, path = _CHECKPOINT_RE.match(name), os.path.join(output_dir, name)
        if m and is_complete(path):
            found.append((int(m.group(1)), path))
        else:
            skipped.append(name)
    if skipped:
        logger.warning("resume: ignoring incomplete checkpoint folders in %s: %s", output_dir, skipped)
    return max(found)[1] if found else None


def resolve_resume(value, output_dir: str) -> str | None:
    """Turn the config's ``resume_from_checkpoint`` into a folder for ``Trainer.train``.

    Args:
        value: None/False/"" (start fresh); "auto" (the latest complete checkpoint in ``output_dir``,
            None when there is none: a first run and its restart share one config); True/"true"/"latest"
            (the latest complete checkpoint, which must exist); or a checkpoint folder.
        output_dir: the run's ``output_dir``.

    Returns:
        A checkpoint folder, or None.

    Raises:
        MissingPathError: (a ``FileNotFoundError``) True/"latest" with no complete checkpoint, or a folder
            that is missing or incomplete (the message says which).
    """
    if value in (None, False, ""):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        found = latest_checkpoint(output_dir)
        logger.info("resume_from_checkpoint=auto: %s", found or f"no complete checkpoint in {output_dir}, starting fresh")
        return found
    if value is True or (isinstance(value, str) and value.lower() in ("true", "latest")):
        found = latest_checkpoint(output_dir)
        if found is None:
            raise MissingPathError(f"resume_from_checkpoint={value!r}: no complete checkpoint-<step> folder in "
                                   f"{output_dir}; use 'auto' to start fresh when there is none")
        return found
    if not is_complete(str(value)):
        raise MissingPathError(f"resume_from_checkpoint={value!r}: not a complete checkpoint folder "
                               "(no trainer_state.json); use 'auto' for the latest complete one")
    return str(value)


def checkpoint_folders(output_dir: str) -> list[str]:
    """Names of the ``checkpoint-<step>`` and ``tmp-checkpoint-*`` folders in ``output_dir`` (sorted)."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if os.path.isdir(os.path.join(output_dir, n))
                  and (_CHECKPOINT_RE.match(n) or n.startswith(TMP_PREFIX)))


def check_output_dir(output_dir: str, resume_from_checkpoint, overwrite: bool) -> list[str]:
    """Refuse to start a fresh run over the checkpoints of an earlier one, unless told to overwrite.

    A re-run after a crash without ``resume_from_checkpoint`` would otherwise restart from step 1 and
    mix its checkpoints with the old ones (rotation and ``auto`` resume then pick among both).

    Returns:
        The checkpoint folders to delete before training (``overwrite`` with no resume), else ``[]``.

    Raises:
        ConfigError: ``output_dir`` holds checkpoint folders, ``resume_from_checkpoint`` is unset and
            ``overwrite`` is False; the message names both options.
    """
    if resume_from_checkpoint not in (None, False, ""):
        return []
    found = checkpoint_folders(output_dir)
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(f"output_dir {output_dir} already holds checkpoints ({shown}); set "
                          "`resume_from_checkpoint: auto` to continue from the latest, or `overwrite_output_dir: "
                          "true` to start fresh (deletes them)")
    return found


def remove_checkpoints(output_dir: str, names: list[str]) -> None:
    """Delete the named checkpoint folders of ``output_dir`` (``overwrite_output_dir``; main process only)."""
    for name in names:
        logger.warning("overwrite_output_dir: deleting %s", os.path.join(output_dir, name))
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def remove_stale_staging(run_dir: str) -> None:
    """Delete ``tmp-checkpoint-*`` folders left by a save that was killed (main process only)."""
    for name in checkpoint_folders(run_dir):
        if name.startswith(TMP_PREFIX):
            logger.warning("removing incomplete checkpoint %s (a save that never finished)", name)
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def commit(written: str, final: str) -> None:
    """Move a fully written checkpoint into place with ``os.replace``, then drop its staging folder.

    ``os.replace`` cannot replace a non-empty folder, so an existing ``final`` (a run restarted into
    the same ``output_dir``) is first renamed aside and deleted after the swap: at every instant a
    complete ``checkpoint-<step>`` exists or none does.
    """
    aside = None
    if os.path.exists(final):
        aside = os.path.join(os.path.dirname(final), f"{TMP_PREFIX}old-{os.path.basename(final)}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    _fsync([os.path.join(root, n) for root, _, files in os.walk(written) for n in files])
    os.replace(written, final)
    _fsync([os.path.dirname(final)])
    parent = os.path.dirname(written)
    if os.path.basename(parent).startswith(TMP_PREFIX):
        shutil.rmtree(parent, ignore_errors=True)
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


def _fsync(paths: list[str]) -> None:
    """Flush each file (or folder entry) to disk, so a rename never publishes data still in the page cache; a
    path that cannot be opened, or a folder that cannot be synced (some network filesystems), is skipped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            if not os.path.isdir(path):
                raise
        finally:
            os.close(fd)


def is_secret(key: str, value) -> bool:
    """Whether a config entry must not reach a file or log: a non-empty value under a secret-like key
    (``*token``, ``*secret``, ``*password``, ``key``/``*_key``, any case) or a value holding an ``hf_`` token."""
    return bool(value) and bool(_SECRET_KEY_RE.search(str(key)) or _SECRET_VALUE_RE.search(str(value)))


def redact(config):
    """Copy of ``config`` (a dict, nested dicts and lists too) with every secret value (``is_secret``)
    replaced by "<redacted>"; None stays None."""
    if isinstance(config, dict):
        return {k: "<redacted>" if is_secret(k, v) and not isinstance(v, (dict, list)) else redact(v)
                for k, v in config.items()}
    if isinstance(config, list):
        return [redact(v) for v in config]
    return "<redacted>" if isinstance(config, str) and _SECRET_VALUE_RE.search(config) else config


def redact_overrides(overrides: list[str]) -> list[str]:
    """``--set key=value`` overrides with each secret value (``is_secret``'s rules) replaced by "<redacted>"."""
    split = [o.partition("=") for o in overrides]
    return [f"{k}=<redacted>" if is_secret(k.strip(), v) else k + eq + v for k, eq, v in split]


def latest_metrics(log_history: list[dict]) -> dict:
    """The latest value of every validation metric (bpb, eval loss, ChatCORE) in a Trainer log history.

    Returns:
        {"val_bpb": 1.23, "eval_loss": ..., "chatcore_metric/nanosft6": ..., "chatcore/ARC-Easy": ...,
        "step": <global step of the newest of them>} - empty when no evaluation ran yet.
    """
    out: dict = {}
    for entry in log_history:
        hit = {k: v for k, v in entry.items() if _METRIC_RE.match(k) and k != "loss"}
        if hit:
            out.update(hit)
            out["step"] = entry.get("step")
    return out


def chatcore_results(metrics: dict) -> dict[str, float]:
    """{task: accuracy} from record metrics (``chatcore/<task>`` or ``eval_chatcore/<task>``)."""
    out = {}
    for k, v in metrics.items():
        m = re.match(r"^(eval_)?chatcore/(.+)$", k)
        if m:
            out[m.group(2)] = v
    return out


def checkpoint_record(trainer, run_config: dict | None = None) -> dict:
    """The JSON record written into every checkpoint (``nanosft_state.json``).

    Args:
        trainer: a ``NanoSFTTrainer`` (reads ``state``, ``args`` and ``_tokens_seen``).
        run_config: the resolved YAML config dict; None falls back to ``trainer.args.to_dict()``
            (which transformers already masks for ``*_token`` keys).
    """
    state = trainer.state
    metrics = latest_metrics(state.log_history)
    tokens = getattr(trainer, "_tokens_seen", [0, 0])
    return {
        "stage": getattr(trainer, "stage", "sft"),  # "rl" for NanoRLTrainer (nanosft/training/rl_trainer.py)
        "source_checkpoint": getattr(trainer, "base_model_path", None),  # the model this run started from
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "tokens_seen": {"input": int(tokens[0]), "supervised": int(tokens[1])},
        "val_bpb": next((metrics[k] for k in ("val_bpb", "eval_val_bpb", "eval_bpb", "bpb") if k in metrics), None),
        "eval_loss": metrics.get("eval_loss"),
        "chatcore": {k: v for k, v in metrics.items() if "chatcore" in k},
        "metrics": metrics,
        "config": redact(run_config if run_config is not None else trainer.args.to_dict()),
        "versions": versions(),
    }


def versions() -> dict:
    """Versions of the libraries a run depends on."""
    return {"nanosft": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "accelerate": accelerate.__version__, "python": sys.version.split()[0]}


def write_training_config(folder: str, trainer) -> None:
    """Write ``<folder>/nanosft_config.json`` atomically: the optimizer used ("muon" | "adamw") and why, the LRs it
    used (``used_learning_rates``: nanochat's four group LRs, or one ``learning_rate`` for Hugging Face's one-LR
    AdamW; the others are null) and the base model; a run starting from ``folder`` inherits the group LRs and,
    under ``optimizer: auto``, the optimizer (``nanosft.schedule``)."""
    args = trainer.args
    write_json_atomic(os.path.join(folder, TRAINING_CONFIG_NAME), {
        "optimizer": args.optimizer, "optimizer_choice": getattr(trainer, "optimizer_choice", None),
        **dict.fromkeys((*LR_KEYS, "learning_rate")), **used_learning_rates(args),
        "base_model": getattr(trainer, "base_model_path", None)})


def read_json(path: str):
    """The JSON value in the file ``path``, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_record(folder: str) -> dict | None:
    """The record of a checkpoint folder, or None if it has none (e.g. written by a stock Trainer)."""
    return read_json(os.path.join(folder, RECORD_NAME))
