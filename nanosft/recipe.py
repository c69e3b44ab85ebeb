"""Steps the SFT and RL recipes share (``nanosft.train``, ``nanosft.rl``): launch fixes and checks that need no
data or model, and the train-then-save tail. One home, so that neither command-line module imports the other.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from .errors import ConfigError
from .files import write_json_atomic
from .models.pretrained import check_model_source
from .report.report import write_report
from .training.checkpoint import check_output_dir, resolve_resume

logger = logging.getLogger("nanosft.recipe")


def cpu_launch_fix(raw: dict) -> dict:
    """``raw`` with ``use_cpu: true`` when several processes were launched on a machine with no accelerator.

    ``accelerate launch --multi_gpu --num_processes 2`` without ``--cpu`` on a CPU-only machine starts two
    processes whose Trainer is not distributed (transformers only builds a CPU process group with
    ``use_cpu``): each rank would train alone on its own batches. With no accelerator there is nothing
    else to run on, so the fix is safe and made here (with a warning). Not under DeepSpeed or FSDP:
    ``use_cpu`` would turn them off (DeepSpeed on CPU needs ``ddp_backend: gloo`` instead).
    """
    def env_true(name):
        return os.environ.get(name, "").lower() in ("1", "true", "yes")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    sharded = raw.get("deepspeed") or raw.get("fsdp") or env_true("ACCELERATE_USE_DEEPSPEED") or \
        env_true("ACCELERATE_USE_FSDP")
    use_cpu = raw.get("use_cpu") or env_true("ACCELERATE_USE_CPU")
    if world > 1 and not use_cpu and not sharded and not torch.accelerator.is_available():
        if os.environ.get("RANK", "0") == "0":
            print(f"warning: {world} processes launched without --cpu on a machine with no accelerator; "
                  "training on CPU with a gloo process group (use_cpu: true)", file=sys.stderr, flush=True)
        return {**raw, "use_cpu": True}
    return raw


def check_distributed(cfg) -> None:
    """Refuse a multi-process launch whose Trainer is not distributed (each rank would train alone).

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but the Trainer's ``world_size`` differs; names the fixing flags.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and cfg.world_size != world:
        raise ConfigError(f"{world} processes were launched but the Trainer runs {cfg.world_size} (not distributed, "
                          f"device {cfg.device}); on CPU add `--cpu` to `accelerate launch` (or `--set use_cpu=true`), "
                          "on GPUs check the accelerate config's distributed_type and num_processes")


def early_checks(cfg) -> list[str]:
    """Checks that need no data or model, so that a typo fails in seconds (nothing is written yet).

    Returns:
        Checkpoint folders of ``output_dir`` to delete before training (``overwrite_output_dir``).

    Raises:
        ConfigError, MissingPathError: a non-distributed multi-process launch; a model or tokenizer that is
            neither a local path nor a Hub model; checkpoints in ``output_dir`` with neither
            ``resume_from_checkpoint`` nor ``overwrite_output_dir``; a missing resume checkpoint.
    """
    check_distributed(cfg)
    if cfg.model_config is None:
        check_model_source(cfg.model_name_or_path, "model_name_or_path")
    check_model_source(cfg.tokenizer_name_or_path, "tokenizer_name_or_path")
    resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)  # raises for a missing checkpoint folder
    return check_output_dir(cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)


def train_and_save(trainer, cfg, tokenizer, what: str) -> None:
    """Train (``resume_from_checkpoint: auto``: the latest complete checkpoint-<step>, or a fresh start), then
    write into ``output_dir``: ``metrics.json``, the final model and tokenizer (and, with ``push_to_hub``, upload
    them: ``Trainer.push_to_hub``), nanosft's model card and ``report.md`` with its plots. SFT and RL recipes."""
    result = trainer.train(resume_from_checkpoint=resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir))
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(cfg.output_dir, "metrics.json"),
                          {"train": result.metrics, "log_history": trainer.state.log_history})
    trainer.save_model(cfg.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(cfg.output_dir)
        trainer.create_model_card()  # README.md: nanosft's card with the final metrics
        logger.info("saved the %s model to %s", what, cfg.output_dir)
        write_report(cfg.output_dir)  # report.md + PNG plots (nanosft/report/report.py)
