"""GSM8K (Cobbe et al. 2021): grade-school math with calculator annotations.

Training conversations follow nanochat/tasks/gsm8k.py: the answer's ``<<48/2=24>>`` annotations become a
python tool call ``48/2`` and its output ``24``, so the model learns to call the calculator; the final
line ``#### 72`` carries the answer. Local: ``<data_dir>/gsm8k/{train,test}.jsonl``; Hub: ``openai/gsm8k``.
"""

from __future__ import annotations

import os
import re

from ...format.template import parse_calculator_annotations
from . import load_hub, read_jsonl, require_file

HUB_ID = "openai/gsm8k"
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # nanochat/tasks/gsm8k.py


def load_rows(split: str = "train", data_dir: str | None = None) -> list[dict]:
    """Rows ``{question, answer}`` of a split ("train" 7,473 / "test" 1,319), local or from the Hub."""
    if data_dir is None:
        return [dict(r) for r in load_hub(HUB_ID, "main", split=split)]
    path = os.path.join(data_dir, "gsm8k", f"{split}.jsonl")
    require_file(path, "It is grade_school_math/data/<split>.jsonl from github.com/openai/grade-school-math.")
    return read_jsonl(path)


def to_conversation(row: dict) -> list[dict]:
    """One GSM8K row as a user question and a tool-using assistant answer."""
    return [
        {"role": "user", "content": row["question"]},
        {"role": "assistant", "content": parse_calculator_annotations(row["answer"])},
    ]


def load_conversations(split: str = "train", data_dir: str | None = None) -> list[list[dict]]:
    """All conversations of a split, in file order."""
    return [to_conversation(r) for r in load_rows(split, data_dir)]


def extract_answer(text: str) -> str | None:
    """The number after ``#### `` with commas removed, or None (nanochat/tasks/gsm8k.py)."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def load_problems(split: str = "test", data_dir: str | None = None) -> list[dict]:
    """Eval problems ``{"messages": [user, assistant], "reference": final answer}`` of a split, in file order."""
    return [{"messages": to_conversation(row), "reference": extract_answer(row["answer"])}
            for row in load_rows(split, data_dir)]
