"""``NanoSFTConfig``: one YAML file is one reproducible run.

``NanoSFTConfig`` extends ``trl.SFTConfig`` (itself ``transformers.TrainingArguments``), so every TRL and
Trainer option is a YAML key, plus the nanosft recipe keys below. ``load_config`` checks every key and
type *before* anything heavy loads: an unknown key or a wrong type raises ``ConfigError`` naming the key
(and the file). ``--set key=value`` overrides single keys on the command line (values parsed as YAML).

Defaults that differ from TRL's, and why:
- ``bf16``: auto (on only where CUDA supports it); TRL defaults it on, even on CPU.
- ``gradient_checkpointing``: off (nanochat does not use it; TRL defaults it on).
- ``remove_unused_columns``: off (packed rows carry ``seq_lengths``, which the collator needs).
- ``dataset_kwargs``: ``skip_prepare_dataset`` (data arrive rendered and packed; TRL would re-truncate).
- ``packing_strategy``: "nanochat" (buffered best-fit, nanochat's rows) or "bfd" (nanosft's whole-dataset
  best-fit decreasing, nothing cropped), never TRL's own packing (TRL's "bfd" crops long conversations).
- ``logging_steps``: 1; ``report_to``: none (offline-safe; set tensorboard/trackio/wandb).
- ``max_length``: T, the tokens of one packed row (TRL: the length a sample is truncated to).
- ``restore_callback_states_from_checkpoint``: on (the token counters are a stateful callback).
- TRL options whose work nanosft replaces (``REPLACED_TRL_OPTIONS``): refused unless left at TRL's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from trl import SFTConfig

from ..data.mixture import DatasetSpec
from ..errors import ConfigError, MissingPathError
from ..eval.chatcore import resolve_tasks
from ..models.pretrained import resolve_local_path


__all__ = ["ConfigError", "NanoSFTConfig", "build_config", "load_config", "parse_overrides", "read_config_dict",
           "validate_dict"]


# Options nanosft's renderer, packer, collator and loss replace (trl 1.16): refused unless at TRL's default.
REPLACED_TRL_OPTIONS = {
    "packing": "nanosft always packs (packing_strategy: nanochat|bfd)",
    "eval_packing": "nanosft packs eval_datasets like the training data",
    "padding_free": "nanosft's collator packs rows with per-conversation position ids (attention: document|causal)",
    "pad_to_multiple_of": "nanosft's rows are always max_length tokens",
    "assistant_only_loss": "nanosft always trains on assistant tokens only (the nanochat chat format)",
    "completion_only_loss": "nanosft always trains on assistant tokens only (the nanochat chat format)",
    "loss_type": "nanosft's loss is the token cross-entropy on supervised tokens (NanoSFTTrainer.compute_loss)",
    "label_smoothing_factor": "nanosft's loss is the token cross-entropy on supervised tokens, unsmoothed",
    "use_liger_kernel": "nanosft computes logits only at supervised positions (NanoSFTTrainer.compute_loss)",
    "dataset_text_field": "name the conversation column with datasets: [{messages_field: ...}]",
    "truncation_mode": "overlong: truncate|split",
    "shuffle_dataset": "the mixture is shuffled with mixture_seed",
    "chat_template_path": "nanosft renders the nanochat chat format and saves its template",
    "eos_token": "nanosft's EOS is <|assistant_end|>",
    "pad_token": "packed rows are padded with <|bos|>",
}


@dataclass
class NanoSFTConfig(SFTConfig):
    """Configuration of a nanosft run: TRL's ``SFTConfig`` plus the nanochat SFT recipe."""

    # --- model and tokenizer ---
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model: a Hub id, a local HF folder, or a nanochat checkpoint folder."}
    )
    model_config: dict | None = field(
        default=None,
        metadata={"help": "Build a fresh NanoChatForCausalLM from these NanoChatConfig kwargs (tests, smoke runs)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer: a nanochat tokenizer folder (tokenizer.tiktoken), a Hub id or HF folder. "
                  "Default: the model's."},
    )
    add_special_tokens: bool = field(
        default=True, metadata={"help": "Add the 9 nanochat special tokens (and resize the model) where missing."}
    )
    # --- data ---
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Local data folder (nanosft/resources/data/README.md layout), or pkg://nanosft/resources/data "
                  "for the small embedded copy. None: load datasets from the Hugging Face Hub."},
    )
    datasets: list = field(
        default_factory=lambda: [{"name": "gsm8k"}],
        metadata={"help": "Training mixture: list of {name, split, epochs, max_rows, size, subset, path, hub_id, "
                          "format, messages_field, role_field, content_field, role_map, system_prompt}."},
    )
    eval_datasets: list | None = field(
        default=None, metadata={"help": "Validation mixture (same format); used for eval loss and bits per byte."}
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "Skip invalid conversations (counted and logged) instead of failing."}
    )
    mixture_seed: int = field(default=42, metadata={"help": "Seed of the mixture shuffle (nanochat: 42)."})
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the rendered and packed data cache (nanosft/data/prepare.py). "
                  "None: <output_dir>/_data_cache."},
    )
    # --- packing ---
    packing_strategy: str = field(
        default="nanochat",
        metadata={"help": "'nanochat': buffered best-fit in stream order (nanochat's SFT loader); 'bfd': best-fit "
                  "decreasing over the whole dataset (tighter, nothing cropped)."},
    )
    pack_buffer_size: int = field(default=100, metadata={"help": "Conversations held for best-fit packing."})
    overlong: str = field(
        default="truncate",
        metadata={"help": "Conversations longer than max_length + 1 tokens: 'truncate' (nanochat) or 'split' into "
                  "continuation rows (no supervised token lost)."},
    )
    attention: str = field(
        default="document",
        metadata={"help": "'document': no attention across packed conversations; 'causal': nanochat's behaviour."},
    )
    total_batch_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per optimizer step; sets gradient_accumulation_steps = total / (B * T * world)."},
    )
    # --- optimizer and schedule (nanochat/scripts/chat_sft.py) ---
    optimizer: str = field(
        default="auto",
        metadata={"help": "'muon' (Muon + AdamW), 'adamw', or 'auto': Muon, with the reason printed: the base's "
                  "pretraining optimizer, or the SmolLM2 A/B (nanosft.optim.schedule.choose_optimizer)."},
    )
    embedding_lr: float | None = field(default=None, metadata={"help": "AdamW LR of embed_tokens (None: inherit)."})
    unembedding_lr: float | None = field(default=None, metadata={"help": "AdamW LR of lm_head (None: inherit)."})
    matrix_lr: float | None = field(default=None, metadata={"help": "Muon LR of block matrices (None: inherit)."})
    scalar_lr: float | None = field(default=None, metadata={"help": "AdamW LR of 1-D params (None: inherit)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of the run with linear LR warmup (nanochat: 0)."})
    init_lr_frac: float = field(default=0.8, metadata={"help": "All LRs times this at the start of SFT."})
    warmdown_ratio: float = field(default=0.5, metadata={"help": "Fraction of the run over which LR decays linearly."})
    final_lr_frac: float = field(default=0.0, metadata={"help": "LR at the end, as a fraction of the initial LR."})
    optimizer_kwargs: dict | None = field(
        default=None, metadata={"help": "Extra kwargs for nanosft.optim.muon.build_optimizer (momentum, adam_eps, lr, ...)."}
    )
    load_optimizer: bool = field(
        default=True, metadata={"help": "Warm-start optimizer state (momentum) from the base checkpoint if present."}
    )
    # --- outputs ---
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start fresh in an output_dir that holds checkpoints (they are deleted). Without it, "
                  "such a folder is refused unless resume_from_checkpoint is set."},
    )
    # --- evaluation ---
    chatcore_every: int = field(default=-1, metadata={"help": "Run ChatCORE every N steps (-1: off)."})
    chatcore_tasks: list | str | None = field(
        default=None,
        metadata={"help": "ChatCORE task set ('nanosft6': six tasks, the default; 'nanochat': nanochat's five, "
                  "comparable with its numbers) or a list of tasks (fewer than a set: partial, no ChatCORE)."},
    )
    chatcore_max_categorical: int | None = field(default=None, metadata={"help": "Cap on categorical problems."})
    chatcore_max_generative: int | None = field(default=24, metadata={"help": "Cap on generative problems."})
    chatcore_max_new_tokens: int = field(default=512, metadata={"help": "Generation budget per answer (nanochat: 512)."})
    allow_weak_sandbox: bool = field(
        default=False,
        metadata={"help": "Run HumanEval code even where the sandbox gets neither namespaces nor Landlock "
                  "(then only seccomp, rlimits and Python guards hold); off: such runs are refused."},
    )
    # --- adapters ---
    peft: dict | None = field(default=None, metadata={"help": "LoRA: {r, lora_alpha, target_modules, lora_dropout}."})

    # --- TRL / Trainer defaults changed for this recipe ---
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Packed rows need their extra columns."})
    dataset_kwargs: dict | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "TRL dataset preparation is skipped: nanosft renders and packs."},
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    max_length: int | None = field(default=2048, metadata={"help": "T: tokens per packed row (nanochat: 2048)."})
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "Resume restores stateful callbacks (nanosft's token counters)."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        for key, allowed in (("attention", ("document", "causal")), ("packing_strategy", ("nanochat", "bfd")),
                             ("overlong", ("truncate", "split")), ("optimizer", ("auto", "muon", "adamw"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {getattr(self, key)!r}")
        trl_defaults = _fields(SFTConfig)
        for key, instead in REPLACED_TRL_OPTIONS.items():
            if getattr(self, key) != trl_defaults[key].default:
                raise ConfigError(f"{key}: {instead}")
        if self.model_name_or_path is None and self.model_config is None:
            raise ConfigError("model_name_or_path: set it (Hub id or folder), or give model_config for a fresh model")
        if self.max_length is None or self.max_length < 8:
            raise ConfigError(f"max_length: must be an integer >= 8, got {self.max_length!r}")
        self.data_dir = resolve_local_path("data_dir", self.data_dir, folder_only=True)
        self.tokenizer_name_or_path = resolve_local_path("tokenizer_name_or_path", self.tokenizer_name_or_path)
        super().__post_init__()
        if self.total_batch_size:
            per_step = self.per_device_train_batch_size * self.max_length * self.world_size
            if self.total_batch_size % per_step:
                raise ConfigError(f"total_batch_size: {self.total_batch_size} tokens is not a multiple of "
                                  f"per_device_train_batch_size * max_length * world_size = {per_step}")
            self.gradient_accumulation_steps = self.total_batch_size // per_step


def config_arg_parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    """The command line shared by nanosft's config-driven CLIs (train, rl, prepare): ``--config`` (a YAML
    file, ``examples`` named in its help) and repeatable ``--set key=value`` overrides (``parse_overrides``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help=f"YAML config ({examples})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set max_steps=3")
    return p


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false, so ``eval_strategy: no`` stays "no"."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml_load(text):
    return yaml.load(text, Loader=_Yaml12Loader)


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing used by the configs)."""
    if tp is Any or tp is typing.Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is list:
        return isinstance(value, list)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation the configs never use: let the dataclass decide


@functools.cache
def _type_hints(cls=NanoSFTConfig) -> dict:
    """``typing.get_type_hints`` of the whole TrainingArguments/SFTConfig chain, evaluated once per class."""
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls=NanoSFTConfig) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def validate_dict(d: dict, source: str = "config", cls=NanoSFTConfig) -> None:
    """Reject unknown keys and wrong types, naming the key and ``source``.

    ``cls`` is the config dataclass whose fields are the known keys (``NanoSFTConfig``, or a subclass
    such as ``nanosft.training.rl_trainer.NanoRLConfig``).

    Raises:
        ConfigError: e.g. ``"configs/x.yaml: unknown key 'learning_rte' (did you mean 'learning_rate'?)"``.
    """
    fields = _fields(cls)
    for key, value in d.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        tp = _type_hints(cls).get(key, fields[key].type)
        if not _type_ok(value, tp):
            raise ConfigError(
                f"{source}: key {key!r} expects {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}"
            )
    for key in ("datasets", "eval_datasets"):
        for i, spec in enumerate(d.get(key) or []):
            DatasetSpec.from_dict(spec, where=f"{source}: {key}[{i}]")
    if d.get("chatcore_tasks") is not None:
        try:
            resolve_tasks(d["chatcore_tasks"])
        except ValueError as e:
            raise ConfigError(f"{source}: chatcore_tasks: {e}") from None


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["max_steps=3", "data_dir=/data/sft"]`` -> ``{"max_steps": 3, "data_dir": "/data/sft"}``."""
    out = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = _yaml_load(raw) if raw != "" else None
    return out


def read_config_dict(path: str, overrides: list[str] | None = None, cls=NanoSFTConfig) -> dict:
    """Read a YAML config, apply ``--set`` overrides and validate, without building anything.

    Raises:
        MissingPathError: the config file does not exist (a ``FileNotFoundError``).
        ConfigError: malformed YAML, unknown key or wrong type.
    """
    if not os.path.isfile(path):
        raise MissingPathError(f"config file not found: {path}; check the --config path")
    with open(path, encoding="utf-8") as f:
        try:
            d = _yaml_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    validate_dict(d, path, cls)
    extra = parse_overrides(overrides)
    validate_dict(extra, "--set", cls)
    d.update(extra)
    return d


def build_config(d: dict, source: str = "config", cls=NanoSFTConfig) -> NanoSFTConfig:
    """A ``NanoSFTConfig`` from an already validated dict (``read_config_dict``).

    Raises:
        ConfigError: the dataclass or TrainingArguments refuses a value (the message names ``source``).
    """
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from (None if isinstance(e, ConfigError) else e)


def load_config(path: str, overrides: list[str] | None = None) -> NanoSFTConfig:
    """Read, validate and build a ``NanoSFTConfig`` (see ``read_config_dict``)."""
    return build_config(read_config_dict(path, overrides), path)
