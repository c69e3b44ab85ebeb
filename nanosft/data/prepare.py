"""Render and pack a mixture once, to disk; every rank and every restart memory-maps the result.

    python -m nanosft.prepare --config configs/d20.yaml [--set key=value ...]

builds the cache ahead of a (multi-node) launch; ``nanosft.train`` calls the same ``prepare_rows``
under ``main_process_first``, so the main process of each node builds (or finds) the cache and the
other ranks only memory-map it.

Steps of a build (``prepare_rows``), in memory flat in the dataset size but for a few numbers per
conversation: JSON-lines files and Hub datasets are read row by row (``JsonlLines``, ``DatasetRows``);
the other loaders (task files, .json arrays, Parquet/CSV) return one dataset's rows as a list, released
row by row as they are rendered:

1. One dataset at a time, its valid conversations in chunks of 1,000 (``iter_conversations``: the
   validation and errors of ``load_mixture``). Each distinct conversation is rendered once, in full
   (``ChatRenderer.render_batch``), optionally in ``num_proc`` forked workers, with a progress bar, and
   appended to flat token and mask files (int32, int8) in the build folder.
2. The mixture is a permutation of indices into those files: each dataset's ``epoch_indices``, shuffled
   by ``mixture_order`` (the same order as ``load_mixture``'s). Truncation is a shorter length (the
   renderer cuts a prefix); per-source supervision stats and truncation counts are computed per entry.
3. The packing plan is computed from the array of lengths: ``packing_strategy="nanochat"`` is the
   buffered best-fit of today (``pack_best_fit``, identical rows), ``"bfd"`` is best-fit decreasing over
   the whole dataset (``pack_best_fit_decreasing``).
4. Packed rows are gathered from the memory-mapped flat files a few thousand rows at a time and written
   as one Arrow IPC file: ``input_ids`` list<int32>, ``assistant_masks`` list<int8>, ``seq_lengths``
   list<int32>. ``datasets.Dataset.from_file`` memory-maps it.

Over-long conversations (more than ``max_length + 1`` tokens): ``overlong="truncate"`` cuts them
(nanochat, counted in ``truncated``/``tokens_dropped``); ``"split"`` cuts them into continuation pieces
of at most ``max_length + 1`` tokens, each starting with the last token of the previous piece with its
mask cleared (context only), so every supervised token stays a target exactly once
(counted in ``split``/``continuation_rows``).

Cache key: a SHA-256 fingerprint of everything that changes the rows (``fingerprint_inputs``): the
dataset specs, the contents of the local files they read or their Hub revisions, the tokenizer, the
chat-format version, ``max_length``, the packing options, the seed and ``skip_invalid``. A build is
written into a ``.tmp-<name>-<fingerprint>-<host>-<pid>-*`` folder and renamed into place once complete
(atomic; a killed build's folder is removed by the next build on that host), with ``meta.json``
(fingerprint inputs, stats, row count, file size, CRC-32 of the Arrow file); a cache folder whose meta
or Arrow file does not check out (size, checksum, opening, row count) is rebuilt. Every hit or miss is
logged with its reason.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from itertools import chain, islice

import datasets
import numpy as np
import pyarrow as pa
from datasets.fingerprint import Hasher
from datasets.utils.tqdm import tqdm
from huggingface_hub import HfApi

from ..files import write_json_atomic
from ..format.template import CHAT_FORMAT_VERSION, ChatRenderer, RenderStats
from ..format.tokenizer import ASSISTANT_END
from .mixture import DataValidationError, DatasetSpec, iter_conversations, mixture_order
from .packing import pack_best_fit, pack_best_fit_decreasing
from .tasks.registry import REGISTRY

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # layout of a cache folder; bump when it changes (2: arrow_crc32 in meta.json)
PACKING_STRATEGIES = ("nanochat", "bfd")
OVERLONG_MODES = ("truncate", "split")
ROWS_FILE, META_FILE = "rows.arrow", "meta.json"


# ----------------------------------------------------------------------------------------------------
# fingerprint

def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def crc32_file(path: str, block: int = 8 << 20) -> str:
    """CRC-32 (``zlib.crc32``) of a file, read in ``block``-byte chunks, as 8 hex digits.

    A corruption check, not a cryptographic hash: it catches any burst error of up to 32 bits and misses a
    random corruption with probability 2**-32, at several times the speed of ``hashlib.blake2b``, so a cache
    hit can afford it on every start.
    """
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _sha256_tree(path: str) -> str:
    """SHA-256 over the relative paths and contents of every file under ``path`` (sorted)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0" + _sha256_file(full).encode())
    return h.hexdigest()


