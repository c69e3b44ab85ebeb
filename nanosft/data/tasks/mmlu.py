"""MMLU (Hendrycks et al. 2021): 57 subjects of 4-way multiple choice, rendered as in nanochat.

Ported from nanochat/tasks/mmlu.py; prompts come from ``arc.render_mc``. Sources: the Hub
(``cais/mmlu``, subset ``all``, rows ``{question, subject, choices, answer: int}``) or
``<data_dir>/mmlu/<split>/<subject>_<split>.csv`` (headerless ``question,A,B,C,D,answer`` per
subject, hendrycks/test: 14,079 test rows). Local files are sorted by subject, so callers that cap the
number of problems must shuffle first (``chatcore.load_problems`` does).
"""

from __future__ import annotations

import csv
import glob
import os

from . import DataSourceError, load_hub
from .arc import mc_problem

HUB_ID = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
SPLIT_DIRS = {"test": "test", "validation": "val", "val": "val", "dev": "dev"}


def load_problems(split: str = "test", data_dir: str | None = None) -> list[dict]:
    """All MMLU problems of a split; each carries its ``subject``.

    Args:
        split: "test", "validation" (or "val") or "dev".
        data_dir: folder with ``mmlu/``; None reads the Hub.

    Raises:
        DataSourceError: no CSV files in the local folder (the message names it), a malformed row,
            or the Hub is unreachable.
    """
    if data_dir is None:
        hub_split = "validation" if split == "val" else split
        return [
            mc_problem(r["question"], r["choices"], int(r["answer"]), LETTERS, subject=r["subject"])
            for r in load_hub(HUB_ID, "all", split=hub_split)
        ]
    folder = os.path.join(data_dir, "mmlu", SPLIT_DIRS.get(split, split))
    sub = SPLIT_DIRS.get(split, split)
    files = sorted(glob.glob(os.path.join(folder, f"*_{sub}.csv")))
    if not files:
        raise DataSourceError(
            f"no MMLU files <subject>_{sub}.csv in {folder}. They are data/{sub}/ of the hendrycks/test release "
            "(https://people.eecs.berkeley.edu/~hendrycks/data.tar)."
        )
    problems = []
    for path in files:
        subject = os.path.basename(path)[: -len(f"_{sub}.csv")]
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if len(row) != 6 or row[5].strip() not in LETTERS:
                    raise DataSourceError(
                        f"{path}, line {lineno}: expected question,A,B,C,D,answer; got {len(row)} fields"
                    )
                problems.append(mc_problem(row[0], row[1:5], LETTERS.index(row[5].strip()), LETTERS, subject=subject))
    return problems
