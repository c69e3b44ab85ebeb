"""``NanoRLTrainer``: nanochat's on-policy REINFORCE stage (nanochat/scripts/chat_rl.py) on nanosft's Trainer.

Why not TRL's ``GRPOTrainer``: with ``loss_type="dapo"``, ``beta=0``, ``scale_rewards="none"`` and one
iteration per generation batch its gradient is nanochat's up to the normalization, and its experimental
``rollout_func`` could return nanosft's tool-executing samples with an ``env_mask`` that keeps the forced
``<|output_start|> ... <|output_end|>`` tokens out of the loss (trl 1.16 ``GRPOTrainer._generate``). Three
things still do not fit: (1) ``dapo`` divides by the trained tokens of the whole generation batch of all
ranks (``num_items_in_batch``), nanochat divides each training pass by its own token count times passes
times examples per rank, a different weighting of long and short completions; (2) its sampling seed is
per process (``set_seed(seed, device_specific=True)``), so a run depends on the world size, where nanochat
seeds per (step, problem, sampling batch); (3) it is a sibling of ``SFTTrainer``, so nanosft's Muon groups
and warm start, atomic checkpoints and record, and model card (all in ``NanoSFTTrainer``) would have to
be rebuilt around it. So this is a small subclass of ``NanoSFTTrainer`` that replaces only the step:

- data: one row per problem (``problem_index``), ``per_device_train_batch_size`` 1 and
  ``gradient_accumulation_steps = examples_per_step / world_size``, read in order (no shuffle here;
  the recipe shuffles the problems once with ``mixture_seed``). accelerate's ``BatchSamplerShard`` gives
  rank r the batches r, r + W, ...: each rank takes every W-th problem, as nanochat's
  ``range(rank, len(task), world_size)``, and every optimizer step consumes ``examples_per_step``
  consecutive problems over all ranks.
- ``training_step``: sample ``num_samples`` completions of the problem with ``nanosft.eval.engine``
  (KV cache, calculator tool) in batches of ``device_batch_size``, seeded by
  ``rollout_seed(seed, step, problem, batch)``; reward them; advantage = reward - mean reward of the
  problem (no std division); then one forward/backward per batch of ``device_batch_size`` samples with
  ``policy_gradient_loss``. Gradients are synchronized across ranks once per optimizer step.
- ``create_scheduler``: nanochat's RL ramp, LR x ``1 - step / num_steps`` (``schedule.lr_multiplier``
  with ``warmdown_ratio`` 1).
- ``PassAtKCallback``: at step 0 and every ``eval_every`` steps, pass@1..K on held-out problems.

On-policy, no reference model, no KL, no ratio clipping (nanochat). As in nanochat, the terminal
``<|assistant_end|>`` is not part of a completion and is not trained.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from datasets import Dataset
from torch.utils.data import SequentialSampler
from tqdm.auto import tqdm

from ..eval.callbacks import _StashingCallback
from ..eval.chatcore import renderer_for
from ..eval.engine import CalculatorToolProcessor, gathered_for_generation, generate_batch
from ..eval.rewards import pass_at_k, pass_at_k_unbiased
from ..format.tokenizer import ASSISTANT_END, PYTHON_START, special_token_ids
from ..optim.schedule import lr_multiplier
from .config import ConfigError, NanoSFTConfig
from .trainer import NanoSFTTrainer

logger = logging.getLogger(__name__)
IGNORE = -1  # target of an untrained position (nanochat/scripts/chat_rl.py uses -1)


@dataclass
class NanoRLConfig(NanoSFTConfig):
    """Configuration of a nanosft RL run: ``NanoSFTConfig`` plus nanochat's RL keys (scripts/chat_rl.py).

    Defaults are nanochat's: 16 samples per problem at temperature 1.0, top-k 50, up to 256 new tokens,
    16 problems per step, training passes of 8 samples, LRs 0.2 / 0.004 / 0.02 times ``init_lr_frac``
    0.05 ramped linearly to 0, one epoch, pass@k every 60 steps on 400 test problems with 8 samples.
    """

    task: str = field(default="gsm8k", metadata={"help": "Problems to train on: 'gsm8k' or 'spellingbee'."})
    train_split: str = field(default="train", metadata={"help": "Split of the training problems."})
    max_problems: int | None = field(default=None, metadata={"help": "Use only the first N training problems "
                                     "(after the shuffle); SpellingBee: how many to draw (default 256)."})
    reward: str | None = field(default=None, metadata={"help": "Reward: 'gsm8k', 'spellingbee' or a dotted "
                               "path 'package.module.function' (problem, completion) -> float. Default: the task's."})
    num_samples: int = field(default=16, metadata={"help": "Completions sampled per problem."})
    max_new_tokens: int = field(default=256, metadata={"help": "Cap on new tokens per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=50, metadata={"help": "Sample from the k most likely tokens (None: all)."})
    examples_per_step: int = field(default=16, metadata={"help": "Problems per optimizer step over all ranks."})
    device_batch_size: int = field(default=8, metadata={"help": "Samples per generate call and per training pass."})
    use_tool: bool = field(default=True, metadata={"help": "Run the calculator tool during sampling."})
    eval_every: int = field(default=60, metadata={"help": "pass@k every N steps (-1: off)."})
    eval_task: str | None = field(default=None, metadata={"help": "Held-out problems (default: task)."})
    eval_split: str = field(default="test", metadata={"help": "Split of the held-out problems."})
    eval_examples: int = field(default=400, metadata={"help": "Held-out problems per pass@k evaluation."})
    eval_num_samples: int = field(default=8, metadata={"help": "Samples per held-out problem: pass@1..this."})
    # --- defaults changed from SFT (nanochat/scripts/chat_rl.py) ---
    embedding_lr: float | None = field(default=0.2, metadata={"help": "AdamW LR of embed_tokens."})
    unembedding_lr: float | None = field(default=0.004, metadata={"help": "AdamW LR of lm_head."})
    matrix_lr: float | None = field(default=0.02, metadata={"help": "Muon LR of block matrices."})
    init_lr_frac: float = field(default=0.05, metadata={"help": "All LRs times this."})
    warmdown_ratio: float = field(default=1.0, metadata={"help": "Unused: RL ramps linearly to 0 over the run."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training problems."})
    save_steps: float = field(default=60, metadata={"help": "Save every N steps."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Fixed: one problem per micro-batch."})
    max_length: int | None = field(default=2048, metadata={"help": "Context of a fresh model_config model."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (nanochat's RL: none)."})
    load_optimizer: bool = field(default=False, metadata={"help": "nanochat's RL starts a fresh optimizer."})

    def __post_init__(self):
        for key in ("num_samples", "max_new_tokens", "examples_per_step", "device_batch_size", "eval_num_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.num_samples % self.device_batch_size:
            raise ConfigError(f"num_samples ({self.num_samples}) must be a multiple of device_batch_size "
                              f"({self.device_batch_size})")
        if self.task not in ("gsm8k", "spellingbee") or (self.eval_task or self.task) not in ("gsm8k", "spellingbee"):
            raise ConfigError(f"task/eval_task: must be 'gsm8k' or 'spellingbee', got {self.task!r}/{self.eval_task!r}")
        if self.per_device_train_batch_size != 1:
            raise ConfigError("per_device_train_batch_size: RL takes one problem per micro-batch; set "
                              "examples_per_step instead")
        if self.total_batch_size:
            raise ConfigError("total_batch_size: not used by RL; set examples_per_step")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        super().__post_init__()
        if self.examples_per_step % self.world_size:
            raise ConfigError(f"examples_per_step ({self.examples_per_step}) must be a multiple of the number of "
                              f"processes ({self.world_size})")
        self.gradient_accumulation_steps = self.examples_per_step // self.world_size


def rollout_seed(seed: int, step: int, problem: int, batch: int, tag: str = "train") -> int:
    """A 31-bit sampling seed for (run seed, step, problem index, sampling batch): CRC-32 of their text.

    Independent of the process that samples, so 1 and W processes draw the same completions.
    """
    return zlib.crc32(f"{tag}/{seed}/{step}/{problem}/{batch}".encode()) & 0x7FFFFFFF


@torch.no_grad()
def sample_completions(model, tokenizer, prompt_ids: list[int], num_samples: int, batch_size: int,
                       seed_of_batch, max_new_tokens: int = 256, temperature: float = 1.0,
                       top_k: int | None = 50, use_tool: bool = True,
                       logits_processors: list | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Sample ``num_samples`` completions of one prompt, ``batch_size`` per ``generate`` call.

    Args:
        prompt_ids: the rendered prompt, ending in ``<|assistant_start|>``.
        seed_of_batch: ``b -> seed`` of sampling batch b (see ``rollout_seed``).
        logits_processors: extra ``LogitsProcessor`` s, applied before the tool (tests script a model).

    Returns:
        ``(tokens, masks)``: per sample its new token ids (forced tool tokens included, the stop token
        not) and a same-length mask, 1 for sampled tokens and 0 for tokens the calculator forced
        (nanochat/engine.py ``generate_batch`` masks).
    """
    tokens, masks = [], []
    for b in range(0, num_samples, batch_size):
        tool = CalculatorToolProcessor(tokenizer) if use_tool else None
        out = generate_batch(model, tokenizer, [prompt_ids], num_samples=min(batch_size, num_samples - b),
                             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             seed=seed_of_batch(b // batch_size), use_tool=False,
                             logits_processors=[*(logits_processors or []), *([tool] if tool else [])])[0]
        for r, toks in enumerate(out):
            forced = set(tool.forced[r]) if tool and tool.forced else set()
            tokens.append(toks)
            masks.append([0 if i in forced else 1 for i in range(len(toks))])
    return tokens, masks


def build_training_batch(prompt_ids: list[int], completions: list[list[int]], masks: list[list[int]],
                         pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """``(input_ids, targets)`` of shape [S, L - 1] for S completions of one prompt (nanochat chat_rl.py).

    Each row is prompt + completion, right-padded with ``pad_id`` (``<|assistant_end|>``) to the longest
    length L; targets are the next tokens, set to -1 where the target is a prompt token, a forced tool
    token or padding. dtype int64, on CPU.
    """
    seqs = [list(prompt_ids) + list(c) for c in completions]
    full = [[0] * len(prompt_ids) + list(m) for m in masks]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([m + [0] * (width - len(m)) for m in full], dtype=torch.long)
    targets = ids[:, 1:].clone()
    targets[mask[:, 1:] == 0] = IGNORE
    return ids[:, :-1], targets


def policy_gradient_loss(model, input_ids: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                         normalizer: float) -> tuple[torch.Tensor, int]:
    """REINFORCE loss of one training pass: ``-sum_t logp(target_t) * A_row / normalizer``.

    Args:
        model: causal LM; called with a boolean ``logits_to_keep`` (logits only at trained positions);
            a model returning [B, T, V] logits instead is indexed by the mask.
        input_ids: [B, T] int64. targets: [B, T] int64, -1 = not trained.
        advantages: [B] float, one per row (reward - mean reward of its problem).
        normalizer: nanochat's ``num_valid * num_passes * examples_per_rank`` (the caller passes
            passes * examples; the trained tokens of this pass are counted here).

    Returns:
        ``(loss, n_trained)``: a float32 scalar and the number of trained tokens in the pass.
        Source: nanochat/scripts/chat_rl.py (``pg_obj / (num_valid * num_passes * examples_per_rank)``).
    """
    keep = targets != IGNORE
    n = int(keep.sum())
    out = model(input_ids=input_ids, logits_to_keep=keep, use_cache=False)
    logits = out.logits
    if logits.dim() == 3:
        logits = logits[keep]
    logp = -F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [N]
    adv = advantages.to(logp.device, torch.float32)[:, None].expand(keep.shape)[keep]
    loss = -(logp * adv).sum() / (max(n, 1) * normalizer)
    return loss, n


class NanoRLTrainer(NanoSFTTrainer):
    """On-policy RL trainer (see the module docstring).

    Args:
        model, args (``NanoRLConfig``), processing_class, callbacks, base_model_path: as ``NanoSFTTrainer``.
        problems: training problems ``{"messages", "reference"}`` in training order.
        reward_fn: ``(problem, completion_text) -> float``.
        train_dataset: rows ``{"problem_index": i}``, one per problem (built from ``problems`` if None).
    """

    stage = "rl"  # recorded in every checkpoint (nanosft/training/checkpoint.py)

    def __init__(self, model, args, problems: list[dict], reward_fn, processing_class=None, callbacks=None,
                 base_model_path: str | None = None, train_dataset=None, **kwargs):
        if train_dataset is None:
            train_dataset = Dataset.from_dict({"problem_index": list(range(len(problems)))})
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         callbacks=callbacks, base_model_path=base_model_path, **kwargs)
        self.data_collator = collate_problem_indices
        self.problems = problems
        self.reward_fn = reward_fn
        renderer = renderer_for(processing_class)
        self.prompts = [None] * len(problems)
        self._render = renderer.render_for_completion
        ids = special_token_ids(processing_class)
        self.pad_id, self.python_start = ids[ASSISTANT_END], ids[PYTHON_START]
        self.model_accepts_loss_kwargs = False
        self._sampling_bar = None
        # this rank's sums over the step's problems: reward, reward^2, completion tokens, tool users,
        # trained tokens, samples
        self._step_stats = torch.zeros(6, dtype=torch.float64)

    def prompt(self, i: int) -> list[int]:
        """Rendered prompt of problem ``i`` (cached)."""
        if self.prompts[i] is None:
            self.prompts[i] = self._render(self.problems[i]["messages"])
        return self.prompts[i]

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """LR x ``1 - step / num_training_steps`` (nanochat/scripts/chat_rl.py ``get_lr_multiplier``)."""
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda step: lr_multiplier(step / num_training_steps, 0.0, 1.0, 0.0))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def rollout(self, model, problem_index: int, step: int) -> dict:
        """Sample and reward ``num_samples`` completions of one problem (no grad, eval mode)."""
        a = self.args
        was_training = model.training
        model.eval()
        with gathered_for_generation(model, self.accelerator) as m:
            gen = self.accelerator.unwrap_model(m)
            tokens, masks = sample_completions(
                gen, self.processing_class, self.prompt(problem_index), a.num_samples, a.device_batch_size,
                lambda b: rollout_seed(a.seed, step, problem_index, b), a.max_new_tokens, a.temperature,
                a.top_k, a.use_tool)
        model.train(was_training)
        texts = [self.processing_class.decode(t) for t in tokens]  # special tokens kept, as nanochat
        rewards = torch.tensor([float(self.reward_fn(self.problems[problem_index], c)) for c in texts])
        return {"tokens": tokens, "masks": masks, "rewards": rewards,
                "tool_used": [self.python_start in t for t in tokens]}

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Rollouts of this micro-batch's problem, then the policy-gradient backward passes.

        Returns the detached sum of the passes' losses (the Trainer sums micro-batches and averages ranks).
        """
        a = self.args
        step = self.state.global_step
        model.train()
        total = torch.zeros((), device=a.device)
        sync_at_end = self.accelerator.gradient_state.sync_gradients  # the step's last micro-batch
        stats = self._step_stats
        for problem_index in inputs["problem_index"].tolist():
            ro = self.rollout(model, problem_index, step)
            rewards = ro["rewards"]
            advantages = rewards - rewards.mean()
            ids, targets = build_training_batch(self.prompt(problem_index), ro["tokens"], ro["masks"], self.pad_id)
            passes = a.num_samples // a.device_batch_size
            normalizer = passes * a.gradient_accumulation_steps
            for p in range(passes):
                rows = slice(p * a.device_batch_size, (p + 1) * a.device_batch_size)
                last = sync_at_end and p == passes - 1
                ctx = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                with ctx:
                    loss, n = policy_gradient_loss(model, ids[rows].to(a.device), targets[rows].to(a.device),
                                                   advantages[rows], normalizer)
                    self.accelerator.backward(loss)
                total += loss.detach()
                stats[4] += n
            lengths = [len(t) for t in ro["tokens"]]
            stats[0] += rewards.sum().item()
            stats[1] += (rewards ** 2).sum().item()
            stats[2] += sum(lengths)
            stats[3] += sum(ro["tool_used"])
            stats[5] += len(lengths)
            self._tokens_seen[0] += int(sum(lengths) + len(lengths) * len(self.prompt(problem_index)))
            if self._sampling_bar is not None:
                self._sampling_bar.update(self.accelerator.num_processes)
        if sync_at_end:
            self._log_step_stats()
        return total

    def _log_step_stats(self) -> None:
        """Gather the step's rollout sums over ranks and add the step's means to the logged metrics."""
        g = self.accelerator.gather(self._step_stats.to(self.args.device).reshape(1, -1)).sum(0).tolist()
        self._step_stats.zero_()
        n_samples = max(g[5], 1)
        mean = g[0] / n_samples
        metrics = self._metrics["train"]
        metrics["reward"].append(mean)
        metrics["reward_std"].append(max(g[1] / n_samples - mean ** 2, 0.0) ** 0.5)
        metrics["completion_length"].append(g[2] / n_samples)
        metrics["tool_use_fraction"].append(g[3] / n_samples)
        self._tokens_seen[1] += int(g[4])
        metrics["num_trained_tokens"] = [self._tokens_seen[1]]

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``NanoSFTTrainer.train`` with a "sampling" progress bar over problems (main process, tqdm on)."""
        show = self.is_world_process_zero() and not self.args.disable_tqdm
        if show:
            self._sampling_bar = tqdm(desc="sampling (problems)", unit="problem", position=1, leave=False)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._sampling_bar is not None:
                self._sampling_bar.close()
                self._sampling_bar = None