def _hub_revision(repo_id: str) -> str:
    """The current commit of a Hub dataset, or ``"unresolved (...)"`` offline (then Hub changes go unseen)."""
    if any(os.environ.get(v, "0") not in ("0", "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return "unresolved (offline)"
    try:
        return HfApi().dataset_info(repo_id, timeout=10).sha or "unresolved (no sha)"
    except Exception as e:  # network or auth: the cache still works, keyed without the revision
        return f"unresolved ({type(e).__name__})"


def source_inputs(spec: DatasetSpec, data_dir: str | None) -> dict:
    """What one dataset's rows depend on: its spec, the SHA-256 of the local files it reads, its Hub revision."""
    out: dict = {"spec": asdict(spec)}
    task = REGISTRY[spec.name]  # its local folder (none: the whole data_dir) and Hub dataset
    if spec.path:
        out["path_sha256"] = _sha256_file(spec.path) if os.path.isfile(spec.path) else "missing"
    elif data_dir:
        folder = os.path.join(data_dir, task.local_folder or "")
        if os.path.isdir(folder):
            out["data_sha256"] = _sha256_tree(folder)
    always_hub = task.hub_only or (spec.name == "mmlu" and spec.split == "auxiliary_train")
    hub_id = spec.hub_id or task.hub_id
    if hub_id and (data_dir is None or always_hub):
        out["hub_revision"] = {hub_id: _hub_revision(hub_id)}
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's full serialization (vocab, merges, added tokens) and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: datasets' pickling hash
        h.update(Hasher.hash(tokenizer).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()


def fingerprint_inputs(specs: list[DatasetSpec], data_dir: str | None, tokenizer, max_length: int,
                       packing_strategy: str = "nanochat", buffer_size: int = 100, overlong: str = "truncate",
                       seed: int = 42, skip_invalid: bool = False) -> dict:
    """Everything that changes the packed rows, as a JSON-able dict (``fingerprint`` hashes it)."""
    return {
        "cache_format": CACHE_FORMAT,
        "chat_format_version": CHAT_FORMAT_VERSION,
        "sources": [source_inputs(s, data_dir) for s in specs],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "packing_strategy": packing_strategy,
        "pack_buffer_size": buffer_size if packing_strategy == "nanochat" else None,
        "overlong": overlong,
        "seed": seed,
        "skip_invalid": skip_invalid,
    }


def fingerprint(inputs: dict) -> str:
    """First 16 hex digits of the SHA-256 of ``inputs`` as canonical JSON."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# checks on rendered conversations

def check_supervision(rendered, tokenizer, first: int = 256) -> None:
    """Refuse to train when the first conversations supervise nothing or never ``<|assistant_end|>``.

    Args:
        rendered: a dataset (or dict of lists) with ``input_ids`` and ``assistant_masks``, in training order.
        first: how many leading conversations to check (the first batches).

    Raises:
        DataValidationError: naming what is missing and what to check (template, masks).
    """
    end_id = tokenizer.convert_tokens_to_ids(ASSISTANT_END)
    n = min(first, len(rendered["input_ids"]))
    sup = end = 0
    for ids, mask in zip(rendered["input_ids"][:n], rendered["assistant_masks"][:n]):
        sup += sum(mask)
        end += sum(1 for t, m in zip(ids, mask) if m and t == end_id)
    if sup == 0:
        raise DataValidationError(f"no supervised token in the first {n} conversations: check the datasets' "
                                  "assistant turns")
    if end == 0:
        raise DataValidationError(f"no supervised <|assistant_end|> in the first {n} conversations: the model "
                                  "would never learn to stop; check the chat format (assistant masks), or raise "
                                  "`max_length` if truncation cut the conversations' ends")


# ----------------------------------------------------------------------------------------------------
# build

_WORK: dict = {}  # renderer, keep: set before forking the render workers


def _render_chunk(convs: list) -> tuple:
    """Render normalized conversations in full: flat int32 ids, int8 masks, int64 lengths, and int64 supervised
    tokens within the first ``_WORK["keep"]`` tokens (what truncation keeps)."""
    renderer, keep = _WORK["renderer"], _WORK["keep"]
    out = renderer.render_batch(convs, normalized=True)
    lens = np.fromiter((len(x) for x, _ in out), dtype=np.int64, count=len(out))
    total = int(lens.sum())
    ids = np.fromiter(chain.from_iterable(x for x, _ in out), dtype=np.int32, count=total)
    mask = np.fromiter(chain.from_iterable(m for _, m in out), dtype=np.int8, count=total)
    sup = np.fromiter((sum(m[:keep]) for _, m in out), dtype=np.int64, count=len(out))
    return ids, mask, lens, sup


def _check_head(order, lengths, starts, ids_file, mask_file, tokenizer, first: int = 256) -> None:
    """``check_supervision`` on the first ``first`` mixture entries, read from the flat token/mask files."""
    n = min(first, len(order))
    if not n:
        return
    ids_mm, mask_mm = np.memmap(ids_file, dtype=np.int32, mode="r"), np.memmap(mask_file, dtype=np.int8, mode="r")
    spans = list(zip(starts[order[:n]].tolist(), lengths[:n].tolist()))
    head = {"input_ids": [ids_mm[a:a + k].tolist() for a, k in spans],
            "assistant_masks": [mask_mm[a:a + k].tolist() for a, k in spans]}
    del ids_mm, mask_mm
    check_supervision(head, tokenizer, first)


def document_pieces(lengths: np.ndarray, capacity: int, split: bool):
    """Documents to pack: (conversation index, offset in it, length, is a continuation) as arrays.

    Without ``split`` each conversation is one document. With it, a conversation of L > capacity tokens
    becomes ceil((L - 1) / (capacity - 1)) pieces starting every capacity - 1 tokens (one token overlap).
    """
    n = len(lengths)
    counts = np.ones(n, dtype=np.int64)
    if split:
        over = lengths > capacity
        counts[over] = -(-(lengths[over] - 1) // (capacity - 1))
    conv = np.repeat(np.arange(n, dtype=np.int64), counts)
    k = np.arange(len(conv), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    offset = k * (capacity - 1)
    length = np.minimum(lengths[conv] - offset, capacity) if split else lengths[conv]
    return conv, offset, length, k > 0


def _write_rows(path: str, rows: list[list[int]], doc_start: np.ndarray, doc_len: np.ndarray, doc_cont: np.ndarray,
                ids_file: str, mask_file: str, block: int = 2048) -> None:
    """Gather packed rows from the flat token/mask files and write them as an Arrow IPC stream.

    Documents are read with ``os.pread`` (no memory map: a mapping's fault-around would count most of the
    flat files' pages in this process's RSS while a block of randomly placed documents is gathered).
    """
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("assistant_masks", pa.list_(pa.int8())),
                        ("seq_lengths", pa.list_(pa.int32()))])
    fd_ids, fd_mask = os.open(ids_file, os.O_RDONLY), os.open(mask_file, os.O_RDONLY)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for a in range(0, len(rows), block):
                part = rows[a:a + block]
                docs = np.fromiter(chain.from_iterable(part), dtype=np.int64)
                per_row = np.fromiter((len(r) for r in part), dtype=np.int64, count=len(part))
                dl, ds = doc_len[docs], doc_start[docs]
                off = np.cumsum(dl) - dl  # start of each document in this block's flat values
                pairs = list(zip(ds.tolist(), dl.tolist()))
                vals = np.frombuffer(b"".join(os.pread(fd_ids, 4 * n, 4 * s) for s, n in pairs), dtype=np.int32)
                masks = np.frombuffer(b"".join(os.pread(fd_mask, n, s) for s, n in pairs), dtype=np.int8).copy()
                _write_block(writer, schema, vals, masks, off, dl, per_row, doc_cont[docs])
    finally:
        os.close(fd_ids)
        os.close(fd_mask)


def _write_block(writer, schema, vals, masks, off, dl, per_row, cont) -> None:
    """One record batch of packed rows: ``vals``/``masks`` flat over the block's documents (lengths ``dl``,
    starts ``off``), ``per_row`` documents a row, ``cont`` marks continuation pieces."""
    masks[off[cont]] = 0  # a continuation's first token is context only
    doc_offsets = np.concatenate([[0], np.cumsum(per_row)])
    row_tokens = np.add.reduceat(dl, doc_offsets[:-1]) if len(dl) else np.zeros(0, np.int64)
    tok_offsets = pa.array(np.concatenate([[0], np.cumsum(row_tokens)]).astype(np.int32))
    batch = pa.record_batch([
        pa.ListArray.from_arrays(tok_offsets, pa.array(vals, pa.int32())),
        pa.ListArray.from_arrays(tok_offsets, pa.array(masks, pa.int8())),
        pa.ListArray.from_arrays(pa.array(doc_offsets.astype(np.int32)), pa.array(dl.astype(np.int32))),
    ], schema=schema)
    writer.write_batch(batch)


def training_renderer(tokenizer, max_length: int, overlong: str) -> ChatRenderer:
    """The renderer of training rows: each conversation cut to ``max_length + 1`` tokens (T inputs + the last
    target) under ``overlong="truncate"``; whole under ``"split"`` (``document_pieces`` cuts it later)."""
    return ChatRenderer(tokenizer, max_tokens=max_length + 1 if overlong == "truncate" else None)


def _build(folder: str, specs, data_dir, tokenizer, *, max_length, packing_strategy, buffer_size, overlong, seed,
           skip_invalid, num_proc, name, check) -> dict:
    """Load, render and pack into ``folder`` (a fresh temp folder); returns the meta record (without inputs).

    One dataset at a time (``iter_conversations``, chunks of 1,000), each distinct conversation is rendered
    once, in full, and appended to flat token/mask files; the mixture (epochs, shuffle) is then a permutation
    of indices into those files (``mixture_entries``' order), truncation a shorter length.
    """
    t0 = time.perf_counter()
    capacity = max_length + 1
    truncate = overlong == "truncate"
    renderer = training_renderer(tokenizer, max_length, overlong)
    ids_file, mask_file = os.path.join(folder, "ids.bin"), os.path.join(folder, "mask.bin")
    _WORK.update(renderer=ChatRenderer(tokenizer), keep=capacity if truncate else None)
    workers = num_proc if num_proc and num_proc > 1 else 1
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    full_len, sup_kept, entries = [], [], []  # per distinct conversation; per dataset: its entries' global ids
    n_distinct, bar = 0, None
    try:
        with open(ids_file, "wb") as f_ids, open(mask_file, "wb") as f_mask:
            for spec in specs:
                first = n_distinct
                parts = iter_conversations(spec, data_dir, seed=seed, skip_invalid=skip_invalid)
                while True:
                    window = list(islice(parts, 2 * workers))  # bounded: a few chunks in flight
                    if not window:
                        break
                    if bar is None:  # opened once rows validate: an invalid first row leaves only its error line
                        bar = tqdm(desc=f"render {name}", unit="conv")
                    done = pool.map(_render_chunk, window) if pool else map(_render_chunk, window)
                    for ids, mask, lens, sup in done:
                        ids.tofile(f_ids)
                        mask.tofile(f_mask)
                        full_len.append(lens)
                        sup_kept.append(sup)
                        n_distinct += len(lens)
                        bar.update(len(lens))
                entries.append(first + np.asarray(spec.epoch_indices(n_distinct - first, seed), dtype=np.int64))
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
        _WORK.clear()
    t_load_render = time.perf_counter() - t0

    full_len = np.concatenate(full_len) if full_len else np.zeros(0, np.int64)
    sup_kept = np.concatenate(sup_kept) if sup_kept else np.zeros(0, np.int64)
    dist_start = np.cumsum(full_len) - full_len
    dataset_of = np.concatenate([np.full(len(e), d, dtype=np.int64) for d, e in enumerate(entries)])
    perm = np.asarray(mixture_order(len(dataset_of), seed), dtype=np.int64)
    order = np.concatenate(entries)[perm]  # mixture position -> distinct conversation
    dataset_of = dataset_of[perm]
    del perm, entries
    lengths_all = np.minimum(full_len[order], capacity) if truncate else full_len[order]
    if check:
        _check_head(order, lengths_all, dist_start, ids_file, mask_file, tokenizer)

    # truncation stats (RenderStats) and per-source supervision stats, per mixture entry
    labels = [s.label for s in specs]
    dropped = full_len[order] - lengths_all
    n_ds = len(specs)
    per_ds = {"conversations": np.bincount(dataset_of, minlength=n_ds),
              "tokens": np.bincount(dataset_of, weights=lengths_all, minlength=n_ds),
              "supervised": np.bincount(dataset_of, weights=sup_kept[order], minlength=n_ds),
              "truncated": np.bincount(dataset_of, weights=(dropped > 0).astype(np.int64), minlength=n_ds),
              "tokens_dropped": np.bincount(dataset_of, weights=dropped, minlength=n_ds)}
    max_len = np.zeros(n_ds, np.int64)
    np.maximum.at(max_len, dataset_of, lengths_all)
    render_stats = RenderStats(conversations=len(order), truncated=int((dropped > 0).sum()),
                               tokens_dropped=int(dropped.sum()))
    acc: dict[str, dict] = {}
    for d, src in enumerate(labels):
        a = acc.setdefault(src, {"conversations": 0, "tokens": 0, "supervised": 0, "max_len": 0})
        for k in ("conversations", "tokens", "supervised"):
            a[k] += int(per_ds[k][d])
        a["max_len"] = max(a["max_len"], int(max_len[d]))
        per = render_stats.by_source.setdefault(src, {"conversations": 0, "truncated": 0, "tokens_dropped": 0})
        per["conversations"] += int(per_ds["conversations"][d])
        per["truncated"] += int(per_ds["truncated"][d])
        per["tokens_dropped"] += int(per_ds["tokens_dropped"][d])
    acc = {src: a for src, a in acc.items() if a["conversations"]}
    del dropped, sup_kept
    renderer.stats = render_stats
    renderer.log_stats(name)

    conv_start = dist_start[order]
    del full_len, dist_start, order
    conv, offset, doc_len, doc_cont = document_pieces(lengths_all, capacity, overlong == "split")
    doc_start = conv_start[conv] + offset
    del conv_start
    plan_lengths = doc_len.tolist()
    if packing_strategy == "bfd":
        rows = pack_best_fit_decreasing(plan_lengths, capacity)
    else:
        rows = pack_best_fit(plan_lengths, capacity, buffer_size)
    path = os.path.join(folder, ROWS_FILE)
    _write_rows(path, rows, doc_start, doc_len, doc_cont, ids_file, mask_file)
    os.unlink(ids_file)
    os.unlink(mask_file)
    t_pack = time.perf_counter() - t0 - t_load_render

    # per-source stats: supervision_stats' keys + truncation (or split) counts
    split_per_src: dict[str, list[int]] = {}
    if overlong == "split":
        pieces = np.bincount(conv, minlength=len(lengths_all))
        n_split = np.bincount(dataset_of, weights=(pieces > 1).astype(np.int64), minlength=len(specs))
        n_cont = np.bincount(dataset_of, weights=pieces - 1, minlength=len(specs))
        for d, src in enumerate(labels):
            s = split_per_src.setdefault(src, [0, 0])
            s[0] += int(n_split[d])
            s[1] += int(n_cont[d])
    stats = {}
    for src, a in sorted(acc.items()):
        per = render_stats.by_source.get(src, {})
        stats[src] = {**a, "supervised_ratio": a["supervised"] / max(a["tokens"], 1),
                      "mean_len": a["tokens"] / max(a["conversations"], 1),
                      "truncated": per.get("truncated", 0), "tokens_dropped": per.get("tokens_dropped", 0),
                      "overlong": overlong}
        if overlong == "split":
            stats[src]["split"], stats[src]["continuation_rows"] = split_per_src.get(src, [0, 0])
    real = int(doc_len.sum()) - int(doc_cont.sum())  # overlap tokens of continuations counted once
    slots = len(rows) * capacity
    packing = {"strategy": packing_strategy, "rows": len(rows), "capacity": capacity,
               "documents": len(plan_lengths), "conversations": int(len(lengths_all)),
               "real_tokens": int(doc_len.sum()), "fill": int(doc_len.sum()) / max(slots, 1),
               "tokens_kept": real, "overlong": overlong, "truncated": render_stats.truncated,
               "tokens_dropped": render_stats.tokens_dropped,
               "split": sum(v[0] for v in split_per_src.values()),
               "continuation_rows": sum(v[1] for v in split_per_src.values()),
               "seconds": {"load_render": round(t_load_render, 2), "pack": round(t_pack, 2)}}
    logger.info("%s: packed %d documents into %d rows of %d tokens (%s): %.2f%% of slots real; load+render %.1f s, "
                "pack+write %.1f s", name, len(plan_lengths), len(rows), capacity, packing_strategy,
                100 * packing["fill"], t_load_render, t_pack)
    return {"num_rows": len(rows), "arrow_bytes": os.path.getsize(path), "arrow_crc32": crc32_file(path),
            "stats": stats, "packing": packing}


# ----------------------------------------------------------------------------------------------------
# cache

@dataclass
class PreparedRows:
    """A prepared (rendered + packed) mixture.

    Attributes:
        rows: memory-mapped ``datasets.Dataset`` with ``input_ids`` (list of int32), ``assistant_masks``
            (list of int8, 0/1) and ``seq_lengths`` (list of int32; the documents of the row), each row at
            most ``max_length + 1`` tokens.
        stats: per source: conversations, tokens, supervised, supervised_ratio, mean_len, max_len,
            truncated, tokens_dropped, overlong (+ split, continuation_rows with ``overlong="split"``).
        packing: rows, capacity, fill (real tokens / row slots), counts of truncated or split conversations.
        fingerprint: the cache key; path: the cache folder; status: "hit" or "built"; reason: why it was built.
    """

    rows: object
    stats: dict
    packing: dict
    fingerprint: str
    path: str
    status: str
    reason: str


def _check_cache(folder: str, fp: str):
    """``(dataset, meta)`` of a complete cache folder, or ``(None, reason)``."""
    meta_path, rows_path = os.path.join(folder, META_FILE), os.path.join(folder, ROWS_FILE)
    if not os.path.isdir(folder):
        return None, "no cache for this fingerprint"
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"corrupt cache ({META_FILE}: {type(e).__name__})"
    if meta.get("fingerprint") != fp or meta.get("inputs", {}).get("cache_format") != CACHE_FORMAT:
        return None, "corrupt cache (fingerprint or format mismatch in meta.json)"
    size = os.path.getsize(rows_path) if os.path.isfile(rows_path) else -1
    if size != meta.get("arrow_bytes"):
        return None, f"corrupt cache ({ROWS_FILE} has {size} bytes, meta.json says {meta.get('arrow_bytes')})"
    if crc32_file(rows_path) != meta.get("arrow_crc32"):
        return None, f"corrupt cache ({ROWS_FILE} checksum differs from meta.json's arrow_crc32)"
    try:
        ds = datasets.Dataset.from_file(rows_path)
    except Exception as e:  # a damaged IPC stream: pyarrow raises ArrowInvalid and friends
        return None, f"corrupt cache ({ROWS_FILE}: {type(e).__name__})"
    if len(ds) != meta.get("num_rows"):
        return None, f"corrupt cache ({len(ds)} rows, meta.json says {meta.get('num_rows')})"
    return ds, meta


def _changed_inputs(cache_dir: str, name: str, inputs: dict) -> str:
    """Which inputs differ from the most recent other cache of ``name`` (for the miss reason)."""
    metas = sorted(glob.glob(os.path.join(cache_dir, f"{name}-*", META_FILE)), key=os.path.getmtime)
    for path in reversed(metas):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)["inputs"]
        except (OSError, ValueError, KeyError):
            continue
        def canon(d, k):
            return json.dumps(d.get(k), sort_keys=True, default=str)

        changed = [k for k in sorted(set(old) | set(inputs)) if canon(old, k) != canon(inputs, k)]
        return f"inputs changed since {os.path.basename(os.path.dirname(path))}: {', '.join(changed) or 'none'}"
    return "no cache yet"


def _remove_dead_builds(prefix: str) -> None:
    """Remove temp folders ``<prefix><pid>-<random>`` of builds on this host whose process is gone."""
    for stale in glob.glob(prefix + "*"):
        try:
            pid = int(stale[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:  # killed mid-build
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):  # not ours to judge
            pass


def _commit(tmp: str, folder: str, fp: str) -> None:
    """Rename a finished build into place; a valid cache that appeared meanwhile (another node) wins."""
    if os.path.exists(folder):
        if _check_cache(folder, fp)[0] is not None:
            shutil.rmtree(tmp)
            return
        shutil.rmtree(folder)  # corrupt
    try:
        os.rename(tmp, folder)
    except OSError:  # lost a race to another builder of the same fingerprint
        if _check_cache(folder, fp)[0] is None:
            raise
        shutil.rmtree(tmp)


def prepare_rows(specs: list[DatasetSpec], data_dir: str | None, tokenizer, *, max_length: int, cache_dir: str,
                 packing_strategy: str = "nanochat", buffer_size: int = 100, overlong: str = "truncate",
                 seed: int = 42, skip_invalid: bool = False, num_proc: int | None = None, name: str = "train",
                 check: bool = True) -> PreparedRows:
    """The packed rows of a mixture, from the cache when its fingerprint matches, else built and cached.

    Args:
        specs, data_dir, seed, skip_invalid: the mixture (``load_mixture``).
        tokenizer: an HF fast tokenizer with the nanochat special tokens (``ChatRenderer``).
        max_length: T; rows hold T + 1 tokens.
        cache_dir: folder of the cache (created); one sub-folder ``<name>-<fingerprint>`` per build.
        packing_strategy: "nanochat" (buffered best-fit, ``buffer_size`` conversations) or "bfd".
        overlong: "truncate" or "split" conversations longer than T + 1 tokens.
        num_proc: forked render workers (None or 1: in this process).
        name: "train" or "eval", in folder names and logs.
        check: run ``check_supervision`` on the first 256 conversations of a build.

    Returns:
        ``PreparedRows``.

    Raises:
        ValueError: unknown ``packing_strategy`` or ``overlong``; from ``check_supervision``.
        DataSourceError, DataValidationError: from ``load_mixture`` (on a build).
    """
    if packing_strategy not in PACKING_STRATEGIES:
        raise ValueError(f"packing_strategy must be one of {PACKING_STRATEGIES}, got {packing_strategy!r}")
    if overlong not in OVERLONG_MODES:
        raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
    inputs = fingerprint_inputs(specs, data_dir, tokenizer, max_length, packing_strategy, buffer_size, overlong,
                                seed, skip_invalid)
    fp = fingerprint(inputs)
    folder = os.path.join(cache_dir, f"{name}-{fp}")
    ds, meta = _check_cache(folder, fp)
    if ds is not None:
        logger.info("%s data: cache hit %s (%d rows)", name, folder, len(ds))
        return PreparedRows(ds, meta["stats"], meta["packing"], fp, folder, "hit", "")
    reason = meta if meta != "no cache for this fingerprint" else _changed_inputs(cache_dir, name, inputs)
    logger.info("%s data: cache miss (%s); building %s", name, reason, folder)
    created = _missing_folders(cache_dir)  # removed again if the build fails: a bad input leaves nothing behind
    os.makedirs(cache_dir, exist_ok=True)
    prefix = os.path.join(cache_dir, f".tmp-{name}-{fp}-{socket.gethostname()}-")
    _remove_dead_builds(prefix)
    tmp = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        record = _build(tmp, specs, data_dir, tokenizer, max_length=max_length, packing_strategy=packing_strategy,
                        buffer_size=buffer_size, overlong=overlong, seed=seed, skip_invalid=skip_invalid,
                        num_proc=num_proc, name=name, check=check)
        record = {"fingerprint": fp, "inputs": inputs, **record}
        write_json_atomic(os.path.join(tmp, META_FILE), record)
        _commit(tmp, folder, fp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # deepest first; stops at the first folder another process has written into
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
    ds = datasets.Dataset.from_file(os.path.join(folder, ROWS_FILE))
    return PreparedRows(ds, record["stats"], record["packing"], fp, folder, "built", reason)


def _missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    out, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


def default_cache_dir(cfg) -> str:
    """``cfg.data_cache_dir``, else ``<output_dir>/_data_cache`` ("_*": never uploaded by the Hub push)."""
    return cfg.data_cache_dir or os.path.join(cfg.output_dir, "_data_cache")


def prepare_from_config(cfg, tokenizer, eval_split: bool = True) -> tuple[PreparedRows, PreparedRows | None]:
    """``prepare_rows`` for ``cfg.datasets`` (and ``cfg.eval_datasets``) with the config's options."""
    kw = dict(max_length=cfg.max_length, cache_dir=default_cache_dir(cfg), packing_strategy=cfg.packing_strategy,
              buffer_size=cfg.pack_buffer_size, overlong=cfg.overlong, seed=cfg.mixture_seed,
              skip_invalid=cfg.skip_invalid, num_proc=cfg.dataset_num_proc)
    train = prepare_rows([DatasetSpec.from_dict(d) for d in cfg.datasets], cfg.data_dir, tokenizer, name="train", **kw)
    evaluation = None
    if eval_split and cfg.eval_datasets:
        evaluation = prepare_rows([DatasetSpec.from_dict(d) for d in cfg.eval_datasets], cfg.data_dir, tokenizer,
                                  name="eval", check=False, **kw)
    return train, evaluation
