"""The model card of a nanosft checkpoint, and keeping the Hub token out of every file.

Design. Pushing is the Trainer's own Hub integration (``push_to_hub: true``, ``hub_model_id``,
``hub_strategy``): ``Trainer.init_hf_repo`` creates the repo, ``_push_from_checkpoint`` uploads every
checkpoint and ``push_to_hub`` the final model, all through ``huggingface_hub.HfApi.upload_folder``.
nanosft only replaces the card (TRL's ``create_model_card`` knows nothing of the recipe): ``README.md``
in ``output_dir`` and in each checkpoint states the base model, the data mixture, the recipe (optimizer,
LRs, schedule, batch), the ChatCORE table and validation bpb, and how to load and chat.

The token: a ``hub_token`` given in the config would be pickled into every ``training_args.bin``
(``torch.save(self.args)``) and copied into the run records. ``hide_token`` moves it to the
``HF_TOKEN`` environment variable of this process before the Trainer is built - ``huggingface_hub``
reads it from there for every call - and clears it from the arguments; records redact secrets
(``nanosft.training.checkpoint.is_secret``). Trade-off: child processes of the run inherit ``HF_TOKEN``.
"""

from __future__ import annotations

import logging
import os

from ..eval.chatcore import chatcore_table
from ..files import write_text_atomic
from ..optim.schedule import used_learning_rates
from .checkpoint import chatcore_results, latest_metrics, versions

logger = logging.getLogger(__name__)

