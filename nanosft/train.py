"""The SFT recipe: ``accelerate launch -m nanosft.train --config configs/tiny.yaml [--set key=value ...]``.

Read top to bottom: config -> early checks (launch, model path, output_dir) -> tokenizer -> data (load,
validate, render, pack) -> model -> trainer -> train -> save -> one summary line. Data come before the
model so that a missing file or a malformed row fails in seconds. User errors (nanosft/errors.py) print
one line ``error: ...`` and exit 2 before anything is written to ``output_dir``.
Outputs in ``output_dir``: ``checkpoint-<step>/`` folders (resumable), the final HF model (safetensors,
config, generation config with ``<|assistant_end|>`` as EOS, tokenizer with the chat template),
``run_config.json`` (resolved config, optimizer choice, versions), ``nanosft_config.json`` (optimizer, LRs, base
model; also in every checkpoint), ``data_stats.json`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from torch.utils.data import DataLoader
from transformers import set_seed

from .data.prepare import prepare_from_config
from .errors import ConfigError, run_cli
from .eval.callbacks import BitsPerByteCallback, ChatCoreCallback
from .eval.chatcore import split_metric_key
from .files import write_json_atomic
from .models.lora import adapter_optimizer, build_lora_config
from .models.pretrained import check_model_source, load_model, load_tokenizer
from .optim.schedule import choose_optimizer, inherit_batch_shape
from .report.report import write_report
from .training.checkpoint import (check_output_dir, latest_metrics, redact, redact_overrides, remove_checkpoints,
                                  resolve_resume, versions)
from .training.config import build_config, config_arg_parser, read_config_dict
from .training.hub import hide_token
from .training.trainer import NanoSFTTrainer

logger = logging.getLogger("nanosft.train")


def parse_args(argv=None):
    parser = config_arg_parser("python -m nanosft.train", __doc__.split("\n")[0],
                               "configs/tiny.yaml, configs/d12.yaml, ...")
    return parser.parse_args(argv)


def build_datasets(cfg, tokenizer):
    """Load, validate, render and pack the train (and eval) mixtures, once: through the data cache.

    The main process of each node prepares first (``main_process_first``): it finds the cache of this
    config's fingerprint or builds it (``nanosft.prepare``); the other ranks then memory-map it.

    Returns:
        ``(train_rows, eval_rows | None, stats)`` where stats maps dataset label -> supervision stats.
    """
    with cfg.main_process_first(desc="prepare the data"):
        train, evaluation = prepare_from_config(cfg, tokenizer)
    for src, s in train.stats.items():
        logger.info("%-32s %6d conv  mean %6.1f tok  max %5d  supervised %.1f%%", src, s["conversations"],
                    s["mean_len"], s["max_len"], 100 * s["supervised_ratio"])
    return train.rows, evaluation.rows if evaluation is not None else None, train.stats


def attach_eval_callbacks(trainer, cfg, tokenizer, eval_rows) -> None:
    """ChatCORE every ``chatcore_every`` steps; validation bits per byte at the eval cadence (``eval_steps``)."""
    if cfg.chatcore_every and cfg.chatcore_every > 0:
        ChatCoreCallback(tokenizer, tasks=cfg.chatcore_tasks, every=cfg.chatcore_every,
                         max_categorical=cfg.chatcore_max_categorical, max_generative=cfg.chatcore_max_generative,
                         max_new_tokens=cfg.chatcore_max_new_tokens, data_dir=cfg.data_dir,
                         allow_weak_sandbox=cfg.allow_weak_sandbox).attach(trainer)
    if eval_rows is not None and cfg.eval_strategy == "steps" and cfg.eval_steps:
        def batches():
            return DataLoader(eval_rows, batch_size=cfg.per_device_eval_batch_size, collate_fn=trainer.data_collator)

        BitsPerByteCallback(batches, every=int(cfg.eval_steps)).attach(trainer)


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


def summary_line(trainer, cfg) -> str:
    """The run's last line: final training loss, ChatCORE if it ran, and where the model and report are."""
    history = trainer.state.log_history
    loss = next((e["loss"] for e in reversed(history) if "loss" in e), None)
    chatcore = {k: v for k, v in latest_metrics(history).items()
                if (split_metric_key(k) or ("",))[0] == "chatcore_metric"}
    parts = [f"final loss {loss:.4f}" if loss is not None else "no loss logged"]
    for key, value in chatcore.items():  # e.g. chatcore_metric/nanosft6: the task set is part of the name
        parts.append(f"ChatCORE ({split_metric_key(key)[1] or 'all tasks'}) {value:.4f}")
    parts += [f"model {cfg.output_dir}", f"report {os.path.join(cfg.output_dir, 'report.md')}"]
    return f"done at step {trainer.state.global_step}: " + ", ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)

    raw = read_config_dict(args.config, args.overrides)  # validates before anything heavy
    raw, inherited = inherit_batch_shape(raw)  # T and batch sizes of a nanochat base, unless the config sets them
    cfg = build_config(cpu_launch_fix(dict(raw)), args.config)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if cfg.process_index == 0 else logging.WARNING)
    for line in inherited:
        logger.info(line)
    overwritten = early_checks(cfg)
    hide_token(cfg)  # before the Trainer pickles or uses the args: the token lives in HF_TOKEN only

    choice = choose_optimizer(cfg)  # optimizer: auto -> muon | adamw, from how the base was pretrained
    if cfg.process_index == 0:
        print(choice, flush=True)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg)
    train_rows, eval_rows, stats = build_datasets(cfg, tokenizer)
    model = load_model(cfg, tokenizer)
    logger.info("model: %s, %.1fM parameters", type(model).__name__, model.num_parameters() / 1e6)

    peft_config = None
    if cfg.peft:  # LoRA (nanosft/models/lora.py): new token rows trainable; adapters train with AdamW
        peft_config = build_lora_config(cfg.peft, model, getattr(model, "nanosft_new_token_ids", None))
        cfg.optimizer = adapter_optimizer(cfg.optimizer)
    trainer = NanoSFTTrainer(model=model, args=cfg, train_dataset=train_rows, eval_dataset=eval_rows,
                             processing_class=tokenizer, peft_config=peft_config,
                             base_model_path=cfg.model_name_or_path, optimizer_choice=choice)
    attach_eval_callbacks(trainer, cfg, tokenizer, eval_rows)

    raw = redact(raw)  # no hub_token in run_config.json or checkpoint records
    trainer.run_config = raw  # recorded in every checkpoint's nanosft_state.json
    if trainer.is_world_process_zero():
        remove_checkpoints(cfg.output_dir, overwritten)  # overwrite_output_dir: the earlier run's checkpoints
        os.makedirs(cfg.output_dir, exist_ok=True)
        write_json_atomic(os.path.join(cfg.output_dir, "run_config.json"),
                          {"config_file": args.config, "config": raw, "overrides": redact_overrides(args.overrides),
                           "optimizer_choice": choice, "training_args": cfg.to_dict(), "versions": versions()})
        write_json_atomic(os.path.join(cfg.output_dir, "data_stats.json"), stats)
    train_and_save(trainer, cfg, tokenizer, "chat")
    if trainer.is_world_process_zero():
        print(summary_line(trainer, cfg), flush=True)
    return 0


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


if __name__ == "__main__":
    sys.exit(run_cli(main))
