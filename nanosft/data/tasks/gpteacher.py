"""GPTeacher general instructions (teknium1/GPTeacher): codegen, roleplay, toolformer.

Each ``{instruction, input, response}`` becomes one user/assistant turn; a non-empty ``input`` is
appended to the instruction after a blank line (the Alpaca convention). Local:
``<data_dir>/gpteacher/<subset>-instruct.json``. The Hub has none of the three subsets as a dataset of its own
(``teknium/GPTeacher-General-Instruct`` is the fourth, general module), so they are read locally only.
"""

from __future__ import annotations

import os

from ...errors import option
from . import DataSourceError, read_json_array, require_file

SUBSETS = ("codegen", "roleplay", "toolformer")
GITHUB = "github.com/teknium1/GPTeacher"


def to_conversation(row: dict) -> list[dict]:
    """One instruction row as a conversation."""
    prompt = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["response"]}]


def load_conversations(split: str = "train", data_dir: str | None = None, subset: str = "codegen") -> list:
    """All conversations of one subset (only a train split exists)."""
    if subset not in SUBSETS:
        raise DataSourceError(f"unknown GPTeacher subset {subset!r}; choose one of {SUBSETS}")
    if data_dir is None:  # the Hub copy is another module: it would silently ignore `subset`
        raise DataSourceError(f"GPTeacher {subset!r} is read from a local folder only: set {option('data_dir')} "
                              f"(the embedded pkg://nanosft/resources/data has it; source: {GITHUB})")
    path = os.path.join(data_dir, "gpteacher", f"{subset}-instruct.json")
    require_file(path, f"Get it from {GITHUB} (<subset>/<subset>-instruct.json).")
    return [to_conversation(r) for r in read_json_array(path)]