def hide_token(args) -> None:
    """Move ``args.hub_token`` into ``os.environ["HF_TOKEN"]`` and set it to None (in place).

    Afterwards no file the Trainer writes (``training_args.bin``, ``run_config.json``, checkpoint
    records) can hold the token, and nothing logs it; uploads still authenticate with it.
    """
    token = getattr(args, "hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = token
        args.hub_token = None


def _base_model(trainer) -> str | None:
    args = trainer.args
    return getattr(args, "model_name_or_path", None) or getattr(trainer, "base_model_path", None)


def _mixture_rows(datasets: list | None) -> list[str]:
    rows = []
    for d in datasets or []:
        d = d if isinstance(d, dict) else {"name": str(d)}
        extra = ", ".join(f"{k}={d[k]}" for k in ("subset", "max_rows", "size", "hub_id", "path", "format") if d.get(k) is not None)
        rows.append(f"| {d.get('name')} | {d.get('split', 'train')} | {d.get('epochs', 1)} | {extra or '-'} |")
    return rows


def build_model_card(trainer, model_name: str | None = None, tags: list | None = None) -> str:
    """The README.md of a nanosft checkpoint (YAML metadata header + markdown).

    Args:
        trainer: a ``NanoSFTTrainer`` (reads ``args``, ``state.log_history``, ``_tokens_seen``).
        model_name: title; default the ``hub_model_id`` or the output folder's name.
        tags: extra Hub tags.

    Returns:
        The card text. It never contains the Hub token (the config is not dumped, only named keys).
    """
    args = trainer.args
    state = trainer.state
    base = _base_model(trainer)
    repo = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    name = model_name or (repo.split("/")[-1] if repo else os.path.basename(os.path.abspath(args.output_dir)))
    metrics = latest_metrics(state.log_history)
    tokens = getattr(trainer, "_tokens_seen", [0, 0])
    world = getattr(args, "world_size", 1)
    rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    rl = getattr(trainer, "stage", "sft") == "rl"  # NanoRLTrainer (nanosft/training/rl_trainer.py)
    all_tags = ["nanosft", "nanochat", "rl" if rl else "sft", "trl", "chat"] + [t for t in (tags or []) if t]
    is_hub_id = bool(base) and not os.path.isdir(str(base))
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if is_hub_id:
        header.append(f"base_model: {base}")
    header += ["tags:"] + [f"- {t}" for t in dict.fromkeys(all_tags)] + ["---", ""]

    lrs = used_learning_rates(args)
    lr_text = ", ".join(f"{k} {v}" if v is not None else f"{k} inherited" for k, v in lrs.items())
    if "learning_rate" in lrs:
        lr_text += " for every parameter group"
    body = [f"# {name}", ""]
    if rl:
        body += [
            "A chat model refined with nanosft's reinforcement stage: "
            "[nanochat](https://github.com/karpathy/nanochat)'s `chat_rl` (on-policy REINFORCE with per-problem "
            "mean-reward baselines, calculator tool during sampling) after supervised fine-tuning.",
            "",
            "## Started from (SFT checkpoint)",
            "",
            f"`{base}`" if base else "A freshly initialised NanoChat model (`model_config`).",
            "",
            "## RL problems",
            "",
            f"task {args.task} ({args.train_split}), reward `{args.reward or args.task}`, {args.num_samples} samples "
            f"per problem (temperature {args.temperature}, top-k {args.top_k}, up to {args.max_new_tokens} new "
            f"tokens), {args.examples_per_step} problems per step.",
            "",
        ]
    else:
        body += [
            "A chat model fine-tuned with nanosft: the supervised fine-tuning recipe of "
            "[nanochat](https://github.com/karpathy/nanochat)'s `chat_sft` stage on Hugging Face TRL.",
            "",
            "## Base model",
            "",
            f"`{base}`" if base else "A freshly initialised NanoChat model (`model_config`), no pretrained base.",
            "",
            "## Data mixture",
            "",
            "| dataset | split | epochs | options |",
            "|---|---|---|---|",
            *(_mixture_rows(getattr(args, "datasets", None)) or ["| - | - | - | - |"]),
            "",
            f"Conversations rendered in the nanochat chat format (loss on assistant tokens, python tool calls and "
            f"`<|assistant_end|>`), BOS-aligned best-fit packing into rows of {args.max_length} tokens, "
            f"attention: {getattr(args, 'attention', 'document')}.",
            "",
        ]
    body += [
        "## Recipe",
        "",
        f"- optimizer: {getattr(args, 'optimizer', 'muon')} ({lr_text}; init_lr_frac "
        f"{getattr(args, 'init_lr_frac', None)}), weight decay {args.weight_decay}",
        *([f"- {trainer.optimizer_choice}"] if getattr(trainer, "optimizer_choice", None) else []),
        f"- schedule: warmup_ratio {getattr(args, 'warmup_ratio', 0)}, warmdown_ratio "
        f"{getattr(args, 'warmdown_ratio', None)}, final_lr_frac {getattr(args, 'final_lr_frac', None)}",
        f"- batch: {args.per_device_train_batch_size} rows x {args.gradient_accumulation_steps} accumulation x "
        f"{world} processes = {rows_per_step} rows ({rows_per_step * args.max_length:,} token slots) per step",
        f"- steps: {state.global_step} of {state.max_steps}; tokens seen: {int(tokens[0]):,} "
        f"({int(tokens[1]):,} supervised); precision: {'bf16' if args.bf16 else 'fp32'}; seed {args.seed}",
        "",
        "## Evaluation",
        "",
    ]
    tasks = {name: (acc, None) for name, acc in sorted(chatcore_results(metrics).items())}
    table = chatcore_table({}, {**metrics, "tasks": tasks}, layout="card")  # accuracy and centered score
    body += table or ["ChatCORE has not been run for this checkpoint (`chatcore_every`)."]
    body.append("")
    for key in ("val_bpb", "eval_val_bpb", "eval_bpb", "eval_loss"):
        if metrics.get(key) is not None:
            body.append(f"- {key}: {metrics[key]:.4f} (step {metrics.get('step')})")
    where = repo or "path/to/this/folder"
    # the current nanochat GPT ships its modeling code with the weights (nanosft/models/nanochat_gpt)
    config = getattr(getattr(trainer, "model", None), "config", None)
    remote = ", trust_remote_code=True" if getattr(config, "model_type", None) == "nanochat_gpt" else ""
    body += [
        "",
        "## How to load and chat",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}"{remote})',
        'messages = [{"role": "user", "content": "How many r are in strawberry?"}]',
        "inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "out = model.generate(**inputs, max_new_tokens=256, do_sample=False)  # stops at <|assistant_end|>",
        "print(tok.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        f"Or interactively: `python -m nanosft.chat --model {where}`.",
        "",
        "## Framework versions",
        "",
        *[f"- {k}: {v}" for k, v in versions().items()],
        "",
    ]
    return "\n".join(header + body)


def write_model_card(folder: str, trainer, model_name: str | None = None, tags: list | None = None) -> str:
    """Write ``build_model_card`` to ``<folder>/README.md`` (``write_text_atomic``); returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "README.md")
    write_text_atomic(path, build_model_card(trainer, model_name=model_name, tags=tags))
    return path
