"""BOS-aligned best-fit packing (nanochat/scripts/chat_sft.py's SFT data loader), HF-native.

Each row has capacity T+1 tokens. A buffer holds up to 100 rendered conversations; while the row has
room, the longest buffered conversation that fits the remaining space is appended whole; when none
fits, the rest of the row is padding whose targets are ignored. Every conversation starts with BOS, so
every row starts with BOS; nothing is ever cropped (conversations longer than a row are truncated at
render time, counted and logged). inputs = row[:-1], targets = row[1:].

Trade-off in numbers (``bench/packing.py``, real mix, nanochat tokenizer): best-fit keeps >= 99.5% of
slots real at T=2048, against ~40-60% for pad-to-longest; TRL's ``bfd`` packs tighter but crops long
conversations (it dropped 2.3% of supervised tokens at T=512, ``bench/packing.py``).

HF integration: the packing *plan* is computed once, deterministically (``pack_best_fit``), and the
packed rows become a map-style ``datasets.Dataset``. The Trainer's own sampler and accelerate's
dataloader sharding then give every rank a disjoint shard of rows, epochs end when every conversation
was consumed, and ``resume_from_checkpoint`` replays the exact batch order (skip_first_batches), with
no custom dataloader. ``PackedCollator`` stacks rows into fixed ``[B, T]`` tensors.

Attention: ``document`` (default) restarts ``position_ids`` at 0 for every conversation and sends no
attention mask, which transformers' sdpa/eager paths turn into a block-diagonal causal mask
(``masking_utils.find_packed_sequence_indices``); flash attention gets ``cu_seq_lens`` on a flattened
``[1, B*T]`` batch. ``causal`` is nanochat's behaviour: plain causal attention across the whole row.
"""

from __future__ import annotations

import bisect
import logging
from itertools import chain

import datasets
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # target the loss skips: torch.nn.functional.cross_entropy's default ignore_index


def _check_lengths(lengths: list[int], capacity: int) -> None:
    """Raise ValueError naming the first conversation that is empty or longer than a row."""
    for i, n in enumerate(lengths):
        if n > capacity or n < 1:
            raise ValueError(
                f"conversation {i} has {n} tokens; rows hold 1..{capacity}. Render with max_tokens <= T+1 "
                "(NanoSFTConfig.max_length + 1) so that every conversation fits a row."
            )


def pack_best_fit(lengths: list[int], capacity: int, buffer_size: int = 100) -> list[list[int]]:
    """Plan BOS-aligned best-fit rows over a stream of conversations.

    Args:
        lengths: token count of each conversation, in stream order.
        capacity: tokens per row, T + 1.
        buffer_size: conversations held for the best-fit choice (nanochat: 100).

    Returns:
        rows, each a list of conversation indices; every index appears exactly once. Among buffered
        conversations of equal length the earliest is taken.

    Raises:
        ValueError: a conversation is longer than ``capacity`` (truncate at render time) or empty.
    """
    _check_lengths(lengths, capacity)
    buffer: list[tuple[int, int]] = []  # sorted (length, -stream_index)
    stream = iter(range(len(lengths)))
    exhausted = False
    rows: list[list[int]] = []

    def refill():
        nonlocal exhausted
        while not exhausted and len(buffer) < buffer_size:
            i = next(stream, None)
            if i is None:
                exhausted = True
            else:
                bisect.insort(buffer, (lengths[i], -i))

    refill()
    while buffer:
        row, room = [], capacity
        while True:
            refill()
            # largest length <= room; ties: largest -i, i.e. the earliest conversation
            k = bisect.bisect_right(buffer, (room, 1)) - 1
            if k < 0:
                break
            n, neg_i = buffer.pop(k)
            row.append(-neg_i)
            room -= n
            if room == 0 or not buffer and exhausted:
                break
        rows.append(row)
    return rows


def pack_dataset(dataset, max_length: int, buffer_size: int = 100):
    """Pack a rendered dataset (``input_ids``, ``assistant_masks``) into rows of ``max_length + 1`` tokens.

    Returns:
        ``datasets.Dataset`` with ``input_ids`` and ``assistant_masks`` (the concatenated conversations of
        one row, unpadded, <= max_length + 1 tokens) and ``seq_lengths`` (conversation lengths in the row).
        Logs the fill ratio (real tokens / slots).
    """
    # [:] reads each Arrow column once into lists (indexing a datasets Column converts one row per call)
    ids, masks = dataset["input_ids"][:], dataset["assistant_masks"][:]
    lengths = [len(x) for x in ids]
    rows = pack_best_fit(lengths, max_length + 1, buffer_size)
    out_ids, out_masks, out_lens = [], [], []
    for row in rows:
        out_ids.append(list(chain.from_iterable(ids[i] for i in row)))
        out_masks.append(list(chain.from_iterable(masks[i] for i in row)))
        out_lens.append([lengths[i] for i in row])
    real = sum(lengths)
    logger.info(
        "packed %d conversations into %d rows of %d tokens: %.2f%% of slots real",
        len(lengths),
        len(rows),
        max_length + 1,
        100.0 * real / max(1, len(rows) * (max_length + 1)),
    )
    return datasets.Dataset.from_dict({"input_ids": out_ids, "assistant_masks": out_masks, "seq_lengths": out_lens})


