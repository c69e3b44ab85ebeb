"""ARC-Easy and ARC-Challenge (Clark et al. 2018) as chat multiple-choice problems.

Ported from nanochat/tasks/arc.py and nanochat/tasks/common.py (``render_mc``). A problem is a
conversation whose user message lists the choices with their letters and whose assistant answer is
the bare letter; ChatCORE scores it by comparing the letters' logits after ``<|assistant_start|>``.

Sources: the Hub (``allenai/ai2_arc``, rows ``{question, choices: {text, label}, answerKey}``) or
``<data_dir>/arc/arc_{easy,challenge}_test.jsonl`` (``{query: "Question: ...", choices, gold}``, the
mosaicml/llm-foundry copy: test split only, 2,376 / 1,172 rows, always 4 choices, letters A-D).
"""

from __future__ import annotations

import os

from ...errors import ConfigError, option
from . import DataSourceError, load_hub, read_jsonl, require_file

HUB_ID = "allenai/ai2_arc"
SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}
LETTERS = ("A", "B", "C", "D", "E")


def render_mc(question: str, letters, choices) -> str:
    """The multiple-choice user message (nanochat/tasks/common.py ``render_mc``).

    The letter comes AFTER its choice with no space after ``=``: the answer is the bare letter token
    (nanochat tokenizer: ``"A"`` is id 65, ``" A"`` is id 334), so the prompt shows the same token id
    the model must produce. Small models are sensitive to that identity. The ``=`` itself may merge
    with the choice's last character (``")="`` is one token) but the letter is always a token of its
    own (checked over 200 ARC/MMLU prompts in tests/test_chatcore.py).
    """
    query = f"Multiple Choice question: {question}\n"
    query += "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    query += "\nRespond only with the letter of the correct answer."
    return query


def mc_problem(question: str, choices, answer_index: int, letters=None, **extra) -> dict:
    """A categorical problem: ``{"messages": [user, assistant letter], "letters": [...], **extra}``."""
    letters = list(letters) if letters is not None else list(LETTERS[: len(choices)])
    messages = [
        {"role": "user", "content": render_mc(question, letters, choices)},
        {"role": "assistant", "content": letters[answer_index]},
    ]
    return {"messages": messages, "letters": letters, **extra}


def load_problems(subset: str = "ARC-Easy", split: str = "test", data_dir: str | None = None) -> list[dict]:
    """All problems of an ARC subset and split, in source order.

    Args:
        subset: "ARC-Easy" or "ARC-Challenge".
        split: "train", "validation" or "test" (the local copy holds only "test").
        data_dir: folder with ``arc/``; None reads the Hub.

    Raises:
        ConfigError: unknown subset. DataSourceError: a non-test split asked of the local copy.
        DataSourceError: the local file is missing (the message names it) or the Hub is unreachable.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"unknown ARC subset {subset!r}; set `subset:` to one of {sorted(SUBSETS)}")
    if data_dir is None:
        problems = []
        for row in load_hub(HUB_ID, subset, split=split):
            labels = list(row["choices"]["label"])
            problems.append(mc_problem(row["question"], row["choices"]["text"], labels.index(row["answerKey"]), labels))
        return problems
    if split != "test":
        raise DataSourceError(f"the local ARC copy holds only the test split, not {split!r}; use split: test, or "
                              f"the Hub ({option('data_dir')} unset)")
    path = os.path.join(data_dir, "arc", f"{SUBSETS[subset]}_test.jsonl")
    require_file(path, "It is scripts/eval/local_data/world_knowledge/ from github.com/mosaicml/llm-foundry.")
    problems = []
    for row in read_jsonl(path):
        question = row["query"].removeprefix("Question: ")
        problems.append(mc_problem(question, row["choices"], int(row["gold"])))
    return problems
