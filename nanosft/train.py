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

from torch.utils.data import DataLoader
from transformers import set_seed

from .data.prepare import prepare_from_config
from .errors import run_cli
from .eval.callbacks import BitsPerByteCallback, ChatCoreCallback
from .eval.chatcore import split_metric_key
from .files import write_json_atomic
from .models.lora import adapter_optimizer, build_lora_config
from .models.pretrained import load_model, load_tokenizer
from .optim.schedule import choose_optimizer, inherit_batch_shape
from .recipe import cpu_launch_fix, early_checks, train_and_save
from .training.checkpoint import latest_metrics, redact, redact_overrides, remove_checkpoints, versions
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