class PackedCollator:
    """Stack packed rows into fixed-shape training batches.

    Args:
        max_length: T; rows are padded to T + 1 then split into inputs/targets.
        pad_token_id: id written into padding slots (nanochat pads with BOS); its targets are ignored.
        attention: ``"document"`` (no attention across conversations) or ``"causal"`` (nanochat).
        flatten: emit one ``[1, B*T]`` row with ``cu_seq_lens_q/k`` and ``max_length_q/k`` for flash
            attention (transformers' padding-free kwargs); otherwise ``[B, T]``.

    Call returns:
        ``input_ids`` [B, T] int64; ``labels`` [B, T] int64, the targets already shifted
        (``labels[b, t]`` is the token that follows ``input_ids[b, t]``; -100 where the target's
        assistant mask is 0 or it is padding); ``shift_labels`` the same tensor (so HF losses do not
        shift again); ``position_ids`` [B, T] int64; ``real_tokens`` int64 scalar (non-padding input
        tokens, for throughput logging; the trainer pops it).

    Raises:
        ValueError: unknown ``attention``, or a row longer than T + 1.
    """

    def __init__(self, max_length: int, pad_token_id: int, attention: str = "document", flatten: bool = False):
        if attention not in ("document", "causal"):
            raise ValueError(f"attention must be 'document' or 'causal', got {attention!r}")
        self.T = max_length
        self.pad = pad_token_id
        self.attention = attention
        self.flatten = flatten

    def __call__(self, rows: list[dict]) -> dict:
        B, T = len(rows), self.T
        C = T + 1
        ids: list[int] = []
        masks: list[int] = []
        lens: list[int] = []  # document lengths over the whole batch, padding included, each row summing to C
        for row in rows:
            n = len(row["input_ids"])
            if n > C:
                raise ValueError(f"packed row of {n} tokens exceeds T+1={C}")
            ids += row["input_ids"]
            masks += row["assistant_masks"]
            if n < C:
                ids += [self.pad] * (C - n)
                masks += [0] * (C - n)
            if self.attention == "causal":
                lens.append(C)
            else:
                lens += row.get("seq_lengths") or [n]
                if n < C:
                    lens.append(C - n)  # padding is its own document
        tokens = torch.tensor(ids, dtype=torch.long).view(B, C)
        mask = torch.tensor(masks, dtype=torch.bool).view(B, C)
        # position = index - start of its document (vectorized over the batch)
        lens_t = torch.tensor(lens, dtype=torch.long)
        starts = torch.cumsum(lens_t, 0) - lens_t
        pos = (torch.arange(B * C) - torch.repeat_interleave(starts, lens_t)).view(B, C)
        labels = tokens[:, 1:].clone()
        labels[~mask[:, 1:]] = IGNORE_INDEX
        real = sum(min(len(row["input_ids"]), T) for row in rows)
        batch = {"input_ids": tokens[:, :-1], "position_ids": pos[:, :-1]}
        if self.flatten:
            batch = {k: v.reshape(1, -1) for k, v in batch.items()}
            labels = labels.reshape(1, -1)
            # each row's inputs are its first T slots: cut the documents at T
            doc_lens: list[int] = []
            i = 0
            for _ in range(B):
                used = 0
                while used < C:
                    ln = lens[i]
                    i += 1
                    if used < T:
                        doc_lens.append(min(ln, T - used))
                    used += ln
            cu = torch.tensor([0] + doc_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(doc_lens), max_length_k=max(doc_lens))
        batch.update(labels=labels, shift_labels=labels, real_tokens=torch.tensor(real))
        return batch


def pack_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Plan rows with best-fit decreasing over the whole dataset (nothing cropped).

    Conversations are placed longest first (ties: stream order); each goes into the open row whose
    remaining room is the smallest that still fits it, or opens a new row. This is the classic BFD
    bin-packing heuristic (Johnson, "Near-optimal bin packing algorithms", MIT 1973; at most
    11/9 OPT + 1 rows), which TRL's ``pack_dataset(strategy="bfd")`` also uses, except that TRL crops
    conversations longer than a row while here none is (truncate or split them at render time).
    Rows are not in stream order; the Trainer shuffles rows anyway.

    Args:
        lengths: token count of each conversation.
        capacity: tokens per row, T + 1.

    Returns:
        rows in the order they were opened, each a list of conversation indices (longest first); every
        index appears exactly once. Deterministic: among rows with equal room the most recently filled
        one is taken.

    Raises:
        ValueError: a conversation is longer than ``capacity`` or empty.
    """
    _check_lengths(lengths, capacity)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep stream order
    rows: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct room values that have at least one open row
    open_rows: dict[int, list[int]] = {}  # room -> indices of rows with exactly that room (a stack)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, n)
        if k == len(rooms):
            r = len(rows)
            rows.append([i])
            room = capacity - n
        else:
            old = rooms[k]
            stack = open_rows[old]
            r = stack.pop()
            if not stack:
                del rooms[k], open_rows[old]
            rows[r].append(i)
            room = old - n
        if room > 0:
            if room not in open_rows:
                bisect.insort(rooms, room)
                open_rows[room] = []
            open_rows[room].append(r)
    return rows
