"""The training mixture: named datasets -> validated conversations -> shuffled -> rendered tokens.

A mixture is a list of ``DatasetSpec`` (one YAML entry each). Each spec names a task of ``DATASETS``
(local ``data_dir`` or the Hugging Face Hub), may repeat for several ``epochs`` (nanochat repeats GSM8K
4x and MMLU 3x; a fraction adds a seeded random part of the rows) and may be capped by ``max_rows``.
User files (``files``) and Hub datasets (``hub``) are read in any ``format:`` of ``nanosft.data.formats``
(messages, sharegpt, alpaca, openai), and any dataset may carry a ``system_prompt:``. Everything is
loaded, validated and rendered before the model is built, so a missing file or a malformed row fails in
seconds, not after a model download. The mixture is shuffled once with ``random.Random(seed)``
(nanochat's TaskMixture, seed 42), then rendered with one batched encode per 1,000 conversations
(``ChatRenderer.render_batch``). ``iter_conversations`` streams one dataset's valid conversations (what
``nanosft.prepare`` renders, each distinct conversation once) and ``mixture_entries`` gives the shuffled
``(dataset, conversation)`` order; ``load_mixture`` holds the whole mixture in memory, for small uses.

The result is a ``datasets.Dataset`` with columns ``input_ids``, ``assistant_masks`` (TRL's name for the
assistant mask) and ``source``; TRL treats it as pre-tokenized.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields

import datasets

from ..errors import ConfigError, DataValidationError
from ..format.template import ChatRenderer, ConversationError, RenderStats, normalize_conversation
from .formats import FIELD_KEYS, FORMATS, converter
from .tasks import InvalidLine, Rows, position
from .tasks.registry import REGISTRY

logger = logging.getLogger(__name__)


# The datasets a mixture may name: the registry's tasks that give training conversations.
DATASETS = {name: task for name, task in REGISTRY.items() if task.conversations is not None}
# Datasets whose rows are in a user-chosen `format:` (the others yield nanochat messages).
FORMAT_LOADERS = tuple(name for name, task in DATASETS.items() if task.formatted)


@dataclass
class DatasetSpec:
    """One entry of the mixture.

    Attributes:
        name: a key of ``DATASETS`` (``nanosft.data.tasks.registry.REGISTRY``).
        split: dataset split ("train", "test").
        epochs: how many times the dataset enters the mixture: an int >= 1, or a fraction, where 2.5 is every
            row twice plus a seeded random half of them (``epoch_indices``), 0.3 a seeded random 30%.
        max_rows: keep a seeded random subset of N rows, in source order, before repetition (None keeps
            all). Random, not the first N: local MMLU files are sorted by subject, and MMLU val's first 160
            rows (11 subjects) answer "D" 33% of the time, which a short SFT learns as a prior.
        size: number of synthetic examples (spellingbee, simplespelling).
        subset: loader-specific subset (gpteacher: codegen/roleplay/toolformer; hub: config name).
        path: for ``files``: a .jsonl, .json (array), .parquet or .csv file, a glob, or a list of them (also
            overrides the identity file).
        hub_id: dataset id for ``hub``.
        format: row format of ``files`` / ``hub`` datasets, a key of ``nanosft.data.formats.FORMATS``.
        messages_field, role_field, content_field: rename the fields the format reads (e.g. ``conversations``,
            ``from``, ``value`` for sharegpt).
        role_map: source role name -> system/user/assistant, over the format's own names.
        system_prompt: a system message for every conversation of this dataset that has none (merged into
            the first user turn, as nanochat does).
    """

    name: str
    split: str = "train"
    epochs: int | float = 1
    max_rows: int | None = None
    size: int | None = None
    subset: str | None = None
    path: str | list | None = None
    hub_id: str | None = None
    format: str = "messages"
    messages_field: str | None = None
    role_field: str | None = None
    content_field: str | None = None
    role_map: dict | None = None
    system_prompt: str | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "datasets") -> DatasetSpec:
        """Build from a YAML mapping; unknown keys, unknown names and bad types raise ``ConfigError``."""
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"{where}: each dataset needs a `name:` (one of {sorted(DATASETS)}), got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for dataset {d['name']!r}; allowed: {sorted(known)}")
        if d["name"] not in DATASETS:
            raise ConfigError(f"{where}: unknown dataset name {d['name']!r}; known: {sorted(DATASETS)}")
        name = d["name"]
        for key in ("max_rows", "size"):
            if d.get(key) is not None and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
                raise ConfigError(f"{where}: `{key}` of dataset {name!r} must be a positive integer, got {d[key]!r}")
        epochs = d.get("epochs", 1)
        if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not 0 < epochs < float("inf"):
            raise ConfigError(f"{where}: `epochs` of dataset {name!r} must be a positive number (2, 0.5, 1.5), "
                             f"got {epochs!r}")
        for key in ("format", "system_prompt", *FIELD_KEYS):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ConfigError(f"{where}: `{key}` of dataset {name!r} must be a string, got {d[key]!r}")
        path = d.get("path")
        if path is not None and not (isinstance(path, str) or (
                isinstance(path, list) and path and all(isinstance(p, str) for p in path))):
            raise ConfigError(f"{where}: `path` of dataset {name!r} must be a file, a glob or a list of them, "
                             f"got {path!r}")
        role_map = d.get("role_map")
        if role_map is not None and not (isinstance(role_map, dict) and all(isinstance(k, str) for k in role_map)):
            raise ConfigError(f"{where}: `role_map` of dataset {name!r} must map role names to system/user/assistant")
        options = [k for k in ("role_map", *FIELD_KEYS) if d.get(k) is not None]
        options += ["path"] if isinstance(path, list) else []
        if name not in FORMAT_LOADERS and (options or d.get("format", "messages") != "messages"):
            raise ConfigError(f"{where}: `format`, {list(FIELD_KEYS)}, `role_map` and a list `path` apply to "
                              f"datasets {list(FORMAT_LOADERS)}, not {name!r}")
        spec = cls(**d)
        try:
            spec.converter
        except ValueError as e:
            raise ConfigError(f"{where}: dataset {name!r}: {e}") from None
        return spec

    @functools.cached_property
    def converter(self):
        """Row -> messages for this dataset's ``format``, field names, ``role_map`` and ``system_prompt``
        (``nanosft.data.formats.converter``); raises ``ValueError`` for an unknown format, field or role."""
        return converter(self.format, self.field_names, self.role_map, self.system_prompt)

    @property
    def field_names(self) -> dict:
        """The format's field names renamed by ``messages_field`` / ``role_field`` / ``content_field``."""
        return {FIELD_KEYS[k]: getattr(self, k) for k in FIELD_KEYS if getattr(self, k)}

    @property
    def label(self) -> str:
        """A readable name for logs and errors, e.g. ``gsm8k[train]``."""
        extra = self.subset or self.hub_id or (self.path if not isinstance(self.path, list) else "+".join(self.path))
        return f"{self.name}{'/' + extra if extra else ''}[{self.split}]"

    def load(self, data_dir: str | None) -> list:
        """All raw conversations of this dataset (one epoch; ``max_rows`` is applied by ``row_indices``)."""
        kwargs = {k: getattr(self, k) for k in ("size", "subset", "path", "hub_id") if getattr(self, k)}
        if DATASETS[self.name].hub_only:
            kwargs["columns"] = list({**FORMATS[self.format].fields, **self.field_names}.values())
        return DATASETS[self.name].conversations(split=self.split, data_dir=data_dir, **kwargs)

    def row_indices(self, num_rows: int, seed: int) -> list[int]:
        """The source rows kept: all of them, or ``max_rows`` drawn with ``random.Random(f"{seed}:{label}")``.

        Sorted (source order), deterministic across processes and runs, and independent of the other
        datasets of the mixture.
        """
        if not self.max_rows or self.max_rows >= num_rows:
            return list(range(num_rows))
        return sorted(random.Random(f"{seed}:{self.label}").sample(range(num_rows), self.max_rows))

    def epoch_indices(self, num_rows: int, seed: int) -> list[int]:
        """Indices into this dataset's ``num_rows`` valid conversations, one per mixture entry.

        ``int(epochs)`` full passes, then ``round(frac * num_rows)`` rows (at least 1 when ``epochs < 1``) drawn
        without replacement with ``random.Random(f"{seed}:{label}:epochs")``, in source order: reproducible
        for a seed, independent of the other datasets, and a different subset for another seed.
        """
        whole = int(self.epochs)
        extra = round((self.epochs - whole) * num_rows)
        if whole == 0:
            extra = max(extra, 1)
        picked = random.Random(f"{seed}:{self.label}:epochs").sample(range(num_rows), min(extra, num_rows))
        return list(range(num_rows)) * whole + sorted(picked)


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
    if isinstance(raw, Rows) and raw.segments:
        source, where = raw.locate(row)
        return where if source and source in spec.label else f"{source}, {where}"
    return position(raw, row)


