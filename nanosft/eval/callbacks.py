"""Evaluation during training as Trainer callbacks: ChatCORE and validation bits per byte.

How the metrics reach every ``report_to`` integration: a callback gets no trainer, and must not call
``SFTTrainer.log`` from ``on_step_end`` (it drains TRL's per-mode metric buffers, trl/trainer/sft_trainer.py ``log``).
So both callbacks compute in ``on_step_end``, stash the result and set ``control.should_log``; the
Trainer then logs the step (``Trainer.log`` -> ``callback_handler.on_log(logs)``), and in ``on_log``
the callback adds its metrics to that very ``logs`` dict and to the ``state.log_history`` entry.
Callbacks run in list order, so the integrations (TensorBoard, W&B, ...) see the keys only when the
callback runs before them: ``attach(trainer)`` moves it to the front of the trainer's callback list.
Without ``attach`` (``Trainer(callbacks=[cb])`` appends after the integrations) the metrics still
land in ``log_history`` and in callbacks added after it, and a warning says to call ``attach``.

Costs (tiny model on CPU): ChatCORE at nanochat's SFT caps is dominated by generation
(24 problems x up to 512 tokens per generative task); bits per byte is one forward pass per batch.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from transformers import TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

from . import chatcore
from ..data.packing import IGNORE_INDEX

logger = logging.getLogger(__name__)


def token_bytes(tokenizer, vocab_size: int | None = None) -> torch.LongTensor:
    """UTF-8 byte length of every token id; 0 for special tokens (nanochat/loss_eval.py's input).

    Byte-level BPE tokens (the nanochat tokenizer, GPT-2 style) are strings over a 256-symbol
    alphabet with one symbol per byte, so their byte count is their length; other tokenizers fall
    back to ``len(decode([id]).encode("utf-8"))``.

    Args:
        tokenizer: an HF tokenizer.
        vocab_size: length of the result (the model's vocabulary, may exceed the tokenizer's);
            extra ids count 0 bytes.

    Returns:
        ``int64`` tensor ``[vocab_size]``.
    """
    n = len(tokenizer)
    size = max(n, vocab_size or 0)
    out = torch.zeros(size, dtype=torch.long)
    byte_level = False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.decoder is not None:
        byte_level = type(backend.decoder).__name__ == "ByteLevel"
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, tok in enumerate(tokens):
        if tok is None:
            continue
        out[i] = len(tok) if byte_level else len(tokenizer.decode([i]).encode("utf-8"))
    special = set(tokenizer.all_special_ids)
    special.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    for i in special:
        if 0 <= i < size:
            out[i] = 0
    return out


def _targets(batch: dict, labels_shifted: bool) -> torch.Tensor:
    """The target of each input position: ``shift_labels``, else ``labels`` (shifted here if needed)."""
    if "shift_labels" in batch:
        return batch["shift_labels"]
    labels = batch["labels"]
    if labels_shifted:
        return labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


@torch.no_grad()
def evaluate_bpb(model, batches, token_bytes: torch.Tensor, labels_shifted: bool = True) -> float:
    """Bits per byte of the supervised targets (nanochat/loss_eval.py ``evaluate_bpb``).

    bpb = sum of the cross-entropy (nats) over targets that are supervised (!= -100) and not special
    tokens (0 bytes) / (ln 2 * their total UTF-8 bytes). Unlike mean loss it does not depend on the
    tokenizer, so runs with different vocabularies compare.

    Args:
        model: HF causal LM; called as ``model(input_ids=..., [position_ids=..., attention_mask=...])``.
        batches: iterable of dicts with ``input_ids`` ``[B, T]``, and ``shift_labels`` or ``labels``
            ``[B, T]`` int64 holding the target of each input position (-100 = ignore); optional
            ``position_ids``, ``attention_mask``. ``nanosft.data.packing.PackedCollator`` batches qualify.
        token_bytes: ``token_bytes(tokenizer, vocab)``.
        labels_shifted: ``labels`` already hold the next token of each position (True, as the packed
            collator); False for HF-style unshifted labels. Ignored when ``shift_labels`` is present.

    Returns:
        bits per byte (float; nan when there is no counted byte). Under ``torch.distributed`` the sums
        are all-reduced, so each rank should pass its own shard.
    """
    device = next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    tb = token_bytes.to(device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {k: batch[k].to(device) for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
            targets = _targets(batch, labels_shifted).to(device)
            valid = targets != IGNORE_INDEX
            # logits only where there is a target (a 65K-vocab [B, T, V] tensor is GBs at T = 2048)
            logits = model(**inputs, logits_to_keep=valid, use_cache=False).logits.float()
            if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep
                logits = logits[valid]
            kept = targets[valid]
            counted = tb[kept]
            loss = torch.nn.functional.cross_entropy(logits, kept, reduction="none")
            nats += (loss.double() * (counted > 0)).sum()
            nbytes += counted.sum()
    finally:
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(nats)
        torch.distributed.all_reduce(nbytes)
    total = int(nbytes.item())
    return float(nats.item()) / (math.log(2) * total) if total else float("nan")


class _StashingCallback(TrainerCallback):
    """Compute in ``on_step_end``, publish through the next ``on_log`` (see the module docstring)."""

    def __init__(self, every: int):
        self.every = every
        self._pending: dict | None = None
        self._attached = False
        self._warned = False

    def attach(self, trainer):
        """Put this callback first in ``trainer``'s list so report_to integrations see its metrics.

        Returns:
            self.
        """
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self.accelerator = getattr(trainer, "accelerator", None)
        self._attached = True
        return self

    def due(self, state) -> bool:
        return (
            self.every is not None and self.every > 0 and state.global_step > 0 and state.global_step % self.every == 0
        )

    def compute(self, args, state, **kwargs) -> dict:
        raise NotImplementedError

    def on_train_begin(self, args, state, control, **kwargs):
        if self.every and self.every > 0 and not self._attached and not self._warned:
            self._warned = True
            logger.warning(
                "%s is not attached: report_to integrations registered before it will not receive its metrics. "
                "Call `callback.attach(trainer)` after building the trainer.",
                type(self).__name__,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.due(state):
            metrics = self.compute(args, state, **kwargs)
            self._pending = {**(self._pending or {}), **metrics}
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = None


class ChatCoreCallback(_StashingCallback):
    """Run ChatCORE every ``every`` optimizer steps and log ``chatcore/<task>``, ``chatcore_metric/<set>``,
    ``chatcore_cat/<set>`` through the trainer (no aggregate for a partial set: ``chatcore.chatcore_metrics``).

    Args:
        tokenizer: tokenizer with the nanochat special tokens; None uses the trainer's
            ``processing_class``.
        tasks: a task set name (``chatcore.TASK_SETS``), task names, or None for the default six-task set.
        every: steps between evaluations; -1 (or 0) turns it off.
        max_categorical: cap on problems per categorical task (None: all).
        max_generative: cap per generative task (nanochat's SFT uses 24).
        data_dir: local data folder (None: the Hub).
        batch_size: prompts per forward pass (categorical).
        generative_batch_size: prompts per ``generate`` call.
        max_new_tokens, num_samples, temperature, top_k, seed: generation settings.
        allow_weak_sandbox: run HumanEval code even in a sandbox without namespaces or Landlock; the
            sandbox is probed (and a weak one refused) here, before training starts.

    Problems are loaded once, at the first evaluation, then reused (the same subset every time).
    Under several processes every rank evaluates its share; under ZeRO-3 the weights are gathered
    with the trainer's accelerator (after ``attach``). Typical wiring (NanoSFTTrainer does this)::

        trainer = NanoSFTTrainer(...)
        ChatCoreCallback(tokenizer, every=200, max_generative=24, data_dir=cfg.data_dir).attach(trainer)
    """

    def __init__(
        self,
        tokenizer=None,
        tasks=None,
        every: int = -1,
        max_categorical: int | None = None,
        max_generative: int | None = chatcore.GENERATIVE_CAP_DURING_SFT,
        data_dir: str | None = None,
        batch_size: int = 32,
        generative_batch_size: int = 16,
        max_new_tokens: int = 512,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 42,
        allow_weak_sandbox: bool = False,
    ):
        super().__init__(every)
        # fails at construction on a typo, not mid-training
        self.task_set, self.tasks = chatcore.resolve_tasks(tasks)
        if every and every > 0:
            chatcore.require_sandbox(self.tasks, allow_weak_sandbox)  # likewise for a weak code sandbox
        self.allow_weak_sandbox = allow_weak_sandbox
        self.tokenizer = tokenizer
        self.caps = {"max_categorical": max_categorical, "max_generative": max_generative}
        self.data_dir = data_dir
        self.gen = {
            "batch_size": batch_size,
            "generative_batch_size": generative_batch_size,
            "max_new_tokens": max_new_tokens,
            "num_samples": num_samples,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
        }
        self.accelerator = None
        self.problems: dict[str, list[dict]] | None = None
        self.last_results: dict | None = None

    def _load(self) -> dict[str, list[dict]]:
        out = {}
        for name in self.tasks:
            cap = chatcore.task_cap(name, **self.caps)
            out[name] = chatcore.load_problems(name, "test", self.data_dir, cap, self.gen["seed"])
        return out

    def compute(self, args, state, model=None, processing_class=None, **kwargs) -> dict:
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError("ChatCoreCallback needs a tokenizer: pass `tokenizer=` or give the trainer one.")
        if self.problems is None:
            self.problems = self._load()
        results = chatcore.run_chatcore(
            model, tokenizer, self.tasks, problems=self.problems, accelerator=self.accelerator,
            allow_weak_sandbox=self.allow_weak_sandbox, **self.gen
        )
        self.last_results = results
        return chatcore.log_metrics(results)


class BitsPerByteCallback(_StashingCallback):
    """Log validation bits per byte (``evaluate_bpb``) every ``every`` steps as ``val_bpb``.

    Args:
        batches: a re-iterable of batches (a list, a DataLoader) or a zero-argument callable that
            returns a fresh iterable each time (see ``evaluate_bpb`` for the batch format).
        token_bytes: ``token_bytes(tokenizer, vocab)``; None computes it from the trainer's
            ``processing_class`` at the first evaluation.
        every: steps between evaluations; -1 (or 0) turns it off.
        key: the logged name.
        labels_shifted: see ``evaluate_bpb``.
        shard: under ``torch.distributed`` with several processes, rank r evaluates batches r, r + W,
            r + 2W, ... of W processes and ``evaluate_bpb`` all-reduces the sums, so the result equals one
            process on every batch at 1/W of the work. ``batches`` must then be the whole validation set,
            the same on every rank (a plain DataLoader, not one prepared by accelerate, which already
            shards). Never applied under ZeRO-3: every rank must run the same number of forward passes
            there (each gathers the sharded weights collectively), so each evaluates every batch.
    """

    def __init__(self, batches, token_bytes=None, every: int = -1, key: str = "val_bpb", labels_shifted: bool = True,
                 shard: bool = True):
        super().__init__(every)
        self.batches = batches
        self.token_bytes = token_bytes
        self.key = key
        self.labels_shifted = labels_shifted
        self.shard = shard

    def _my_batches(self, batches):
        dist = torch.distributed
        if not (self.shard and dist.is_available() and dist.is_initialized()) or is_deepspeed_zero3_enabled():
            return batches
        world = dist.get_world_size()
        return itertools.islice(batches, dist.get_rank(), None, world) if world > 1 else batches

    def compute(self, args, state, model=None, processing_class=None, **kwargs) -> dict:
        if self.token_bytes is None:
            vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
            self.token_bytes = token_bytes(processing_class, vocab)
        batches = self.batches() if callable(self.batches) else self.batches
        return {self.key: evaluate_bpb(model, self._my_batches(batches), self.token_bytes, self.labels_shifted)}
