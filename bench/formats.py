"""Loading overhead of each ``format:`` and file type vs nanochat's messages JSONL.

    python bench/formats.py [--n 20000] [--repeats 3]

The same ``--n`` synthetic conversations (2 or 4 turns, 40-400 characters of text each; single-turn for
alpaca, whose rows have one exchange) are written once per format / file type into a temporary folder,
then loaded with ``nanosft.data.mixture.load_mixture`` (read, convert, validate, normalize, shuffle: everything
before rendering, which is identical for every format). Prints conversations/s and the time ratio to
messages JSONL of the same conversations (1.00 = no overhead). Times are the best of ``--repeats`` rounds,
the paths interleaved within each round. Parquet and CSV go through ``datasets``' loaders, whose Arrow
cache is rebuilt each round (a fresh file name), as on a first run.

Measured on a shared 2-core CPU box under load (``--n 20000 --repeats 3``; messages JSONL 10,277 conv/s,
multi-turn; 9,191 conv/s single-turn): sharegpt .jsonl 1.18x, sharegpt .json array 1.31x, openai .jsonl 1.39x
(one pass for the tool-call check, one to copy role/content), alpaca .jsonl 0.60x, .parquet 0.54x, .csv 0.62x
(alpaca rows are flat: less JSON to parse than nested messages). Rendering the same conversations runs at
~10,000 conv/s (``bench/render.py``), so the worst case adds about a third of the render time, once per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanosft.data.mixture import DatasetSpec, load_mixture  # noqa: E402

WORDS = "the a model token train data chat user answer question python value list file row line format".split()


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 80)))


def conversations(n: int, seed: int = 0, single_turn: bool = False) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = 1 if single_turn else rng.choice((1, 2))
        conv = []
        for _ in range(turns):
            conv += [{"role": "user", "content": text(rng)}, {"role": "assistant", "content": text(rng)}]
        out.append(conv)
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_all(folder: str, n: int) -> list[tuple[str, str, dict]]:
    """(case, baseline case, spec) per format / file type; files written under ``folder``."""
    import datasets

    multi, single = conversations(n), conversations(n, single_turn=True)
    short = {"user": "human", "assistant": "gpt"}
    sharegpt = [{"id": f"r{i}", "conversations": [{"from": short[m["role"]], "value": m["content"]} for m in c]}
                for i, c in enumerate(multi)]
    alpaca = [{"instruction": c[0]["content"], "input": "", "output": c[1]["content"]} for c in single]
    f = lambda name: os.path.join(folder, name)  # noqa: E731
    write_jsonl(f("messages.jsonl"), [{"messages": c} for c in multi])
    write_jsonl(f("messages1.jsonl"), [{"messages": c} for c in single])
    write_jsonl(f("sharegpt.jsonl"), sharegpt)
    with open(f("sharegpt.json"), "w", encoding="utf-8") as fh:
        json.dump(sharegpt, fh)
    write_jsonl(f("openai.jsonl"), [{"messages": c} for c in multi])
    write_jsonl(f("alpaca.jsonl"), alpaca)
    datasets.Dataset.from_list(alpaca).to_parquet(f("alpaca.parquet"))
    with open(f("alpaca.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["instruction", "input", "output"])
        w.writeheader()
        w.writerows(alpaca)
    return [
        ("messages .jsonl", "messages .jsonl", {"path": f("messages.jsonl")}),
        ("sharegpt .jsonl", "messages .jsonl", {"path": f("sharegpt.jsonl"), "format": "sharegpt"}),
        ("sharegpt .json array", "messages .jsonl", {"path": f("sharegpt.json"), "format": "sharegpt"}),
        ("openai .jsonl", "messages .jsonl", {"path": f("openai.jsonl"), "format": "openai"}),
        ("messages .jsonl, 1 turn", "messages .jsonl, 1 turn", {"path": f("messages1.jsonl")}),
        ("alpaca .jsonl", "messages .jsonl, 1 turn", {"path": f("alpaca.jsonl"), "format": "alpaca"}),
        ("alpaca .parquet", "messages .jsonl, 1 turn", {"path": f("alpaca.parquet"), "format": "alpaca"}),
        ("alpaca .csv", "messages .jsonl, 1 turn", {"path": f("alpaca.csv"), "format": "alpaca"}),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cases = write_all(folder, args.n)
        best = {name: float("inf") for name, _, _ in cases}
        for r in range(args.repeats):
            for name, _, spec in cases:
                path = spec["path"]
                if path.endswith((".parquet", ".csv")):  # a fresh name: no Arrow cache from the last round
                    fresh = path.replace("alpaca.", f"alpaca{r}.")
                    os.link(path, fresh)
                    spec = {**spec, "path": fresh}
                t = time.perf_counter()
                convs, _ = load_mixture([DatasetSpec.from_dict({"name": "files", **spec})], data_dir=None)
                best[name] = min(best[name], time.perf_counter() - t)
                assert len(convs) == args.n
        print(f"{args.n} conversations, best of {args.repeats}")
        print(f"{'format / file':<26} {'conv/s':>9} {'vs messages':>12}")
        for name, base, _ in cases:
            print(f"{name:<26} {args.n / best[name]:>9,.0f} {best[name] / best[base]:>11.2f}x")


if __name__ == "__main__":
    main()
