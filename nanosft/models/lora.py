"""LoRA through peft: the ``peft:`` block of a config becomes a ``LoraConfig`` that trains what must train.

    peft: {r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj], lora_dropout: 0.05}

Every key is a ``peft.LoraConfig`` field (``task_type`` is always ``CAUSAL_LM``). Two things are added:

- New tokens must learn. When nanosft appended the nanochat special tokens to a pretrained vocabulary
  (SmolLM2: ids 49152..49160), their rows start as the mean embedding; a frozen base would never learn
  what ``<|assistant_end|>`` means. Unless the block says otherwise, those rows train through peft's
  ``trainable_token_indices`` (9 x d_model parameters instead of the whole 49K-row matrix; with tied
  embeddings peft ties the lm_head rows too); an untied ``lm_head`` goes to ``modules_to_save``.
- ``lm_head`` as a LoRA target is refused by TRL (its fused loss reads ``lm_head.weight`` directly); the
  error here says what to do instead.

Optimizer: with LoRA every trainable matrix is a low-rank factor (A: r x n, B: m x r, B starting at 0)
or a token-row delta. Muon's orthogonalized update is built for full weight matrices - for B it would
use a polar factor of a rank-r gradient and scale the LR by sqrt(m / r) (12x for SmolLM2's 576 x 4) -
so ``optimizer: muon`` trains adapters with the AdamW groups of ``nanosft.optim.muon.build_optimizer``
instead (``adamw_matrix_lr`` in ``optimizer_kwargs`` sets their LR), with a warning. Full fine-tuning
keeps Muon.
"""

from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger(__name__)


def input_embedding_name(model) -> str:
    """The short module name of the input embedding (``embed_tokens`` for Llama/NanoChat)."""
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    return "embed_tokens"


def build_lora_config(peft_kwargs: dict, model, new_token_ids: list[int] | None = None):
    """A ``peft.LoraConfig`` from the ``peft:`` block, with the new tokens made trainable.

    Args:
        peft_kwargs: ``LoraConfig`` fields (r, lora_alpha, target_modules, lora_dropout, ...).
        model: the base model (to name its embedding and see whether the head is tied).
        new_token_ids: ids appended to the base vocabulary (``model.nanosft_new_token_ids``).

    Returns:
        ``peft.LoraConfig`` with ``task_type="CAUSAL_LM"``.

    Raises:
        ValueError: ``lm_head`` among ``target_modules``; an unknown ``LoraConfig`` key (named).
    """
    from peft import LoraConfig  # heavy; only runs with a `peft:` block need it

    kw = dict(peft_kwargs)
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"peft: unknown LoraConfig key(s) {unknown}; e.g. r, lora_alpha, target_modules, lora_dropout")
    targets = kw.get("target_modules")
    if isinstance(targets, (list, tuple)) and "lm_head" in targets:
        raise ValueError("peft.target_modules: 'lm_head' cannot take a LoRA adapter (TRL's loss reads lm_head.weight "
                         "directly); put it in peft.modules_to_save to train the head fully")
    if new_token_ids and kw.get("trainable_token_indices") is None:
        saved = kw.get("modules_to_save") or []
        emb = input_embedding_name(model)
        if emb not in saved:
            kw["trainable_token_indices"] = {emb: list(new_token_ids)}
        tied = getattr(model.config, "tie_word_embeddings", False)
        if not tied and "lm_head" not in saved:
            kw["modules_to_save"] = [*saved, "lm_head"]
        logger.info("peft: %d new token rows of %s train (trainable_token_indices)%s", len(new_token_ids), emb,
                    "" if tied else "; lm_head in modules_to_save")
    kw.pop("task_type", None)
    return LoraConfig(task_type="CAUSAL_LM", **kw)


def adapter_optimizer(optimizer: str) -> str:
    """The optimizer that trains LoRA adapters: ``"adamw"`` (see the module docstring), warning if Muon was asked."""
    if optimizer == "muon":
        logger.warning("peft: LoRA factors are trained with AdamW, not Muon (Muon orthogonalizes full weight "
                       "matrices; a rank-r factor is not one). Set `optimizer: adamw` to silence this; "
                       "`optimizer_kwargs: {adamw_matrix_lr: ...}` sets the adapters' LR.")
    return "adamw"
