"""The training mixture: named datasets -> validated conversations -> shuffled -> rendered tokens.

A mixture is a list of ``DatasetSpec`` (one YAML entry each). Each spec names a loader in ``LOADERS``
(local ``data_dir`` or the Hugging Face Hub), may repeat for several ``epochs`` (nanochat repeats GSM8K
4x and MMLU 3x) and may be capped by ``max_rows``. Everything is loaded, validated and rendered before
the model is built, so a missing file or a malformed row fails in seconds, not after a model download.
The mixture is shuffled once with ``random.Random(seed)`` (nanochat's TaskMixture, seed 42), then
rendered with one batched encode per 1,000 conversations (``ChatRenderer.render_batch``).

The result is a ``datasets.Dataset`` with columns ``input_ids``, ``assistant_masks`` (TRL's name for the
assistant mask) and ``source``; TRL treats it as pre-tokenized.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, fields
from functools import partial

from .errors import ConfigError, DataSourceError, DataValidationError
from .tasks import (InvalidLine, Rows, gpteacher, gsm8k, identity, load_hub, position, read_jsonl, require_file,
                    spellingbee)
from .template import ChatRenderer, ConversationError, RenderStats, normalize_conversation

logger = logging.getLogger(__name__)


def _hub_messages(split="train", data_dir=None, hub_id=None, column="messages", subset=None):
    if hub_id is None:
        raise DataSourceError("dataset `hub` needs `hub_id:` (a Hugging Face dataset id with a messages column)")
    ds = load_hub(hub_id, subset, split=split) if subset else load_hub(hub_id, split=split)
    if column not in ds.column_names:
        raise DataSourceError(f"Hub dataset {hub_id!r} has no column {column!r} (columns: {ds.column_names}); "
                              "set `column:` of this dataset in the config")
    return Rows(ds[column], source=hub_id, hub=True)


def _jsonl_messages(split="train", data_dir=None, path=None):
    if path is None:
        raise DataSourceError("dataset `jsonl` needs `path:` (a JSON-lines file, one conversation per line)")
    rows = read_jsonl(require_file(path, "check the `path:` of this dataset in the config"), keep_invalid=True)
    return Rows([r["messages"] if isinstance(r, dict) and "messages" in r else r for r in rows],
                source=rows.source, lines=rows.lines)


def _mmlu_messages(split="auxiliary_train", data_dir=None):
    from .tasks import arc, mmlu

    if split != "auxiliary_train":
        return [p["messages"] for p in mmlu.load_problems(split, data_dir)]
    if data_dir is not None:
        raise DataSourceError("MMLU auxiliary_train is not in the local data folder (only dev/val/test are); "
                              "set `data_dir: null` to read cais/mmlu from the Hub, or use split: dev / val")
    # nanochat/tasks/mmlu.py: this subset nests each row under "train"
    rows = (r["train"] for r in load_hub(mmlu.HUB_ID, "auxiliary_train", split="train"))
    return [arc.mc_problem(r["question"], r["choices"], int(r["answer"]), mmlu.LETTERS)["messages"] for r in rows]


def _arc_messages(split="train", data_dir=None, subset="ARC-Easy"):
    from .tasks import arc

    return [p["messages"] for p in arc.load_problems(subset, split, data_dir)]


# name -> loader(split, data_dir, **options) returning a list of raw conversations.
LOADERS = {
    "gsm8k": gsm8k.load_conversations,
    "identity": identity.load_conversations,
    "spellingbee": partial(spellingbee.load_conversations, kind="spellingbee"),
    "simplespelling": partial(spellingbee.load_conversations, kind="simplespelling"),
    "gpteacher": gpteacher.load_conversations,
    "smoltalk": partial(_hub_messages, hub_id="HuggingFaceTB/smol-smoltalk"),
    "mmlu": _mmlu_messages,
    "arc": _arc_messages,
    "hub": _hub_messages,
    "jsonl": _jsonl_messages,
}


@dataclass
class DatasetSpec:
    """One entry of the mixture.

    Attributes:
        name: a key of ``LOADERS``.
        split: dataset split ("train", "test").
        epochs: how many times the dataset enters the mixture (int >= 1).
        max_rows: keep a seeded random subset of N rows, in source order, before repetition (None keeps
            all). Random, not the first N: local MMLU files are sorted by subject, and MMLU val's first 160
            rows (11 subjects) answer "D" 33% of the time, which a short SFT learns as a prior.
        size: number of synthetic examples (spellingbee, simplespelling).
        subset: loader-specific subset (gpteacher: codegen/roleplay/toolformer; hub: config name).
        path: file for ``jsonl`` (or to override the identity file).
        hub_id: dataset id for ``hub``.
        column: messages column for ``hub``.
    """

    name: str
    split: str = "train"
    epochs: int = 1
    max_rows: int | None = None
    size: int | None = None
    subset: str | None = None
    path: str | None = None
    hub_id: str | None = None
    column: str | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "datasets") -> DatasetSpec:
        """Build from a YAML mapping; unknown keys, unknown names and bad types raise ``ConfigError``."""
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"{where}: each dataset needs a `name:` (one of {sorted(LOADERS)}), got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for dataset {d['name']!r}; allowed: {sorted(known)}")
        if d["name"] not in LOADERS:
            raise ConfigError(f"{where}: unknown dataset name {d['name']!r}; known: {sorted(LOADERS)}")
        for key in ("epochs", "max_rows", "size"):
            if d.get(key) is not None and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
                raise ConfigError(f"{where}: `{key}` of dataset {d['name']!r} must be a positive integer, "
                                  f"got {d[key]!r}")
        return cls(**d)

    @property
    def label(self) -> str:
        """A readable name for logs and errors, e.g. ``gsm8k[train]``."""
        extra = self.subset or self.hub_id or self.path
        return f"{self.name}{'/' + extra if extra else ''}[{self.split}]"

    def load(self, data_dir: str | None) -> list:
        """All raw conversations of this dataset (one epoch; ``max_rows`` is applied by ``row_indices``)."""
        kwargs = {k: getattr(self, k) for k in ("size", "subset", "path", "hub_id", "column") if getattr(self, k)}
        return LOADERS[self.name](split=self.split, data_dir=data_dir, **kwargs)

    def row_indices(self, num_rows: int, seed: int) -> list[int]:
        """The source rows kept: all of them, or ``max_rows`` drawn with ``random.Random(f"{seed}:{label}")``.

        Sorted (source order), deterministic across processes and runs, and independent of the other
        datasets of the mixture.
        """
        if not self.max_rows or self.max_rows >= num_rows:
            return list(range(num_rows))
        return sorted(random.Random(f"{seed}:{self.label}").sample(range(num_rows), self.max_rows))


MAX_SKIPS_SHOWN = 5  # skipped rows listed (position and reason) in the skip_invalid warning


def check_training_conversation(row) -> list[dict]:
    """Validate one raw row as a training conversation and normalize it (``normalize_conversation``).

    Besides the format rules of ``normalize_conversation``, an assistant message must say something: an
    empty string or an empty list of parts would train the model to answer nothing.

    Raises:
        ConversationError: the row is not JSON (an ``InvalidLine``), not a conversation (e.g. a bare
            string), breaks the chat format, or has an assistant message with empty content.
    """
    if isinstance(row, InvalidLine):
        raise ConversationError(row.reason)
    conv = normalize_conversation(row)
    messages = row["messages"] if isinstance(row, dict) else row  # valid: normalize_conversation accepted it
    for i, m in enumerate(messages):  # numbered like normalize_conversation's messages (0-based, as sent)
        content = m["content"]
        if m["role"] == "assistant" and not (content if isinstance(content, str) else any(p["text"] for p in content)):
            raise ConversationError(f"message {i} (assistant): empty content (it would train the model to answer "
                                    "nothing)")
    return conv


def _position(spec: DatasetSpec, raw, row: int) -> str:
    """``position`` of a row, without repeating a file path that the dataset's label already names."""
    if isinstance(raw, Rows) and raw.lines is not None and raw.source and raw.source in spec.label:
        return f"line {raw.lines[row]}"
    return position(raw, row)


