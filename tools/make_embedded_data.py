"""Build ``nanosft/resources/data``: the small offline data the default run and the tests need.

    python tools/make_embedded_data.py /path/to/full/data     # the full local copies (NANOSFT_DATA_DIR layout)

Same layout and formats as the full data folder, so every loader reads either. Subsets, all reproducible:

- eval splits (GSM8K test, ARC-Easy/Challenge test, MMLU test): the first ``EVAL_ROWS`` problems of the order
  nanochat evaluates them in (``numpy.random.default_rng(42).permutation``, nanochat/tasks/common.py
  ``HubDataset.shuffle``), written in source order;
- train splits and the word list: a ``default_rng(42)`` random subset, written in source order;
- the nanochat tokenizer: whole.
"""

import csv
import glob
import json
import os
import shutil
import sys

import numpy as np

EVAL_ROWS = 256
TRAIN_ROWS = {"gsm8k": 600, "identity": 200, "gpteacher": 150, "mmlu_val": 300}
WORDS = 20_000
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanosft", "resources", "data")


def subset(n_total: int, n: int, nanochat_order: bool) -> list[int]:
    """Row indices kept, sorted: nanochat's first ``n`` eval problems, or a seeded random subset."""
    perm = np.random.default_rng(42).permutation(n_total)
    if not nanochat_order:
        perm = np.random.default_rng(43).permutation(n_total)
    return sorted(int(i) for i in perm[:n])


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def write_lines(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(rows)


def main(src: str) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(os.path.join(src, "nanochat_tokenizer"), os.path.join(OUT, "nanochat_tokenizer"))
    for split, n, order in (("train", TRAIN_ROWS["gsm8k"], False), ("test", EVAL_ROWS, True)):
        rows = lines(os.path.join(src, "gsm8k", f"{split}.jsonl"))
        write_lines(os.path.join(OUT, "gsm8k", f"{split}.jsonl"), [rows[i] for i in subset(len(rows), n, order)])
    rows = lines(os.path.join(src, "identity", "identity_conversations.jsonl"))
    write_lines(os.path.join(OUT, "identity", "identity_conversations.jsonl"),
                [rows[i] for i in subset(len(rows), TRAIN_ROWS["identity"], False)])
    for sub in ("codegen", "roleplay", "toolformer"):
        with open(os.path.join(src, "gpteacher", f"{sub}-instruct.json"), encoding="utf-8") as f:
            rows = json.load(f)
        os.makedirs(os.path.join(OUT, "gpteacher"), exist_ok=True)
        with open(os.path.join(OUT, "gpteacher", f"{sub}-instruct.json"), "w", encoding="utf-8") as f:
            json.dump([rows[i] for i in subset(len(rows), TRAIN_ROWS["gpteacher"], False)], f, indent=1,
                      ensure_ascii=False)
    for name in ("arc_easy_test.jsonl", "arc_challenge_test.jsonl"):
        rows = lines(os.path.join(src, "arc", name))
        write_lines(os.path.join(OUT, "arc", name), [rows[i] for i in subset(len(rows), EVAL_ROWS, True)])
    for split, n, order in (("dev", None, False), ("val", TRAIN_ROWS["mmlu_val"], False), ("test", EVAL_ROWS, True)):
        rows = []  # (file name, raw csv row) in the loader's order: files sorted, rows in file order
        for path in sorted(glob.glob(os.path.join(src, "mmlu", split, f"*_{split}.csv"))):
            with open(path, encoding="utf-8", newline="") as f:
                rows += [(os.path.basename(path), r) for r in csv.reader(f)]
        keep = range(len(rows)) if n is None else subset(len(rows), n, order)
        by_file = {}
        for i in keep:
            by_file.setdefault(rows[i][0], []).append(rows[i][1])
        os.makedirs(os.path.join(OUT, "mmlu", split), exist_ok=True)
        for name, file_rows in by_file.items():
            with open(os.path.join(OUT, "mmlu", split, name), "w", encoding="utf-8", newline="") as f:
                csv.writer(f).writerows(file_rows)
    rows = lines(os.path.join(src, "words", "words_alpha.txt"))
    write_lines(os.path.join(OUT, "words", "words_alpha.txt"), [rows[i] for i in subset(len(rows), WORDS, False)])


if __name__ == "__main__":
    main(sys.argv[1])
