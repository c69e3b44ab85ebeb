"""Does the RL stage learn? Reads an RL run's metrics.json and tests the rise of the mean reward.

    # 1. a tiny chat model: configs/tiny.yaml, shortened (~8 min on a shared 2-core CPU)
    python -m nanosft.train --config configs/tiny.yaml --set chatcore_every=-1 --set eval_strategy='"no"' \\
        --set eval_datasets=null --set output_dir=runs/tiny-short --set max_length=256 --set max_steps=60 \\
        --set 'datasets=[{name: gsm8k, max_rows: 600}, {name: spellingbee, size: 300}]'
    # 2. RL with a toy reward that model can reach: 1 when a completion calls the calculator
    python -m nanosft.rl --config configs/rl-tiny.yaml --set model_name_or_path=runs/tiny-short \\
        --set reward=bench.rl_toy_rewards.uses_tool --set max_steps=40 --set init_lr_frac=0.5 \\
        --set eval_every=20 --set save_steps=20 --set output_dir=runs/rl-learns
    # 3.
    python bench/rl_learns.py runs/rl-learns

Start value = mean reward of the first ``start`` steps (default 1: the policy before any update); its
standard error = the pooled per-sample standard deviation / sqrt(samples in those steps). End value = mean
of the last ``end`` steps (default 5). Prints the per-step curve, start, end, the rise in start standard
errors, and PASS when it is above 3.
"""

import json
import math
import sys


def main(run_dir: str, start_steps: int = 1, end_steps: int = 5) -> int:
    history = json.load(open(f"{run_dir}/metrics.json"))["log_history"]
    config = json.load(open(f"{run_dir}/run_config.json"))["training_args"]
    per_step = config["examples_per_step"] * config["num_samples"]
    steps = [(h["step"], h["reward"], h["reward_std"]) for h in history if "reward" in h]
    print("step reward: " + " ".join(f"{s}:{r:.3f}" for s, r, _ in steps))
    for h in history:
        if "pass@1" in h:
            print(f"step {h['step']}: " + " ".join(f"{k}={v:.3f}" for k, v in h.items() if k.startswith("pass@")
                                                   and not k.endswith("unbiased")))
    first, last = steps[:start_steps], steps[-end_steps:]
    start = sum(r for _, r, _ in first) / len(first)
    end = sum(r for _, r, _ in last) / len(last)
    pooled = math.sqrt(sum(sd ** 2 + (r - start) ** 2 for _, r, sd in first) / len(first))
    se = pooled / math.sqrt(per_step * len(first))
    z = (end - start) / se
    print(f"start (first {start_steps} step(s)) {start:.3f} +- {se:.3f} (SE, {per_step * len(first)} samples); "
          f"end (last {end_steps} steps) {end:.3f}; rise = {z:.1f} SE -> {'PASS' if z > 3 else 'FAIL'}")
    return 0 if z > 3 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/rl-learns"))
