"""The RL recipe: ``accelerate launch -m nanosft.rl --config configs/rl-d20.yaml [--set key=value ...]``.

nanochat's GSM8K reinforcement stage (scripts/chat_rl.py) after SFT, on ``NanoRLTrainer``
(nanosft/training/rl_trainer.py, which says why it is not TRL's GRPOTrainer). Read top to bottom, as
``nanosft.train``: config -> tokenizer -> problems (train shuffled with ``mixture_seed``, held-out for
pass@k) -> reward -> model (the SFT checkpoint) -> trainer -> train -> save. Outputs in ``output_dir``
as in SFT: resumable ``checkpoint-<step>/`` folders whose ``nanosft_state.json`` says ``"stage": "rl"``
and names the SFT checkpoint (``source_checkpoint``), the final HF model, ``run_config.json``,
``metrics.json`` and ``report.md`` with reward and pass@k plots. Logged per step: ``reward``,
``reward_std``, ``completion_length``, ``tool_use_fraction``, ``learning_rate``; every ``eval_every``
steps: ``pass@k`` and ``pass@k_unbiased`` for k = 1..``eval_num_samples``.
"""

from __future__ import annotations

import logging
import os
import random
import sys

from transformers import set_seed

from .errors import run_cli
from .eval.rewards import load_rl_problems, resolve_reward
from .files import write_json_atomic
from .models.pretrained import load_model, load_tokenizer
from .recipe import cpu_launch_fix, early_checks, train_and_save
from .training.checkpoint import redact, redact_overrides, remove_checkpoints, versions
from .training.config import ConfigError, build_config, config_arg_parser, read_config_dict
from .training.hub import hide_token
from .training.rl_trainer import NanoRLConfig, NanoRLTrainer, PassAtKCallback

logger = logging.getLogger("nanosft.rl")


def parse_args(argv=None):
    parser = config_arg_parser("python -m nanosft.rl", __doc__.split("\n")[0],
                               "configs/rl-tiny.yaml, configs/rl-d20.yaml")
    return parser.parse_args(argv)


def load_problems(cfg):
    """``(train problems in training order, held-out problems, reward function)`` for the config.

    Raises:
        ValueError: an unknown reward name or an unimportable reward function.
    """
    reward_fn = resolve_reward(cfg.reward or cfg.task)
    train = load_rl_problems(cfg.task, cfg.train_split, cfg.data_dir,
                             cfg.max_problems if cfg.task == "spellingbee" else None)
    random.Random(cfg.mixture_seed).shuffle(train)  # nanochat's tasks shuffle with seed 42
    if cfg.max_problems and cfg.task != "spellingbee":
        train = train[: cfg.max_problems]
    held_out = []
    if cfg.eval_every and cfg.eval_every > 0:
        task = cfg.eval_task or cfg.task
        held_out = load_rl_problems(task, cfg.eval_split, cfg.data_dir,
                                    cfg.eval_examples if task == "spellingbee" else None)[: cfg.eval_examples]
    return train, held_out, reward_fn


def main(argv=None) -> int:
    args = parse_args(argv)

    raw = read_config_dict(args.config, args.overrides, NanoRLConfig)  # validates before anything heavy
    cfg = build_config(cpu_launch_fix(dict(raw)), args.config, NanoRLConfig)
    try:
        resolve_reward(cfg.reward or cfg.task)  # a typo in `reward:` fails before the model loads
    except ValueError as e:
        raise ConfigError(f"{args.config}: reward: {e}") from None
    overwritten = early_checks(cfg)  # model path, output_dir checkpoints, distributed launch
    hide_token(cfg)  # before the Trainer pickles or uses the args: the token lives in HF_TOKEN only
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if cfg.process_index == 0 else logging.WARNING)

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg)
    train, held_out, reward_fn = load_problems(cfg)
    logger.info("RL on %d %s problems (%d per step, %d samples each); pass@k on %d held-out problems",
                len(train), cfg.task, cfg.examples_per_step, cfg.num_samples, len(held_out))
    model = load_model(cfg, tokenizer)
    logger.info("model: %s, %.1fM parameters", type(model).__name__, model.num_parameters() / 1e6)

    trainer = NanoRLTrainer(model=model, args=cfg, problems=train, reward_fn=reward_fn, processing_class=tokenizer,
                            base_model_path=cfg.model_name_or_path)
    if held_out:
        PassAtKCallback(held_out, reward_fn, num_samples=cfg.eval_num_samples, every=cfg.eval_every, seed=cfg.seed,
                        batch_size=cfg.device_batch_size, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, top_k=cfg.top_k, use_tool=cfg.use_tool).attach(trainer)
    raw = redact(raw)
    trainer.run_config = raw
    if trainer.is_world_process_zero():
        os.makedirs(cfg.output_dir, exist_ok=True)
        write_json_atomic(os.path.join(cfg.output_dir, "run_config.json"),
                          {"config_file": args.config, "config": raw, "overrides": redact_overrides(args.overrides),
                           "training_args": cfg.to_dict(), "versions": versions(), "stage": "rl",
                           "optimizer_choice": trainer.optimizer_choice,
                           "source_checkpoint": cfg.model_name_or_path})
    if trainer.is_world_process_zero():
        remove_checkpoints(cfg.output_dir, overwritten)  # overwrite_output_dir: the earlier run's checkpoints
    train_and_save(trainer, cfg, tokenizer, "RL")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
