"""The run report: ``report.md`` and PNG plots next to the checkpoint, from the files a run leaves.

    python -m nanosft.report runs/smollm2-135m        # rebuild after the fact

``nanosft.train`` calls ``write_report(output_dir)`` at the end of every run (main process). Everything is
read back from disk, so a report can be rebuilt for any run folder, also a crashed one:

| file | gives |
|---|---|
| ``metrics.json`` (else the newest ``checkpoint-*/trainer_state.json``) | ``log_history``: loss, learning_rate, tokens/s, ``val_bpb``, ``chatcore/<task>`` |
| ``run_config.json`` | the config (YAML keys) and library versions |
| ``data_stats.json`` | the data mix: conversations, tokens, supervised ratio per source |
| ``chatcore_base.json`` | ChatCORE of the base model before training (``python -m nanosft.baseline``) |
| ``chatcore.json`` | ChatCORE of the final model from ``python -m nanosft.eval`` (overrides the log) |

Plots (matplotlib, Agg backend: no display needed): ``loss.png``, ``lr.png``, ``val_bpb.png`` (when
logged), ``chatcore.png`` (when ChatCORE ran; the base model at step 0 when ``chatcore_base.json``
exists); for RL runs ``reward.png`` and ``pass_at_k.png``. ChatCORE aggregates are named with their task
set (``chatcore_metric/nanochat``); a partial set has none and the table says so. The before/after table
gives a binomial noise scale per task, sqrt(p_b (1 - p_b) / n + p_a (1 - p_a) / n), so a reader can tell a
change from sampling noise at the capped problem counts (at n = 24 one problem is 4 points).
Trade-off: matplotlib import + 4 PNGs cost a second or two per run; plots are small (6 x 3.5 in, 100 dpi).
"""

from __future__ import annotations

import glob
import json
import os
import re
import statistics

from ..eval.chatcore import chatcore_from_log, chatcore_from_results, chatcore_table, split_metric_key
from ..files import write_text_atomic
from ..training.checkpoint import read_json, redact, redact_overrides

CONFIG_KEYS = ("model_name_or_path", "model_config", "tokenizer_name_or_path", "max_length",
               "per_device_train_batch_size", "gradient_accumulation_steps", "total_batch_size", "max_steps",
               "num_train_epochs", "optimizer", "matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr",
               "init_lr_frac", "warmup_ratio", "warmdown_ratio", "final_lr_frac", "weight_decay", "peft",
               "attention", "chatcore_every", "chatcore_max_categorical", "chatcore_max_generative",
               "chatcore_max_new_tokens", "seed",
               # RL runs (nanosft.rl); absent from SFT configs, so not shown there
               "task", "reward", "num_samples", "max_new_tokens", "temperature", "top_k", "examples_per_step",
               "device_batch_size", "use_tool", "eval_every", "eval_examples", "eval_num_samples")