def collate_problem_indices(rows: list[dict]) -> dict:
    """``{"problem_index": LongTensor [B]}`` from dataset rows ``{"problem_index": int}``."""
    return {"problem_index": torch.tensor([r["problem_index"] for r in rows], dtype=torch.long)}


class PassAtKCallback(_StashingCallback):
    """pass@1..K on held-out problems at step 0 and every ``every`` steps, logged as ``pass@k`` and
    ``pass@k_unbiased``.

    Each process samples every W-th problem (``K`` samples each, seeded per (step, problem, batch)); the
    outcomes are gathered, so every rank logs the same numbers. Also logs ``eval_reward`` (mean reward).
    Source: nanochat/scripts/chat_rl.py ``run_gsm8k_eval`` (pass@k = any correct among the first k).

    Args:
        problems: held-out problems ``{"messages", "reference"}``.
        reward_fn: ``(problem, completion) -> float``; a sample counts as correct when its reward > 0.
        num_samples: K. every: steps between evaluations (-1: off). seed: run seed.
        batch_size, max_new_tokens, temperature, top_k, use_tool: sampling settings.
    """

    def __init__(self, problems: list[dict], reward_fn, num_samples: int = 8, every: int = 60, seed: int = 0,
                 batch_size: int = 8, max_new_tokens: int = 256, temperature: float = 1.0, top_k: int | None = 50,
                 use_tool: bool = True, tokenizer=None):
        super().__init__(every)
        self.problems, self.reward_fn, self.k, self.seed = problems, reward_fn, num_samples, seed
        self.gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, use_tool=use_tool)
        self.batch_size = min(batch_size, num_samples)
        self.tokenizer = tokenizer

    def evaluate(self, model, tokenizer, step: int, rank: int = 0, world: int = 1, show: bool = False) -> dict:
        """The metrics at ``step`` (this rank's share of the problems; gathered when ``self.accelerator``)."""
        render = renderer_for(tokenizer).render_for_completion
        mine = list(range(rank, len(self.problems), world))
        local = []
        was_training = model.training
        model.eval()
        for i in tqdm(mine, desc=f"pass@k eval (step {step})", disable=not show, leave=False):
            tokens, _ = sample_completions(model, tokenizer, render(self.problems[i]["messages"]), self.k,
                                           self.batch_size, lambda b: rollout_seed(self.seed, step, i, b, "eval"),
                                           **self.gen)
            rewards = [float(self.reward_fn(self.problems[i], tokenizer.decode(t)))
                       for t in tokens]
            local.append((i, rewards))
        model.train(was_training)
        if world > 1:
            local = gather_object(local)
        local.sort()
        outcomes = [[r > 0 for r in rewards] for _, rewards in local]
        out = {"eval_reward": sum(sum(r) for _, r in local) / max(sum(len(r) for _, r in local), 1)}
        for k in range(1, self.k + 1):
            out[f"pass@{k}"] = pass_at_k(outcomes, k)
            out[f"pass@{k}_unbiased"] = pass_at_k_unbiased(outcomes, k)
        return out

    def attach(self, trainer):
        """``_StashingCallback.attach``; also keeps the trainer, to log the step-0 evaluation."""
        self.trainer = trainer
        return super().attach(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        """Evaluate the starting policy at step 0, as nanochat does (``step % eval_every == 0``)."""
        super().on_train_begin(args, state, control, **kwargs)
        if self.every and self.every > 0 and state.global_step == 0 and getattr(self, "trainer", None) is not None:
            self.trainer.log(self.compute(args, state, **kwargs))

    def compute(self, args, state, model=None, processing_class=None, **kwargs) -> dict:
        acc = self.accelerator
        rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
        with gathered_for_generation(model, acc) as m:
            return self.evaluate(m, self.tokenizer or processing_class, state.global_step, rank, world,
                                 show=rank == 0 and not args.disable_tqdm)


