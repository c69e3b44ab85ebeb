"""``NanoSFTTrainer``: TRL's ``SFTTrainer`` with nanochat's packing, loss, optimizer and schedule.

Each override changes one TRL/transformers behaviour, for one reason:

- ``__init__``: the data collator is ``PackedCollator`` (fixed ``[B, T]`` best-fit rows, position ids
  restarting per conversation); TRL's own dataset preparation is skipped (``skip_prepare_dataset``):
  the rows arrive rendered by ``ChatRenderer`` and packed by ``pack_dataset``.
- ``compute_loss``: logits only at supervised positions (``logits_to_keep`` with a boolean mask; about
  58% of the tokens of a chat mix are supervised, and with a 65K vocabulary the head and the loss
  dominate a small model's step), summed, and divided by the number of supervised tokens of the whole
  optimizer step: all micro-batches and all ranks (``num_items_in_batch``, which the Trainer gathers
  across ranks). TRL's fused lm-head loss (trl/trainer/sft_trainer.py) saves GPU memory, costs CPU time.
- ``create_optimizer``: ``nanosft.optim.muon.build_optimizer`` (Muon on block matrices, AdamW on embeddings,
  lm_head and scalars) through ``optimizer_cls_and_kwargs``; warm start from the base checkpoint.
- ``create_scheduler``: nanochat's constant-then-linear warmdown (``nanosft.optim.schedule``).
- ``log``: adds tokens/s and supervised tokens/s (TRL's ``num_tokens`` counts ``position_ids.size(1)``
  without an attention mask, undercounting a multi-row batch); the cumulative counts live in the
  ``TokenCounter`` callback, which transformers saves in ``trainer_state.json`` and restores on resume.
- ``_save_checkpoint`` (+ ``_get_output_dir``, ``_push_from_checkpoint``): atomic checkpoints, with
  ``nanosft_state.json`` and the model card inside (``nanosft/training/checkpoint.py``).
- ``create_model_card``: nanosft's card (``nanosft/training/hub.py``) instead of TRL's.
- ``_save``: the weight files get the permissions of ordinary new files (0666 less the umask; safetensors
  0.8 creates them 0600); ``nanosft_config.json`` (optimizer, LRs, base model) goes beside every saved model.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn.functional as F
from transformers.trainer_callback import ExportableState, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from trl import SFTTrainer

from ..data.packing import IGNORE_INDEX, PackedCollator
from ..files import follow_umask
from ..format.tokenizer import BOS
from ..optim.muon import DEEPSPEED_MUON_KEYS, LR_KEYS, build_optimizer, prepare_deepspeed_muon
from ..optim.schedule import build_scheduler, choose_optimizer, pretraining_optimizer, resolve_learning_rates
from ..optim.warm_start import load_warm_start
from . import checkpoint as ckpt
from .checkpoint import write_training_config
from .hub import write_model_card

logger = logging.getLogger(__name__)


class TokenCounter(TrainerCallback, ExportableState):
    """Cumulative real input and supervised ``tokens``, saved in ``trainer_state.json`` and restored on resume by
    transformers (``restore_callback_states_from_checkpoint``); ``clock``: (time, *tokens) at the last log."""

    def __init__(self, tokens=(0, 0)):
        self.tokens = [int(t) for t in tokens]
        self.clock = (time.perf_counter(), *self.tokens)

    def state(self) -> dict:
        return {"args": {"tokens": list(self.tokens)}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())  # resumed from a checkpoint without it
        self.clock = (time.perf_counter(), *self.tokens)


class NanoSFTTrainer(SFTTrainer):
    """SFT trainer for packed nanochat-format data.

    Args:
        model: a ``PreTrainedModel`` (or a PEFT model), already carrying the nanochat special tokens.
        args: ``nanosft.config.NanoSFTConfig``.
        train_dataset: packed rows from ``nanosft.data.packing.pack_dataset``.
        eval_dataset: packed rows, or None.
        processing_class: the tokenizer (saved with every checkpoint).
        callbacks, peft_config: as in ``trl.SFTTrainer``.
        base_model_path: where to look for optimizer state to warm-start from (``load_optimizer``).
        optimizer_choice: the line of a caller that resolved ``optimizer: auto`` itself (``choose_optimizer``);
            None: resolved here. Shown in the model card and ``nanosft_config.json``.

    LRs left None are filled: the base checkpoint's, else nanochat's for a Muon-pretrained base, else the
    fine-tuning defaults of a pretrained model (``resolve_learning_rates``, logged).

    Raises:
        ValueError: from TRL for inconsistent options; ``data_collator`` cannot be overridden.
    """

    # compute_loss divides by the supervised tokens of the whole step, so the Trainer must not divide
    # again by the gradient-accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args, train_dataset, eval_dataset=None, processing_class=None, callbacks=None,
                 peft_config=None, base_model_path: str | None = None, optimizer_choice: str | None = None, **kwargs):
        if "data_collator" in kwargs:
            raise ValueError("NanoSFTTrainer builds its own PackedCollator; do not pass data_collator")
        attn = getattr(model.config, "_attn_implementation", None) or ""
        collator = PackedCollator(args.max_length, pad_token_id=processing_class.convert_tokens_to_ids(BOS),
                                  attention=args.attention, flatten="flash" in attn)
        self.base_model_path = base_model_path
        self.optimizer_choice = optimizer_choice or choose_optimizer(args)  # resolves optimizer: auto
        if optimizer_choice is None:
            logger.info(self.optimizer_choice)
        base = base_model_path if getattr(args, "model_config", None) is None else None
        muon_pretrained = base is None or pretraining_optimizer(base)[0] == "muon"
        lrs = resolve_learning_rates(base, {k: getattr(args, k) for k in LR_KEYS}, muon_pretrained=muon_pretrained)
        for key, value in lrs.items():
            setattr(args, key, value)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config, **kwargs)
        # Always count supervised tokens per step (the Trainer only does when the model "accepts loss
        # kwargs", which PEFT wrappers hide); compute_loss relies on it.
        self.model_accepts_loss_kwargs = True
        self.add_callback(TokenCounter())

    @property
    def token_counter(self) -> TokenCounter:  # looked up: transformers replaces the instance on resume
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TokenCounter))

    _tokens_seen = property(lambda self: self.token_counter.tokens)  # [input, supervised], mutable

    # ----- loss -----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sum of token cross-entropies (nats) at supervised positions / supervised tokens in the step.

        ``inputs["labels"]`` holds already-shifted targets ([B, T], -100 = ignored). Returns a scalar
        float32 tensor; with ``return_outputs`` also the model output (``logits`` of shape [N, V] for the
        N supervised positions).
        """
        mode = "train" if model.training else "eval"
        labels = inputs.pop("labels")
        inputs.pop("shift_labels", None)
        real_tokens = inputs.pop("real_tokens", None)
        keep = labels != IGNORE_INDEX
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits
        if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep
            logits = logits[keep]
        targets = labels[keep]
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        local = keep.sum()
        denom = num_items_in_batch if num_items_in_batch is not None else local
        loss = loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp(min=1)
        if mode == "train" and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # DDP averages gradients over ranks while the denominator already counts every rank's tokens.
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum()
            real = torch.as_tensor(real_tokens if real_tokens is not None else 0, device=local.device)
            stats = torch.stack([correct, local, real]).reshape(1, 3)
            # one device-to-host copy per micro-batch for all three counts
            n_correct, n_sup, n_real = (int(x) for x in self.accelerator.gather_for_metrics(stats).sum(0).tolist())
        self._metrics[mode]["mean_token_accuracy"].append(n_correct / max(n_sup, 1))
        if mode == "train":
            self._tokens_seen[0] += n_real
            self._tokens_seen[1] += n_sup
            self._metrics[mode]["num_tokens"] = [self._tokens_seen[0]]
            self._metrics[mode]["num_supervised_tokens"] = [self._tokens_seen[1]]
        return (loss, outputs) if return_outputs else loss

    # ----- optimizer and schedule -----
    def create_optimizer(self, model=None):
        """Build MuonAdamW/AdamW via ``optimizer_cls_and_kwargs`` and warm-start it (``load_optimizer``).

        The warm start reads the base checkpoint's optimizer state (momentum buffers) and keeps the SFT
        LRs; it is skipped when resuming (``global_step`` > 0: transformers reads the checkpoint's state first), where
        the checkpoint's own optimizer state is loaded instead.

        Under DeepSpeed this runs only when the DS config has no "optimizer" block (ds_configs/ have none):
        ``optimizer: adamw`` gives the same grouped torch AdamW (ZeRO accepts a client torch optimizer);
        ``optimizer: muon`` gives DeepSpeed's own Muon with nanochat's groups
        (``nanosft.optim.muon.prepare_deepspeed_muon``: ZeRO hands client optimizers flat 1-D shards).
        """
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            if self.is_deepspeed_enabled and self.args.optimizer == "muon":  # fixes the live DS config in place
                ds_config = self.accelerator.state.deepspeed_plugin.hf_ds_config.config
                kw = {k: v for k, v in optimizer_kwargs(self.args, self.model).items() if k in DEEPSPEED_MUON_KEYS}
                self.optimizer, fixed = prepare_deepspeed_muon(self.model, ds_config, **kw)
                ds_config.update(fixed)  # clipping off, ZeRO-3 reduce_scatter: false, before deepspeed.initialize
            else:
                self.optimizer_cls_and_kwargs = (build_optimizer, optimizer_kwargs(self.args, self.model))
        optimizer = super().create_optimizer(model)
        if (self.args.load_optimizer and self.base_model_path and self.state.global_step == 0
                and not getattr(self, "_warm_started", False)):
            self._warm_started = load_warm_start(optimizer, self.base_model_path, model=self.model)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """nanochat's schedule: warmup, constant, linear warmdown to ``final_lr_frac``."""
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(
                optimizer or self.optimizer,
                num_training_steps,
                warmup_ratio=self.args.warmup_ratio,
                warmdown_ratio=self.args.warmdown_ratio,
                final_lr_frac=self.args.final_lr_frac,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ----- logging -----
    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Add ``tokens_per_second`` and ``supervised_tokens_per_second`` since the previous log (train)."""
        if self.model.training and "loss" in logs:
            counter, now = self.token_counter, time.perf_counter()
            t0, n0, s0 = counter.clock
            dt = max(now - t0, 1e-9)
            logs["tokens_per_second"] = round((counter.tokens[0] - n0) / dt, 1)
            logs["supervised_tokens_per_second"] = round((counter.tokens[1] - s0) / dt, 1)
            counter.clock = (now, *counter.tokens)
        super().log(logs, start_time)

    # ----- checkpoints, records and the model card (nanosft/training/checkpoint.py, nanosft/training/hub.py) -----
    run_config: dict | None = None  # the resolved YAML config (train.py sets it); recorded in checkpoints
    _ckpt_staging: str | None = None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The Trainer's model save, then ``follow_umask`` on ``*.safetensors`` and ``write_training_config``."""
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            folder = output_dir if output_dir is not None else self.args.output_dir
            follow_umask(folder, ".safetensors")
            write_training_config(folder, self)

    def _get_output_dir(self, trial) -> str:
        """The staging folder while ``_save_checkpoint`` runs, so the Trainer writes its files there."""
        return self._ckpt_staging if self._ckpt_staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-<step>`` atomically: transformers 5.24 (``Trainer._save_checkpoint``) still writes it
        in place, file by file, with no atomic step; drop this override once transformers stages its saves.

        The design is ``nanosft/training/checkpoint.py``'s; rotation (``save_total_limit``) and the Hub push follow the rename.
        """
        run_dir = super()._get_output_dir(trial)
        step = self.state.global_step
        name, root = f"{ckpt.CHECKPOINT_PREFIX}-{step}", os.path.join(run_dir, f"{ckpt.TMP_PREFIX}{step}")
        written, final = os.path.join(root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            ckpt.remove_stale_staging(run_dir)
        self.accelerator.wait_for_everyone()
        self._ckpt_staging = root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._ckpt_staging = None
        if self.args.should_save:
            if self.state.best_model_checkpoint and os.path.abspath(self.state.best_model_checkpoint) == os.path.abspath(written):
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(written, "trainer_state.json"))
            write_model_card(written, self)
            record = ckpt.checkpoint_record(self, self.run_config)
            ckpt.write_json_atomic(os.path.join(written, ckpt.RECORD_NAME), record)
        self.accelerator.wait_for_everyone()  # every rank's files (RNG, ZeRO shards) are in place
        if self.args.should_save:
            ckpt.commit(written, final)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Deferred while the checkpoint is staged: ``_save_checkpoint`` pushes the renamed folder."""
        if self._ckpt_staging is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write nanosft's card (``nanosft.training.hub.build_model_card``) to ``output_dir/README.md``, main process only.

        Replaces TRL's card, which knows nothing of the recipe; the Trainer calls this before each
        checkpoint save and in ``push_to_hub`` (``kwargs`` such as ``language``/``license`` are ignored).
        """
        if not self.is_world_process_zero():
            return
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        write_model_card(self.args.output_dir, self, model_name=model_name, tags=tags)


def optimizer_kwargs(args, model) -> dict:
    """Keyword arguments for ``nanosft.optim.muon.build_optimizer`` from a ``NanoSFTConfig`` whose LRs ``NanoSFTTrainer``
    has filled (``resolve_learning_rates``); ``optimizer_kwargs`` entries win."""
    return {"optimizer": args.optimizer, "weight_decay": args.weight_decay, "init_lr_frac": args.init_lr_frac,
            **{k: getattr(args, k) for k in LR_KEYS}, **(args.optimizer_kwargs or {})}