def load_log_history(run_dir: str) -> list[dict]:
    """``log_history`` from ``metrics.json``, else from the newest checkpoint's ``trainer_state.json``; [] if none."""
    metrics = read_json(os.path.join(run_dir, "metrics.json"))
    if metrics and metrics.get("log_history"):
        return metrics["log_history"]
    states = glob.glob(os.path.join(run_dir, "checkpoint-*", "trainer_state.json"))
    steps = [(int(m.group(1)), p) for p in states if (m := re.search(r"checkpoint-(\d+)", p))]
    if steps:
        return (read_json(max(steps)[1]) or {}).get("log_history", [])
    return []


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, in log order, skipping entries without it."""
    pts = [(h.get("step", 0), h[key]) for h in log_history if isinstance(h.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _plot(path: str, curves: list[tuple[str, list, list]], ylabel: str, title: str, logy: bool = False) -> str | None:
    """One line plot with a legend; returns the file name, or None when there is nothing to draw."""
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    import matplotlib  # heavy (~1 s); only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, xs, ys in curves:
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return os.path.basename(path)


def make_plots(run_dir: str, log_history: list[dict], before: dict) -> dict[str, str]:
    """Write loss/lr/val_bpb/chatcore PNGs into ``run_dir``; returns {name: file} for those drawn."""
    out = {}
    loss = [("train loss", *series(log_history, "loss")), ("eval loss", *series(log_history, "eval_loss"))]
    out["loss"] = _plot(os.path.join(run_dir, "loss.png"), loss, "loss (nats / supervised token)", "Loss")
    out["lr"] = _plot(os.path.join(run_dir, "lr.png"), [("learning_rate", *series(log_history, "learning_rate"))],
                      "learning rate (first group)", "Learning rate")
    bpb = [(k, *series(log_history, k)) for k in ("val_bpb", "eval_bpb")]
    out["val_bpb"] = _plot(os.path.join(run_dir, "val_bpb.png"), bpb, "bits per byte", "Validation bits per byte")

    keys = sorted({k for h in log_history for k in h if k.startswith("chatcore/")} | {f"chatcore/{t}" for t in before.get("tasks", {})})
    aggregates = sorted({k for h in log_history for k in h if split_metric_key(k)}
                        | {k for k in before if split_metric_key(k)})
    curves = []
    with_base = False  # the title mentions step 0 only when a base-model point is drawn
    for key in [*keys, *aggregates]:
        xs, ys = series(log_history, key)
        b = before.get(key) if split_metric_key(key) else before.get("tasks", {}).get(key.split("/", 1)[-1], (None,))[0]
        if b is not None:
            xs, ys = [0, *xs], [b, *ys]
            with_base = True
        curves.append((key.replace("chatcore/", ""), xs, ys))
    title = "ChatCORE over steps" + (" (step 0: base model)" if with_base else "")
    out["chatcore"] = _plot(os.path.join(run_dir, "chatcore.png"), curves, "accuracy / centered score", title)
    # RL runs (nanosft.rl): mean reward per step and pass@k at the eval cadence
    out["reward"] = _plot(os.path.join(run_dir, "reward.png"), [("train reward", *series(log_history, "reward")),
                          ("eval reward", *series(log_history, "eval_reward"))], "mean reward", "Reward")
    ks = sorted({int(m.group(1)) for h in log_history for k in h if (m := re.match(r"^pass@(\d+)$", k))})
    out["pass_at_k"] = _plot(os.path.join(run_dir, "pass_at_k.png"), [(f"pass@{k}", *series(log_history, f"pass@{k}"))
                             for k in ks], "fraction of problems", "pass@k on held-out problems")
    return {k: v for k, v in out.items() if v}


def throughput(log_history: list[dict], train_metrics: dict | None) -> list[str]:
    """Markdown rows: median tokens/s, supervised tokens/s, s/step, total tokens, runtime."""
    rows = []
    for key, label in (("tokens_per_second", "tokens / s (median of logs)"),
                       ("supervised_tokens_per_second", "supervised tokens / s (median of logs)")):
        _, vals = series(log_history, key)
        vals = vals[1:] or vals  # the first log includes start-up
        if vals:
            rows.append(f"| {label} | {statistics.median(vals):,.1f} |")
    steps, _ = series(log_history, "loss")
    tm = train_metrics or {}
    runtime = tm.get("train_runtime")
    if runtime and steps:
        rows.append(f"| seconds / step | {runtime / max(steps[-1], 1):.2f} |")
    for key, label in (("num_tokens", "input tokens seen"), ("num_supervised_tokens", "supervised tokens seen")):
        _, vals = series(log_history, key)
        if vals:
            rows.append(f"| {label} | {int(vals[-1]):,} |")
    if runtime:
        rows.append(f"| train runtime | {runtime:.1f} s ({runtime / 60:.1f} min) |")
    return (["| metric | value |", "|---|---|", *rows]) if rows else []


def data_table(stats: dict | None) -> list[str]:
    """Markdown rows per source: conversations, tokens, mean/max length, supervised tokens and ratio."""
    if not stats:
        return []
    lines = ["| source | conversations | tokens | mean len | max len | supervised | supervised ratio |",
             "|---|---|---|---|---|---|---|"]
    tot = {"conversations": 0, "tokens": 0, "supervised": 0}
    for src, s in stats.items():
        lines.append(f"| {src} | {s.get('conversations', 0):,} | {s.get('tokens', 0):,} | {s.get('mean_len', 0):.1f} | "
                     f"{s.get('max_len', 0)} | {s.get('supervised', 0):,} | {s.get('supervised_ratio', 0):.1%} |")
        for k in tot:
            tot[k] += s.get(k, 0) or 0
    if len(stats) > 1:
        lines.append(f"| **total** | {tot['conversations']:,} | {tot['tokens']:,} | | | {tot['supervised']:,} | "
                     f"{tot['supervised'] / max(tot['tokens'], 1):.1%} |")
    return lines


def config_table(run_config: dict | None) -> list[str]:
    """Markdown rows of the key config values (the YAML as run, overrides applied; secrets redacted) and versions."""
    if not run_config:
        return []
    cfg = run_config.get("config", {})
    resolved = run_config.get("training_args") or {}  # as trained: defaults and inherited LRs filled in
    lines = ["| key | value | from |", "|---|---|---|"]
    if run_config.get("config_file"):
        lines.append(f"| config file | `{run_config['config_file']}` | |")
    for key in CONFIG_KEYS:
        if cfg.get(key) is not None:
            ran = resolved.get(key, cfg[key])
            note = "" if ran == cfg[key] or key not in resolved else f" (ran as `{json.dumps(ran)}`)"
            lines.append(f"| {key} | `{json.dumps(cfg[key])}`{note} | config |")
        elif resolved.get(key) is not None:
            lines.append(f"| {key} | `{json.dumps(resolved[key])}` | default |")
    if cfg.get("datasets"):
        lines.append(f"| datasets | `{json.dumps(redact(cfg['datasets']))}` | config |")
    if run_config.get("overrides"):
        lines.append(f"| overrides | `{' '.join(redact_overrides(run_config['overrides']))}` | command line |")
    versions = run_config.get("versions") or {}
    if versions:
        lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " | |")
    return lines


def build_report(run_dir: str) -> tuple[str, dict[str, str]]:
    """Read the run folder, draw the plots; returns (markdown text, {plot name: file})."""
    log_history = load_log_history(run_dir)
    metrics = read_json(os.path.join(run_dir, "metrics.json")) or {}
    run_config = read_json(os.path.join(run_dir, "run_config.json"))
    stats = read_json(os.path.join(run_dir, "data_stats.json"))
    before = chatcore_from_results(read_json(os.path.join(run_dir, "chatcore_base.json")))
    after = chatcore_from_results(read_json(os.path.join(run_dir, "chatcore.json"))) or chatcore_from_log(log_history)
    plots = make_plots(run_dir, log_history, before)
    name = os.path.basename(os.path.abspath(run_dir))
    md = [f"# Run report: {name}", ""]
    steps, losses = series(log_history, "loss")
    if losses:
        summary = f"{steps[-1]} steps; train loss {losses[0]:.4f} (step {steps[0]}) -> {losses[-1]:.4f} (step {steps[-1]})."
        md += [summary, ""]
    rsteps, rewards = series(log_history, "reward")
    if rewards:  # RL runs
        md += [f"Mean reward {rewards[0]:.4f} (step {rsteps[0]}) -> {rewards[-1]:.4f} (step {rsteps[-1]}).", ""]
    sections = [("Config", config_table(run_config)), ("Data mix and supervision", data_table(stats)),
                ("Throughput", throughput(log_history, metrics.get("train")))]
    for title, rows in sections:
        if rows:
            md += [f"## {title}", "", *rows, ""]
    if plots:
        md += ["## Curves", ""]
        md += [f"![{k}]({v})" for k, v in plots.items()] + [""]
    table = chatcore_table(before, after, (run_config or {}).get("config", {}))
    md += ["## ChatCORE", ""]
    if table:
        src = "`chatcore.json`" if read_json(os.path.join(run_dir, "chatcore.json")) else f"step {after.get('step', '-')}"
        head = f"After: the final model ({src})."
        if before:
            head = (f"Before: the base model (`chatcore_base.json`, same problems). {head} "
                    "`noise`: the binomial sigma of the change at n problems.")
        md += [head + " Accuracies.", "", *table, ""]
    else:
        md += ["ChatCORE did not run (`chatcore_every`, `python -m nanosft.baseline`).", ""]
    return "\n".join(md), plots


def write_report(run_dir: str) -> str:
    """Write ``<run_dir>/report.md`` (and the PNGs it links); returns its path."""
    text, _ = build_report(run_dir)
    path = os.path.join(run_dir, "report.md")
    write_text_atomic(path, text)
    return path
