"""The optimizer A/B table on a real model: ChatCORE per task before/after, val bpb, and the noise of each change.

Reads the JSON files ``nanosft.eval`` / ``nanosft.baseline`` wrote for each arm (``<evals>/<arm>-arc.json``,
``-mmlu.json``, ``-gen.json``, ``-he.json``: the same problems for every arm; a part may be missing) and each
run's final validation bits per byte (``<run>/metrics.json``), and prints a markdown table:

- per task: accuracy, and for a fine-tuned arm its change against the base with +- one binomial standard error
  of the difference of two independent proportions, after adding one success and one failure to each arm
  (Agresti & Caffo 2000, "Simple and effective confidence intervals for proportions and differences of
  proportions result from adding two successes and two failures", The American Statistician 54(4)), so 0 of
  100 against 0 of 100 still shows its noise; the problems are the same in every arm, so a paired comparison
  would be somewhat tighter (the eval JSON keeps counts, not per-problem outcomes);
- ChatCORE over the tasks the base has: the mean centered score (acc - chance) / (1 - chance) of
  nanochat/scripts/chat_eval.py (all six: ARC-Easy, ARC-Challenge, MMLU, GSM8K, SpellingBee, HumanEval);
- then the same changes and noise between the fine-tuned arms, against the first one (``--reference``): the
  optimizer A/B itself.

Usage, on the committed results (the commands that produce them are in bench/results/optimizer_ab.txt):

    R=bench/results/optimizer_ab
    python bench/optimizer_ab.py --evals $R base muon=$R/muon adamw=$R/adamw auto-adamw=$R/auto-adamw lora=$R/lora
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanosft.eval.chatcore import centered_score  # noqa: E402

TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "SpellingBee", "HumanEval")
PARTS = ("arc", "mmlu", "gen", "he")


def load_arm(evals: str, arm: str) -> dict[str, dict]:
    """task name -> {"correct", "total", "accuracy"} from the arm's eval files (missing parts are skipped)."""
    tasks = {}
    for part in PARTS:
        path = os.path.join(evals, f"{arm}-{part}.json")
        if os.path.exists(path):
            with open(path) as f:
                tasks.update(json.load(f)["tasks"])
    return tasks


def final_val_bpb(run_dir: str | None) -> float | None:
    """The last validation bits per byte (a key ending in ``bpb``) in ``<run_dir>/metrics.json``, or None."""
    path = run_dir and os.path.join(run_dir, "metrics.json")
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        history = json.load(f)["log_history"]
    values = [v for h in history for k, v in h.items() if k.endswith("bpb")]
    return values[-1] if values else None


def difference_se(correct1: int, n1: int, correct0: int, n0: int) -> float:
    """One standard error of (correct1 / n1 - correct0 / n0), Agresti-Caffo: each arm's proportion taken as
    (correct + 1) / (n + 2) over n + 2 problems."""
    p1, p0 = (correct1 + 1) / (n1 + 2), (correct0 + 1) / (n0 + 2)
    return math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))


def table(arms: list[tuple[str, str | None]], evals: str, reference: str) -> list[str]:
    """Markdown rows: each arm's accuracy per task, and for every arm but ``reference`` its change against
    ``reference`` +- one binomial standard error of the difference; columns are the tasks ``reference`` has."""
    ref = load_arm(evals, reference)
    tasks_shown = [t for t in TASKS if t in ref]
    if not tasks_shown:
        raise SystemExit(f"{evals}: no {reference}-{{{','.join(PARTS)}}}.json with results")
    header = ["arm", "val bpb"] + [f"{t} (n)" for t in tasks_shown] + [f"ChatCORE ({len(tasks_shown)} tasks)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run_dir in arms:
        tasks = load_arm(evals, name)
        bpb = final_val_bpb(run_dir)
        cells = [name, f"{bpb:.4f}" if bpb is not None else "-"]
        centered = []
        for t in tasks_shown:
            r = tasks.get(t)
            if r is None:
                cells.append("-")
                continue
            acc, n = r["accuracy"], r["total"]
            centered.append(centered_score(t, acc))
            cell = f"{acc:.3f} ({n})"
            if name != reference:
                b = ref[t]
                se = difference_se(r["correct"], n, b["correct"], b["total"])
                cell += f" {acc - b['accuracy']:+.3f}+-{se:.3f}"
            cells.append(cell)
        cells.append(f"{sum(centered) / len(centered):.4f}" if len(centered) == len(tasks_shown) else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evals", required=True, help="folder of <arm>-{arc,mmlu,gen,he}.json")
    p.add_argument("--reference", help="fine-tuned arm the others are compared with (default: the first one)")
    p.add_argument("arms", nargs="+", help="'base' first, then name=run_dir for each fine-tuned arm")
    args = p.parse_args(argv)
    arms = [tuple((a.split("=", 1) + [None])[:2]) for a in args.arms]
    print("Changes against the base model:\n")
    print("\n".join(table(arms, args.evals, arms[0][0])))
    tuned = arms[1:]
    if len(tuned) > 1:
        reference = args.reference or tuned[0][0]
        print(f"\nChanges against {reference}:\n")
        print("\n".join(table(tuned, args.evals, reference)))


if __name__ == "__main__":
    main()