def iter_conversations(spec: DatasetSpec, data_dir: str | None, seed: int = 42, skip_invalid: bool = False,
                       chunk: int = 1000) -> Iterator[list[list[dict]]]:
    """The valid, normalized conversations of one dataset (one epoch, ``max_rows`` applied), in source order,
    in lists of up to ``chunk``.

    Streaming: each raw row is released once it is converted (when the loader returned a list), so besides
    the loader's own rows only one chunk of normalized conversations is alive at a time.

    Raises:
        DataSourceError: from the loader (a missing file, an unloadable Hub dataset).
        DataValidationError: as ``load_mixture`` (an invalid row without ``skip_invalid``, naming the dataset
            and the row's 1-based line / row or Hub row index; no valid row at all).
    """
    raw = spec.load(data_dir)
    kept = spec.row_indices(len(raw), seed)
    to_messages = spec.converter
    release = type(raw) in (list, Rows)  # a LazyRows holds nothing to release
    valid, skipped, n_valid = [], [], 0
    for row in kept:  # row: the index in the source
        try:
            r = raw[row]
            valid.append(check_training_conversation(r if isinstance(r, InvalidLine) else to_messages(r)))
        except ConversationError as e:
            if not skip_invalid:
                raise DataValidationError(
                    f"invalid row: {e}; dataset {spec.label}, {_position(spec, raw, row)}; "
                    "fix the row, or set `skip_invalid: true` to skip invalid rows"
                ) from None
            skipped.append(f"{_position(spec, raw, row)}: {e}")
        if release:
            raw[row] = None  # row indices are distinct: never read again
        if len(valid) == chunk:
            n_valid += len(valid)
            yield valid
            valid = []
    if valid:
        n_valid += len(valid)
        yield valid
    if skipped:
        more = f"; ... ({len(skipped) - MAX_SKIPS_SHOWN} more)" if len(skipped) > MAX_SKIPS_SHOWN else ""
        logger.warning("dataset %s: skipped %d invalid rows of %d (skip_invalid): %s%s", spec.label, len(skipped),
                       len(kept), "; ".join(skipped[:MAX_SKIPS_SHOWN]), more)
    if not n_valid:
        raise DataValidationError(f"no valid conversations in dataset {spec.label} ({len(kept)} rows, "
                                  f"{len(skipped)} invalid); check its `path:`/`name:` and the rows' format")
    logger.info("dataset %s: %d conversations x %s epochs", spec.label, n_valid, spec.epochs)


