"""ChatCORE from the command line (nanochat/scripts/chat_eval.py, for any HF checkpoint).

    python -m nanosft.eval --model out/checkpoint-500 --tasks ARC-Easy,GSM8K --max-problems 100 \\
        --data-dir pkg://nanosft/resources/data

Loads the checkpoint with ``AutoModelForCausalLM``/``AutoTokenizer`` (the tokenizer must hold the
nanochat special tokens: nanosft checkpoints do), evaluates each task with a progress bar, prints a
table and writes ``chatcore.json`` into the checkpoint folder (temp file + ``os.replace``, so a
reader never sees half a file). Runs under ``accelerate launch`` too: problems are split among the
processes and only the main one prints and writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ConfigError, run_cli, use_cli_options
from ..files import write_json_atomic
from ..models.pretrained import check_model_source, resolve_local_path
from .chatcore import DEFAULT_TASK_SET, TASKS, TASK_SETS, format_table, require_sandbox, run_chatcore
from .sandbox import WeakSandboxError

# How this CLI's messages name the settings (nanosft/errors.py ``option``): its flags, not config keys.
CLI_OPTIONS = {"data_dir": "--data-dir"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanosft.eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder (AutoModelForCausalLM + AutoTokenizer)")
    p.add_argument("--tasks", default=DEFAULT_TASK_SET,
                   help=f"a task set ({', '.join(TASK_SETS)}; ChatCORE averages a whole set) or comma-separated task "
                        "names (fewer than a set: partial, no ChatCORE)")
    p.add_argument("--max-problems", type=int, default=None, help="cap per task (seeded random subset)")
    p.add_argument("--data-dir", default=None,
                   help="local data folder, or pkg://nanosft/resources/data for the embedded copy (default: the Hub)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (categorical)")
    p.add_argument("--generative-batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--num-samples", type=int, default=1, help="samples per problem (pass@k)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--output", default=None, help="JSON path (default: <model>/chatcore.json)")
    p.add_argument("--allow-weak-sandbox", action="store_true",
                   help="run HumanEval code even where the sandbox gets neither namespaces nor Landlock")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the CLI; returns the results dict (also written as JSON)."""
    use_cli_options(CLI_OPTIONS)
    args = parse_args(argv)
    args.data_dir = resolve_local_path("--data-dir", args.data_dir, folder_only=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if len(tasks) == 1 and tasks[0] in TASK_SETS:
        tasks = tasks[0]  # a task set by name: run_chatcore resolves it
    unknown = [t for t in ([] if isinstance(tasks, str) else tasks) if t not in TASKS]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {unknown}; known: {', '.join(TASKS)} "
                          f"or a set: {', '.join(TASK_SETS)}")
    try:  # before loading anything: refuse a weak code sandbox in seconds
        layers = require_sandbox(TASK_SETS[tasks] if isinstance(tasks, str) else tasks, args.allow_weak_sandbox)
    except WeakSandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    check_model_source(args.model, "--model")

    state = PartialState()
    if layers and state.is_main_process:
        print(f"code sandbox layers: {','.join(layers)}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(state.device)
    t0 = time.time()
    results = run_chatcore(
        model,
        tokenizer,
        tasks,
        data_dir=args.data_dir,
        max_categorical=args.max_problems,
        max_generative=args.max_problems,
        batch_size=args.batch_size,
        generative_batch_size=args.generative_batch_size,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        progress=True,
        allow_weak_sandbox=args.allow_weak_sandbox,
    )
    results["model"] = os.path.abspath(args.model)
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("model", "output")}
    results["seconds"] = round(time.time() - t0, 2)
    if state.is_main_process:
        print(format_table(results))
        write_json_atomic(args.output or os.path.join(args.model, "chatcore.json"), results)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