def load_mixture(
    specs: list[DatasetSpec], data_dir: str | None, seed: int = 42, skip_invalid: bool = False
) -> tuple[list[list[dict]], list[str]]:
    """Load, validate and shuffle a mixture.

    ``seed`` draws each dataset's ``max_rows`` subset (``DatasetSpec.row_indices``) and shuffles the mixture.

    Returns:
        ``(conversations, sources)``: normalized conversations (see ``normalize_conversation``) in
        shuffled order, and the ``label`` of the dataset each came from.

    Raises:
        DataSourceError: a file is missing or a Hub dataset cannot be loaded.
        DataValidationError: a row is invalid (``check_training_conversation``) and ``skip_invalid`` is False;
            the message names the dataset, the position (a file's 1-based line, a Hub row index) and the
            reason. With ``skip_invalid``, invalid rows are counted and the first ``MAX_SKIPS_SHOWN``
            logged with their positions and reasons.
    """
    items: list[tuple[list[dict], str]] = []
    for spec in specs:
        raw = spec.load(data_dir)
        kept = spec.row_indices(len(raw), seed)
        valid, skipped = [], []
        for row in kept:  # row: the index in the source; position() names its file line or Hub row index
            try:
                valid.append(check_training_conversation(raw[row]))
            except ConversationError as e:
                if not skip_invalid:
                    raise DataValidationError(
                        f"invalid row: {e}; dataset {spec.label}, {_position(spec, raw, row)}; "
                        "fix the row, or set `skip_invalid: true` to skip invalid rows"
                    ) from None
                skipped.append(f"{_position(spec, raw, row)}: {e}")
        if skipped:
            more = f"; ... ({len(skipped) - MAX_SKIPS_SHOWN} more)" if len(skipped) > MAX_SKIPS_SHOWN else ""
            logger.warning("dataset %s: skipped %d invalid rows of %d (skip_invalid): %s%s", spec.label, len(skipped),
                           len(kept), "; ".join(skipped[:MAX_SKIPS_SHOWN]), more)
        if not valid:
            raise DataValidationError(f"no valid conversations in dataset {spec.label} ({len(kept)} rows, "
                                      f"{len(skipped)} invalid); check its `path:`/`name:` and the rows' format")
        items += [(c, spec.label) for c in valid] * spec.epochs
        logger.info("dataset %s: %d conversations x %d epochs", spec.label, len(valid), spec.epochs)
    random.Random(seed).shuffle(items)
    return [c for c, _ in items], [s for _, s in items]


