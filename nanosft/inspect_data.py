"""See what training sees: ``python -m nanosft.inspect_data --config configs/tiny.yaml [--n 3] [--set key=value]``.

It runs the recipe's own data steps: the tokenizer (``nanosft.models.pretrained.load_tokenizer``) and the data
cache (``nanosft.data.prepare.prepare_from_config``: load, validate, render, pack; built once, found by the next
training run), then prints:

1. the first ``--n`` valid conversations of each dataset (``iter_conversations``, ``max_rows`` applied), rendered
   by the training renderer (``training_renderer``), headed by the dataset's ``format:`` (messages, sharegpt,
   alpaca, openai: ``nanosft.data.formats``) so a row of each format is seen as training sees it, token by
   token, supervised tokens (assistant mask 1, the training targets) in green and unsupervised ones in
   red. When stdout is not a terminal (or with ``--color never``) the spans are written as plain markers
   instead::

       [-<|bos|><|user_start|>What is 2+2?<|user_end|><|assistant_start|>][+4<|assistant_end|>]

   ``[+...]`` is supervised, ``[-...]`` is not; a literal ``]`` inside a span is written ``\\]``.
2. The statistics training logs and writes to ``data_stats.json``, a row per dataset: conversations, mean
   and max length (tokens), supervised-token ratio, and how many were truncated to ``max_length + 1``.

No model is built; it takes seconds.
"""

from __future__ import annotations

import argparse
import sys

from .data.mixture import DatasetSpec, iter_conversations
from .data.prepare import prepare_from_config, training_renderer
from .errors import run_cli
from .models.pretrained import load_tokenizer
from .training.config import load_config

GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


def mask_spans(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    """Group a rendered conversation into maximal runs of equal mask: ``[(mask_value, ids), ...]``."""
    spans: list[tuple[int, list[int]]] = []
    for t, m in zip(ids, mask, strict=True):
        if spans and spans[-1][0] == m:
            spans[-1][1].append(t)
        else:
            spans.append((m, [t]))
    return spans


def format_conversation(tokenizer, ids: list[int], mask: list[int], color: bool) -> str:
    """One rendered conversation as text, supervised spans green / unsupervised red (ANSI), or with
    ``[+...]`` / ``[-...]`` markers when ``color`` is False. Special tokens appear by name."""
    out = []
    for m, span in mask_spans(ids, mask):
        text = tokenizer.decode(span, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if color:
            out.append(f"{GREEN if m else RED}{text}{RESET}")
        else:
            out.append(f"[{'+' if m else '-'}{text.replace(']', chr(92) + ']')}]")
    return "".join(out)


def format_table(stats: dict) -> str:
    """The per-dataset table of the data cache's statistics (``PreparedRows.stats``, as ``supervision_stats``)."""
    head = f"{'dataset':<36} {'conv':>7} {'mean len':>9} {'max len':>8} {'supervised':>11} {'truncated':>10}"
    lines = [head, "-" * len(head)]
    total = {"conversations": 0, "tokens": 0, "supervised": 0, "max_len": 0, "truncated": 0}
    for src, s in stats.items():
        lines.append(f"{src:<36} {s['conversations']:>7} {s['mean_len']:>9.1f} {s['max_len']:>8} "
                     f"{100 * s['supervised_ratio']:>10.1f}% {s.get('truncated', 0):>10}")
        for k in ("conversations", "tokens", "supervised", "truncated"):
            total[k] += s.get(k, 0)
        total["max_len"] = max(total["max_len"], s["max_len"])
    if len(stats) > 1:
        lines.append(f"{'all':<36} {total['conversations']:>7} "
                     f"{total['tokens'] / max(total['conversations'], 1):>9.1f} {total['max_len']:>8} "
                     f"{100 * total['supervised'] / max(total['tokens'], 1):>10.1f}% {total['truncated']:>10}")
    return "\n".join(lines)


def inspect_config(cfg, n: int = 3, color: bool = False, out=None) -> dict:
    """Build (or find) the training rows of ``cfg`` as training does; print samples and statistics to ``out``.

    Args:
        cfg: a ``NanoSFTConfig`` (``nanosft.training.config.load_config``).
        n: sample conversations printed per dataset (0: only the table).
        color: ANSI colors instead of bracket markers.
        out: a text stream (default ``sys.stdout``).

    Returns:
        the statistics printed in the table: dataset label -> ``supervision_stats`` entry.

    Raises:
        DataSourceError, DataValidationError: as training would (missing data, invalid rows).
    """
    out = out or sys.stdout
    tokenizer = load_tokenizer(cfg)
    train, _ = prepare_from_config(cfg, tokenizer, eval_split=False)  # the rows and statistics training uses
    renderer = training_renderer(tokenizer, cfg.max_length, cfg.overlong)
    for spec in (DatasetSpec.from_dict(d) for d in cfg.datasets) if n > 0 else ():
        convs = next(iter_conversations(spec, cfg.data_dir, cfg.mixture_seed, cfg.skip_invalid, chunk=n), [])[:n]
        for k, (ids, mask) in enumerate(renderer.render_batch(convs, normalized=True), 1):
            print(f"=== {spec.label} #{k} (format {spec.format}, {len(ids)} tokens, {sum(mask)} supervised) ===",
                  file=out)
            print(format_conversation(tokenizer, ids, mask, color), file=out)
            print(file=out)
    print(f"max_length={cfg.max_length}: conversations longer than {cfg.max_length + 1} tokens are "
          f"{'truncated' if cfg.overlong == 'truncate' else 'split'}", file=out)
    print(format_table(train.stats), file=out)
    return train.stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanosft.inspect_data", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML config, as for nanosft.train")
    p.add_argument("--n", type=int, default=3, help="sample conversations per dataset (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="ANSI colors: auto = only when stdout is a terminal")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    inspect_config(cfg, n=args.n, color=color)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