def mixture_order(n: int, seed: int) -> list[int]:
    """The shuffle of a mixture of ``n`` entries: position j of the mixture holds entry ``order[j]``.

    ``random.Random(seed).shuffle`` (nanochat's TaskMixture, ``nanochat/tasks/common.py``, seed 42) draws
    its swaps from ``n`` alone, so shuffling ``range(n)`` and indexing gives the same order as shuffling
    the entries themselves.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def mixture_entries(specs: list[DatasetSpec], counts: list[int], seed: int) -> list[tuple[int, int]]:
    """``(dataset index, conversation index)`` of every mixture entry, in shuffled order.

    Args:
        counts: the number of valid conversations of each dataset (``iter_conversations``).
    """
    items = [(d, i) for d, spec in enumerate(specs) for i in spec.epoch_indices(counts[d], seed)]
    return [items[k] for k in mixture_order(len(items), seed)]


def load_mixture(
    specs: list[DatasetSpec], data_dir: str | None, seed: int = 42, skip_invalid: bool = False
) -> tuple[list[list[dict]], list[str]]:
    """Load, validate and shuffle a mixture (``iter_conversations`` per dataset, then ``mixture_entries``).

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
    per_dataset = [[c for part in iter_conversations(spec, data_dir, seed, skip_invalid) for c in part]
                   for spec in specs]
    entries = mixture_entries(specs, [len(v) for v in per_dataset], seed)
    return [per_dataset[d][i] for d, i in entries], [specs[d].label for d, _ in entries]


def render_dataset(renderer: ChatRenderer, conversations: list, sources: list[str], chunk: int = 1000,
                   name: str = "train"):
    """Render normalized conversations into a pre-tokenized ``datasets.Dataset``.

    Returns:
        Dataset with ``input_ids`` (list[int]), ``assistant_masks`` (list[int], 0/1) and ``source``.
        ``renderer.stats`` then holds the truncation counts of this call, per source in ``by_source``.
    """
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