def render_dataset(renderer: ChatRenderer, conversations: list, sources: list[str], chunk: int = 1000,
                   name: str = "train"):
    """Render normalized conversations into a pre-tokenized ``datasets.Dataset``.

    Returns:
        Dataset with ``input_ids`` (list[int]), ``assistant_masks`` (list[int], 0/1) and ``source``.
        ``renderer.stats`` then holds the truncation counts of this call, per source in ``by_source``.
    """
    import datasets

    renderer.stats = RenderStats()
    ids, masks = [], []
    for i in range(0, len(conversations), chunk):
        batch = renderer.render_batch(conversations[i : i + chunk], normalized=True, sources=sources[i : i + chunk])
        for x, m in batch:
            ids.append(x)
            masks.append(m)
    renderer.log_stats(name)
    return datasets.Dataset.from_dict({"input_ids": ids, "assistant_masks": masks, "source": list(sources)})


def supervision_stats(dataset, render_stats: RenderStats | None = None) -> dict[str, dict[str, float]]:
    """Per source: conversations, tokens, supervised tokens, their ratio, and mean/max length (tokens).

    Args:
        dataset: a rendered dataset (``render_dataset``).
        render_stats: the renderer's stats of that rendering; adds ``truncated`` and ``tokens_dropped``.
    """
    acc = defaultdict(lambda: {"conversations": 0, "tokens": 0, "supervised": 0, "max_len": 0})
    cols = dataset[:]  # every column read once into lists
    for ids, mask, src in zip(cols["input_ids"], cols["assistant_masks"], cols["source"]):
        a = acc[src]
        a["conversations"] += 1
        a["tokens"] += len(ids)
        a["supervised"] += sum(mask)
        a["max_len"] = max(a["max_len"], len(ids))
    out = {}
    for src, a in sorted(acc.items()):
        out[src] = {
            **a,
            "supervised_ratio": a["supervised"] / max(a["tokens"], 1),
            "mean_len": a["tokens"] / max(a["conversations"], 1),
        }
        if render_stats is not None:
            per = render_stats.by_source.get(src, {})
            out[src]["truncated"] = per.get("truncated", 0)
            out[src]["tokens_dropped"] = per.get("tokens_dropped", 0)
    return out
