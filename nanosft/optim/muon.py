"""MuonAdamW: nanochat's combined optimizer, as one torch optimizer that transformers can build.

Muon updates every matrix inside the transformer blocks with an orthogonalized Nesterov momentum;
AdamW updates the token embedding, the lm_head and every 1-D/scalar parameter, each group with its
own learning rate. The math follows nanochat (`nanochat/optim.py`, `nanochat/gpt.py`
`setup_optimizers`), step by step:

    momentum (Nesterov) -> MuonEq -> Polar Express (or Newton-Schulz) -> Muon+ renorm
    -> NorMuon variance reduction -> cautious weight decay + update (lr * sqrt(max(1, m/n)))

Design and its trade-off in numbers:

- One object, parameter groups tagged ``kind`` ("muon" | "adamw") and ``name`` ("matrix",
  "embedding", "unembedding", "scalar"), so one LR scheduler and one checkpoint cover both halves.
- The AdamW half reuses ``torch.optim.adamw.adamw`` (its math equals nanochat's fused AdamW and
  its state layout equals ``torch.optim.AdamW``'s, so HF ``optimizer.pt`` files warm-start it).
  The Muon half is ours: ``torch.optim.Muon`` has one fixed Newton-Schulz triple, always casts to
  bf16, and has no Polar Express, MuonEq, NorMuon or cautious weight decay.
- Muon costs matmuls, AdamW costs memory traffic. One d12 block's six matrices take ~134 GFLOP
  of Polar Express per step (less time with ``compute_dtype=torch.bfloat16``), where AdamW only
  reads and writes the same 7M weights a few times.
  So on CPU a Muon step costs many AdamW steps (`bench/muon.py` measures it); on a GPU it is a few
  percent of a training step. In exchange Muon keeps one buffer per matrix (plus a NorMuon vector
  per row or column) where AdamW keeps two: matrix optimizer state is half AdamW's (d12 in
  total, embeddings included: 1.09 GB vs 1.42 GB).
- Distributed: optimizer state stays replicated on every rank (so HF Trainer's rank-0
  ``optimizer.pt`` is complete), but the orthogonalization - the only expensive part - is split:
  same-shape matrices are stacked, each rank orthogonalizes ceil(K/world) of them and the results
  are all-gathered (nanochat's ``DistMuonAdamW`` pattern). Gradients arrive averaged by DDP (accelerate).

DeepSpeed ZeRO partitions parameters into flat 1-D shards, so no client Muon can run there; use
DeepSpeed's own Muon through :func:`prepare_deepspeed_muon` (its math differs, see there).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.adamw import adamw as torch_adamw

logger = logging.getLogger(__name__)

# Polar Express coefficients (a, b, c) for 5 iterations, from arXiv:2505.16932 (Amsel, Persson,
# Musco, Gower), as nanochat/optim.py uses them (num_iters=5, safety_factor=2e-2, cushion=2).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Newton-Schulz quintic, one fixed triple: Keller Jordan's Muon blog
# (https://kellerjordan.github.io/posts/muon/), older nanochat/muon.py.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)

# nanochat sets AdamW LRs for d_model 768 and scales them by (d_model / 768) ** -0.5 (nanochat/gpt.py).
REFERENCE_D_MODEL = 768
# The four LRs of nanochat's optimizer groups, and their defaults: nanochat scripts/base_train.py (unembedding
# 0.008 in some newer runs; nanosft.schedule inherits a base checkpoint's own values).
LR_KEYS = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr")
NANOCHAT_DEFAULT_LRS = {"embedding_lr": 0.3, "unembedding_lr": 0.004, "matrix_lr": 0.02, "scalar_lr": 0.5}
# Defaults for a base that was not pretrained with Muon and records no LRs (any HF model): nanochat's values above
# are for training from scratch and would wreck pretrained weights. These are configs/smollm2-135m.yaml's, the Muon
# arm of the optimizer A/B on SmolLM2-135M (bench/results/optimizer_ab.txt): a Muon step moves each matrix by ~1e-4
# RMS; the embedding LR lets the appended nanochat special-token rows learn in ~50 steps; scalar_lr suits norm gains.
PRETRAINED_FINETUNE_LRS = {"embedding_lr": 0.002, "unembedding_lr": 0.002, "matrix_lr": 0.005, "scalar_lr": 1e-4}


# -----------------------------------------------------------------------------
# The Muon math, one function per formula (each works on one matrix or a stack (..., m, n))

def orthogonalize(X: Tensor, method: str = "polar_express", steps: int = 5,
                  row_equilibration: bool = True, compute_dtype: torch.dtype | None = None) -> Tensor:
    """Approximate the polar factor U V^T of X = U S V^T (nanochat/optim.py, ``muon_step_fused``).

    Args:
        X: (..., m, n) float tensor; leading dims are a batch of independent matrices.
        method: "polar_express" - per-iteration coefficients of arXiv:2505.16932, after scaling
            X by 1 / (||X||_F * 1.01 + 1e-6) (nanochat); or "newton_schulz" - the fixed quintic
            (3.4445, -4.7750, 2.0315) after X / (||X||_F + 1e-7) (Keller Jordan's Muon blog).
        steps: iterations; Polar Express has coefficients for at most 5.
        row_equilibration: MuonEq (arXiv:2603.28254, nanochat): first rescale every row to the
            mean row norm, ||X||_F / sqrt(m), dividing by max(||row||, 1e-6).
        compute_dtype: dtype of the iteration (nanochat: bf16 on GPU); None keeps X's dtype.

    Returns:
        (..., m, n) tensor in X's dtype with singular values near 1 (Polar Express) or in about
        [0.7, 1.2] (Newton-Schulz).

    Raises:
        ValueError: unknown method, X with fewer than 2 dims, or more Polar Express steps than 5.

    Wide matrices (m <= n) iterate A = X X^T, X <- a X + (b A + c A^2) X; tall ones use
    A = X^T X, X <- a X + X (b A + c A^2), so A is always the smaller Gram matrix.
    """
    if X.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix (..., m, n), got shape {tuple(X.shape)}")
    if method == "polar_express":
        if steps > len(POLAR_EXPRESS_COEFFS):
            raise ValueError(f"Polar Express has coefficients for {len(POLAR_EXPRESS_COEFFS)} steps, got {steps}")
        coeffs, scale, eps = POLAR_EXPRESS_COEFFS[:steps], 1.01, 1e-6
    elif method == "newton_schulz":
        coeffs, scale, eps = (NEWTON_SCHULZ_COEFFS,) * steps, 1.0, 1e-7
    else:
        raise ValueError(f"orthogonalizer must be 'polar_express' or 'newton_schulz', got {method!r}")
    out_dtype = X.dtype
    X = X.to(compute_dtype or X.dtype)
    if row_equilibration:
        target = X.float().norm(dim=(-2, -1), keepdim=True) / math.sqrt(X.size(-2))
        row_norm = X.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        X = X * (target / row_norm).to(X.dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in coeffs:
        A = X.mT @ X if tall else X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.ndim == 3 else b * A + c * (A @ A)
        X = a * X + (X @ B if tall else B @ X)
    return X.to(out_dtype)


def nesterov_momentum(grad: Tensor, buf: Tensor, momentum: float) -> Tensor:
    """Nesterov momentum as nanochat writes it: buf <- lerp(buf, G, 1 - mu); return lerp(G, buf, mu).

    ``buf`` (same shape as ``grad``) is updated in place; ``grad`` is left untouched.
    Source: nanochat/optim.py (``muon_step_fused``), Keller Jordan's Muon blog.
    """
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum)


def momentum_at(step: int, momentum: float = 0.95, start: float = 0.85, warmup_steps: int = 300) -> float:
    """Muon momentum at 0-based ``step``: linear from ``start`` to ``momentum`` over ``warmup_steps``.

    Source: nanochat/scripts/chat_sft.py and base_train.py ``get_muon_momentum``
    (frac = min(step / 300, 1); (1 - frac) * 0.85 + frac * 0.95).
    """
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * start + frac * momentum


def renormalize(g: Tensor) -> Tensor:
    """Muon+ renormalization (arXiv:2602.21545, nanochat): scale each (m, n) matrix so that
    ||g||_F = sqrt(min(m, n)), the norm of an exactly semi-orthogonal matrix."""
    target = math.sqrt(min(g.size(-2), g.size(-1)))
    return g * (target / g.float().norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6)).to(g.dtype)


def normuon_dim(shape) -> int:
    """NorMuon reduction dim: -1 (one second moment per row) when m >= n, else -2 (per column)."""
    return -1 if shape[-2] >= shape[-1] else -2


def normuon(g: Tensor, v: Tensor, beta2: float) -> Tensor:
    """NorMuon variance reduction (arXiv:2510.05491, nanochat/optim.py), ||g||_F preserved.

    Args:
        g: (..., m, n) orthogonalized update.
        v: factored second moment, (..., m, 1) when m >= n else (..., 1, n); updated in place as
            v <- lerp(v, mean(g^2 over the other dim), 1 - beta2).
        beta2: EMA coefficient (nanochat 0.95 in older runs; 0.9 at the HEAD this project follows).

    Returns:
        g * rsqrt(max(v, 1e-10)), rescaled so each matrix keeps its Frobenius norm.
    """
    red = normuon_dim(g.shape)
    v_mean = g.float().square().mean(dim=red, keepdim=True)
    size = g.size(red)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * size).sqrt()
    v.lerp_(v_mean.to(v.dtype), 1 - beta2)
    step = v.clamp_min(1e-10).rsqrt()
    v_norm_new = (v_mean * size * step.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return g * (step * (v_norm / v_norm_new.clamp_min(1e-10))).to(g.dtype)


def muon_lr(lr: float, shape) -> float:
    """Effective Muon LR: lr * sqrt(max(1, m / n)) (Keller Jordan's Muon, nanochat/optim.py)."""
    return lr * max(1.0, shape[-2] / shape[-1]) ** 0.5


def apply_update(p: Tensor, g: Tensor, lr: float, weight_decay: float, cautious: bool) -> None:
    """W <- W - lr * g - lr * wd * W * mask, in place.

    Cautious weight decay (arXiv:2510.12402, nanochat): mask = [g * W >= 0], i.e. decay only the
    coordinates where the update already moves W toward zero; plain decoupled decay uses mask = 1.
    """
    if weight_decay == 0:
        p.sub_(lr * g)
        return
    decay = p * (g * p >= 0) if cautious else p
    p.sub_(lr * g + (lr * weight_decay) * decay)


# -----------------------------------------------------------------------------
# Parameter grouping

def _shape(p: Tensor) -> tuple:
    # Under deepspeed.zero.Init a parameter is a flat placeholder; its layer shape is ds_shape.
    return tuple(getattr(p, "ds_shape", None) or p.shape)


# nanochat's GPT.setup_optimizer (nanochat/gpt.py, commit 92d63d4) for the current nanochat GPT, AdamW groups in
# nanochat's order: (group name, base LR keyword or None for a fixed LR, LR factor, scaled by (d_model/768)^-0.5,
# betas, weight decay). Every matrix inside the blocks (ve_gate included) is Muon ("matrix").
NANOCHAT_GPT_ADAMW_GROUPS = (
    ("unembedding", "unembedding_lr", 1.0, True, (0.8, 0.96), 0.01),
    ("embedding", "embedding_lr", 1.0, True, (0.8, 0.995), 0.001),
    ("value_embedding", "embedding_lr", 0.5, True, (0.8, 0.995), 0.01),
    ("resid_lambda", "scalar_lr", 0.01, False, (0.8, 0.95), 0.05),
    ("x0_lambda", "scalar_lr", 1.0, False, (0.96, 0.95), 0.0),
    ("smear", None, 0.2, False, (0.8, 0.95), 0.0),
)
# nanochat's parameter order inside the "smear" group (warm start maps the saved state by position)
_SMEAR_ORDER = ("smear_gate.weight", "smear_lambda", "backout_lambda")


def is_nanochat_gpt(model: nn.Module) -> bool:
    """True for nanosft's ``NanoChatGPTForCausalLM`` (also wrapped by PEFT or DeepSpeed: read from ``config``)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    return getattr(config, "model_type", None) == "nanochat_gpt"


def nanochat_gpt_role(name: str, ndim: int) -> str:
    """The optimizer group of one ``NanoChatGPTForCausalLM`` parameter, by name (see NANOCHAT_GPT_ADAMW_GROUPS).

    Works on PEFT/DeepSpeed names (prefixes ignored). Matrices (>= 2 dims) inside ``model.layers`` are "matrix";
    1-D parameters inside the layers (none in nanochat) would be "scalar".
    """
    if ".layers." in name or name.startswith("layers."):
        return "matrix" if ndim >= 2 else "scalar"
    if name.endswith("lm_head.weight"):
        return "unembedding"
    if name.endswith("embed_tokens.weight"):
        return "embedding"
    if ".value_embeds." in name or name.startswith("value_embeds."):
        return "value_embedding"
    if name.endswith("resid_lambdas"):
        return "resid_lambda"
    if name.endswith("x0_lambdas"):
        return "x0_lambda"
    if any(name.endswith(s) for s in _SMEAR_ORDER):
        return "smear"
    return "matrix" if ndim >= 2 else "scalar"


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort trainable parameters into nanochat's groups, for any HF causal LM.

    Returns ``{"matrix", "embedding", "unembedding", "scalar"}`` -> [(name, param)], model order:
    ``embedding`` = every nn.Embedding weight (token, and position embeddings if any);
    ``unembedding`` = ``model.get_output_embeddings()`` unless tied to the input embedding;
    ``matrix`` = every other parameter with >= 2 dims (attention and MLP weights: Muon);
    ``scalar`` = 0-/1-D parameters (norm gains, biases, lambdas: AdamW).
    For the current nanochat GPT (:func:`is_nanochat_gpt`) the groups are nanochat's own, by name
    (:func:`nanochat_gpt_role`): "matrix" plus the AdamW groups of ``NANOCHAT_GPT_ADAMW_GROUPS``, so
    ``value_embeds`` and the smear gate never land on Muon while ``ve_gate`` does.
    Shapes are read from ``ds_shape`` when present, so models built under zero.Init keep their tags.
    """
    if is_nanochat_gpt(model):
        groups = {"matrix": [], **{g[0]: [] for g in NANOCHAT_GPT_ADAMW_GROUPS}, "scalar": []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups[nanochat_gpt_role(name, len(_shape(p)))].append((name, p))
        rank = lambda np_: next(i for i, s in enumerate(_SMEAR_ORDER) if np_[0].endswith(s))  # noqa: E731
        groups["smear"].sort(key=rank)
        return groups
    embed_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} - embed_ids if head is not None else set()
    groups = {"matrix": [], "embedding": [], "unembedding": [], "scalar": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embed_ids:
            groups["embedding"].append((name, p))
        elif id(p) in head_ids:
            groups["unembedding"].append((name, p))
        elif len(_shape(p)) >= 2:
            groups["matrix"].append((name, p))
        else:
            groups["scalar"].append((name, p))
    return groups


def _d_model(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if d is None and hasattr(model, "get_input_embeddings"):
        d = _shape(model.get_input_embeddings().weight)[-1]
    if d is None:
        raise ValueError("build_optimizer: cannot find d_model (config.hidden_size); pass d_model=")
    return int(d)


# -----------------------------------------------------------------------------
# The optimizer

_MUON_DEFAULTS = dict(momentum=0.95, momentum_start=0.85, momentum_warmup_steps=300, beta2=0.9,
                      weight_decay=0.0, cautious=True, orthogonalizer="polar_express", ns_steps=5,
                      row_equilibration=True, renormalize=True, steps_done=0)
_ADAMW_DEFAULTS = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the matrices, AdamW for the rest, in one optimizer (nanochat/optim.py MuonAdamW).

    Args:
        param_groups: dicts with ``params``, ``lr``, ``kind`` ("muon" | "adamw"), an optional
            ``name`` and ``param_names``. Muon groups take ``momentum`` (0.95), ``momentum_start``
            (0.85), ``momentum_warmup_steps`` (300), ``beta2`` (0.9; None turns NorMuon off),
            ``weight_decay`` (0), ``cautious`` (True), ``orthogonalizer`` ("polar_express" |
            "newton_schulz"), ``ns_steps`` (5), ``row_equilibration`` (True), ``renormalize``
            (True). AdamW groups take ``betas`` ((0.8, 0.95)), ``eps`` (1e-10), ``weight_decay`` (0).
            Muon params must have >= 2 dims; a Muon group may mix shapes.
        compute_dtype: dtype of the orthogonalization; None = bf16 on CUDA, else the param dtype.
        shard_orthogonalization: split the orthogonalization across ranks and all-gather; None =
            on whenever torch.distributed is initialized with world size > 1.

    ``orthogonalized`` counts the matrices this process orthogonalized (tests use it to show
    Muon ran and that work was split). Muon state per parameter: ``momentum_buffer`` (param
    shape) and ``second_momentum_buffer`` ((m, 1) or (1, n)); AdamW state is torch.optim.AdamW's.

    Raises:
        ValueError: unknown ``kind`` or a Muon parameter with fewer than 2 dims.
    """

    def __init__(self, param_groups: list[dict], *, compute_dtype: torch.dtype | None = None,
                 shard_orthogonalization: bool | None = None):
        groups = []
        for group in param_groups:
            kind = group.get("kind")
            if kind not in ("muon", "adamw"):
                raise ValueError(f"param group kind must be 'muon' or 'adamw', got {kind!r}")
            defaults = _MUON_DEFAULTS if kind == "muon" else _ADAMW_DEFAULTS
            group = {**defaults, **group}
            if kind == "muon":
                bad = [tuple(p.shape) for p in group["params"] if p.ndim < 2]
                if bad:
                    raise ValueError(f"Muon needs matrices; group {group.get('name')!r} has shapes {bad}")
            groups.append(group)
        super().__init__(groups, defaults={})
        self.compute_dtype = compute_dtype
        self.shard_orthogonalization = shard_orthogonalization
        self.orthogonalized = 0

    # --- distributed helpers
    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # --- the two halves
    def _step_adamw(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        # torch's AdamW equals nanochat's adamw_step_fused: decoupled decay, lerp moments,
        # bias corrections, p -= lr / bias1 * m / (sqrt(v / bias2) + eps).
        torch_adamw(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=False)

    def _step_muon(self, group: dict, rank: int, world: int, shard: bool) -> None:
        mu = momentum_at(group["steps_done"], group["momentum"], group["momentum_start"],
                         group["momentum_warmup_steps"])
        buckets = defaultdict(list)  # same-shape matrices are stacked, as nanochat does
        for p in group["params"]:
            if p.grad is not None:
                buckets[tuple(p.shape)].append(p)
        for shape, params in buckets.items():
            for p in params:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    if group["beta2"] is not None:
                        v_shape = shape[:-1] + (1,) if normuon_dim(shape) == -1 else shape[:-2] + (1, shape[-1])
                        state["second_momentum_buffer"] = torch.zeros(v_shape, dtype=p.dtype, device=p.device)
            g = torch.stack([nesterov_momentum(p.grad, self.state[p]["momentum_buffer"], mu) for p in params])
            g = self._orthogonalize_stack(g, group, rank, world, shard)
            if group["renormalize"]:
                g = renormalize(g)
            if group["beta2"] is not None:
                v = torch.stack([self.state[p]["second_momentum_buffer"] for p in params])
                g = normuon(g, v, group["beta2"])
                torch._foreach_copy_([self.state[p]["second_momentum_buffer"] for p in params], list(v.unbind(0)))
            lr = muon_lr(group["lr"], shape)
            for p, gi in zip(params, g.unbind(0)):
                apply_update(p, gi.to(p.dtype), lr, group["weight_decay"], group["cautious"])
        group["steps_done"] += 1

    def _orthogonalize_stack(self, g: Tensor, group: dict, rank: int, world: int, shard: bool) -> Tensor:
        compute_dtype = self.compute_dtype or (torch.bfloat16 if g.is_cuda else None)
        kwargs = dict(method=group["orthogonalizer"], steps=group["ns_steps"],
                      row_equilibration=group["row_equilibration"], compute_dtype=compute_dtype)
        K = g.size(0)
        if not shard or world == 1:
            self.orthogonalized += K
            return orthogonalize(g, **kwargs)
        # Each rank orthogonalizes its chunk of ceil(K / world) matrices, then all-gather
        # (nanochat DistMuonAdamW). Zero padding keeps every rank's tensor the same size.
        chunk = -(-K // world)
        start, stop = min(rank * chunk, K), min((rank + 1) * chunk, K)
        mine = torch.zeros((chunk,) + tuple(g.shape[1:]), dtype=g.dtype, device=g.device)
        if stop > start:
            mine[: stop - start] = orthogonalize(g[start:stop], **kwargs)
            self.orthogonalized += stop - start
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        return torch.cat(gathered)[:K]

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every group; returns ``closure()`` if given (torch convention)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = self._world()
        shard = world > 1 if self.shard_orthogonalization is None else self.shard_orthogonalization
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            else:
                self._step_muon(group, rank, world, shard)
        return loss


def adamw_group_specs(model: nn.Module, scale: float, *, embedding_lr: float, unembedding_lr: float,
                      scalar_lr: float, adam_betas=(0.8, 0.95), adam_eps: float = 1e-10) -> dict[str, dict]:
    """AdamW settings (kind, lr before ``init_lr_frac``, betas, eps, weight_decay) of every non-Muon group.

    ``scale`` = (d_model / 768) ** -0.5. Any HF model: "embedding" and "unembedding" at their LR * scale,
    "scalar" at ``scalar_lr``, all with ``adam_betas``, no weight decay. The current nanochat GPT: nanochat's
    table (``NANOCHAT_GPT_ADAMW_GROUPS``: per-group betas, eps 1e-10 and weight decays, value embeddings at
    half the embedding LR, resid lambdas at 0.01 * scalar_lr, smear/backout at a fixed 0.2).
    """
    adam = dict(kind="adamw", betas=tuple(adam_betas), eps=adam_eps, weight_decay=0.0)
    specs = {"embedding": dict(adam, lr=embedding_lr * scale), "unembedding": dict(adam, lr=unembedding_lr * scale),
             "scalar": dict(adam, lr=scalar_lr)}
    if is_nanochat_gpt(model):
        base = {"embedding_lr": embedding_lr, "unembedding_lr": unembedding_lr, "scalar_lr": scalar_lr, None: 1.0}
        for name, key, factor, scaled, betas, wd in NANOCHAT_GPT_ADAMW_GROUPS:
            specs[name] = dict(kind="adamw", lr=base[key] * factor * (scale if scaled else 1.0), betas=betas,
                               eps=1e-10, weight_decay=wd)
    return specs


# -----------------------------------------------------------------------------
# Factory: the transformers / TRL entry point

def build_optimizer(model: nn.Module | None = None, *, optimizer: str = "muon",
                    embedding_lr: float = NANOCHAT_DEFAULT_LRS["embedding_lr"],
                    unembedding_lr: float = NANOCHAT_DEFAULT_LRS["unembedding_lr"],
                    matrix_lr: float = NANOCHAT_DEFAULT_LRS["matrix_lr"],
                    scalar_lr: float = NANOCHAT_DEFAULT_LRS["scalar_lr"], adamw_matrix_lr: float | None = None,
                    lr: float | None = None, init_lr_frac: float = 0.8, weight_decay: float = 0.0,
                    adam_betas: tuple[float, float] = (0.8, 0.95), adam_eps: float = 1e-10,
                    momentum: float = 0.95, momentum_warmup_steps: int = 300,
                    compute_dtype: torch.dtype | None = None, shard_orthogonalization: bool | None = None,
                    d_model: int | None = None):
    """Build nanochat's SFT optimizer for ``model`` (any HF causal LM), or AdamW with the same groups.

    Use with transformers/TRL as ``optimizer_cls_and_kwargs=(build_optimizer, {...})``: the
    Trainer calls a factory as ``factory()(model, **kwargs)`` (transformers 5.23,
    ``Trainer.create_optimizer``); called without a model this function returns itself for that.

    Groups (see :func:`split_parameters`), each tagged ``kind`` and ``name``; the LRs are
    nanochat's (scripts/base_train.py, chat_sft.py, gpt.py ``setup_optimizers``):

    - "matrix": Muon, ``matrix_lr`` (0.02), ``weight_decay``, ``momentum`` warmed up from 0.85 over
      ``momentum_warmup_steps``; the effective LR of an (m, n) matrix is further scaled by
      sqrt(max(1, m / n)) in the step; the rest of the Muon math is ``MuonAdamW``'s defaults.
    - "embedding" (``embedding_lr`` 0.3), "unembedding" (``unembedding_lr`` 0.004): AdamW, scaled
      by (d_model / 768) ** -0.5; betas ``adam_betas``, eps ``adam_eps``, no weight decay.
    - "scalar": AdamW, ``scalar_lr`` (0.5, unscaled, as nanochat's lambdas). nanochat tuned it for
      residual lambdas, not norm gains or biases: lower it for models that have those (a warning
      says so).

    Every LR is then multiplied by ``init_lr_frac`` (0.8, chat_sft.py) here, and stored as both
    ``lr`` and ``initial_lr``; :func:`nanosft.optim.schedule.build_scheduler` multiplies ``initial_lr``.
    ``optimizer="adamw"`` returns ``torch.optim.AdamW`` with the same groups; its "matrix" group
    uses ``adamw_matrix_lr`` (default: ``unembedding_lr``, the AdamW LR nanochat gives the other
    dense matrix), scaled like the other AdamW LRs, and ``weight_decay``. With ``lr`` set, every
    group instead gets that one LR, unscaled (the usual Hugging Face fine-tuning of an AdamW-pretrained
    model: ``learning_rate``), with ``weight_decay`` on the "matrix" group.

    Returns:
        ``MuonAdamW`` or ``torch.optim.AdamW``; every group has ``kind``, ``name``, ``param_names``.

    Raises:
        ValueError: unknown ``optimizer``, or ``lr`` with Muon; TypeError: unknown keyword (typos in a config
        fail loudly rather than being ignored).
    """
    if model is None:
        return build_optimizer
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    if lr is not None and optimizer != "adamw":
        raise ValueError("build_optimizer: lr (one LR for every group) needs optimizer='adamw'")
    scale = ((d_model or _d_model(model)) / REFERENCE_D_MODEL) ** -0.5
    parts = split_parameters(model)
    if parts["scalar"] and scalar_lr > 0.05 and lr is None:
        logger.warning("build_optimizer: %d 1-D parameters (e.g. %s) get AdamW at scalar_lr=%g, nanochat's LR "
                       "for residual lambdas; set scalar_lr lower (e.g. 1e-3) for norm gains and biases.",
                       len(parts["scalar"]), parts["scalar"][0][0], scalar_lr)
    adam = dict(kind="adamw", betas=tuple(adam_betas), eps=adam_eps, weight_decay=0.0)
    specs = adamw_group_specs(model, scale, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr,
                              scalar_lr=scalar_lr, adam_betas=adam_betas, adam_eps=adam_eps)
    if optimizer == "muon":
        specs["matrix"] = dict(kind="muon", lr=matrix_lr, momentum=momentum,
                               momentum_warmup_steps=momentum_warmup_steps, weight_decay=weight_decay)
    elif lr is not None:  # one LR for every group, as the Hugging Face Trainer's AdamW
        specs = {name: dict(adam, lr=lr) for name in parts}
        specs["matrix"]["weight_decay"] = weight_decay
    else:
        lr = (unembedding_lr if adamw_matrix_lr is None else adamw_matrix_lr) * scale
        specs["matrix"] = dict(adam, lr=lr, weight_decay=weight_decay)
    groups = []
    for name in parts:
        if not parts[name]:
            continue
        spec = specs[name]
        spec["lr"] = spec["initial_lr"] = spec["lr"] * init_lr_frac
        groups.append(dict(spec, name=name, params=[p for _, p in parts[name]],
                           param_names=[n for n, _ in parts[name]]))
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=tuple(adam_betas), eps=adam_eps)
    return MuonAdamW(groups, compute_dtype=compute_dtype, shard_orthogonalization=shard_orthogonalization)


# -----------------------------------------------------------------------------
# DeepSpeed ZeRO: use DeepSpeed's own Muon, with nanochat's groups

# the build_optimizer keywords that DeepSpeed's MuonWithAuxAdam can honour (prepare_deepspeed_muon)
DEEPSPEED_MUON_KEYS = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "init_lr_frac", "adam_betas",
                       "adam_eps", "momentum", "weight_decay", "d_model")


def prepare_deepspeed_muon(model: nn.Module, ds_config: dict, **build_kwargs):
    """DeepSpeed's ``MuonWithAuxAdam`` with nanochat's groups and LRs, and a ZeRO config that lets it run.

    ZeRO hands a client optimizer flat 1-D partitions, so :class:`MuonAdamW` cannot run there.
    DeepSpeed 0.19.8's ZeRO-1/2/3 instead orthogonalizes inside the engine for a
    ``MuonWithAuxAdam`` (``deepspeed/runtime/zero/muon/``), for parameters tagged ``use_muon``.
    This builds that optimizer from :func:`split_parameters` (so each AdamW group keeps its own LR,
    which DeepSpeed's ``{"type": "Muon"}`` block cannot: it gives one ``adam_lr`` to embedding and
    lm_head), tags the matrices ``use_muon`` (shapes from ``ds_shape``, so zero.Init models keep
    their tags), and returns a fixed copy of ``ds_config``:

    - ``gradient_clipping`` -> 0. DeepSpeed clips the already-orthogonalized update, which with
      max_grad_norm 1.0 shrinks Muon updates (an orthogonal m x n matrix has norm sqrt(min(m, n))).
      Set ``max_grad_norm=0`` in the TrainingArguments too, or transformers fills "auto" with 1.0.
    - ZeRO-3: ``zero_optimization.reduce_scatter`` -> false (DeepSpeed refuses Muon with it).

    DeepSpeed's Muon math differs from nanochat's: Newton-Schulz quintic (3.4445, -4.7750,
    2.0315) ("gram" variant) after X / (||X||_F + 1e-7) instead of Polar Express; no MuonEq,
    Muon+ renormalization, NorMuon or cautious weight decay; decoupled weight decay; a fixed
    momentum (no warmup under ZeRO-3; ZeRO-1/2 read ``group["momentum"]`` each step). It shares
    Nesterov momentum, lr * sqrt(max(1, m/n)), and the AdamW math.

    Args:
        model: the model about to be passed to ``deepspeed.initialize`` / the Trainer.
        ds_config: DeepSpeed config dict; must not have an ``optimizer`` block.
        build_kwargs: LR keywords of :func:`build_optimizer` (embedding_lr, unembedding_lr,
            matrix_lr, scalar_lr, init_lr_frac, adam_betas, adam_eps, momentum, weight_decay, d_model).

    Returns:
        (optimizer, ds_config): pass both to ``deepspeed.initialize(model=..., optimizer=...,
        config=...)``, or return the optimizer from the Trainer's ``create_optimizer``.

    Raises:
        ValueError: ds_config has an ``optimizer`` block, or an explicit positive
        ``gradient_clipping``, or ZeRO-3 with ``reduce_scatter: true`` set explicitly.
    """
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam  # heavy (CUDA ops); DeepSpeed runs only

    config = {**ds_config, "zero_optimization": dict(ds_config.get("zero_optimization", {}))}
    if "optimizer" in config:
        raise ValueError("prepare_deepspeed_muon: remove the 'optimizer' block from the DeepSpeed config; "
                         "nanosft builds DeepSpeed's MuonWithAuxAdam itself with per-group LRs.")
    clip = config.get("gradient_clipping", "auto")
    if clip not in ("auto", 0, 0.0, None):
        raise ValueError(f"gradient_clipping={clip}: DeepSpeed clips the orthogonalized Muon update; "
                         "set it to 0 (and max_grad_norm=0) with optimizer: muon.")
    config["gradient_clipping"] = 0.0
    zero = config["zero_optimization"]
    if zero.get("stage") == 3:
        if zero.get("reduce_scatter") is True:
            raise ValueError("ZeRO-3 with Muon needs zero_optimization.reduce_scatter: false.")
        zero["reduce_scatter"] = False

    unknown = set(build_kwargs) - set(DEEPSPEED_MUON_KEYS)
    if unknown:
        raise TypeError(f"prepare_deepspeed_muon: unsupported keywords {sorted(unknown)}")
    defaults = inspect.signature(build_optimizer).parameters
    kw = {k: defaults[k].default for k in DEEPSPEED_MUON_KEYS}
    kw.update(build_kwargs)
    scale = ((kw["d_model"] or _d_model(model)) / REFERENCE_D_MODEL) ** -0.5
    specs = adamw_group_specs(model, scale, embedding_lr=kw["embedding_lr"], unembedding_lr=kw["unembedding_lr"],
                              scalar_lr=kw["scalar_lr"], adam_betas=kw["adam_betas"], adam_eps=kw["adam_eps"])
    groups = []
    for name, named in split_parameters(model).items():  # assigned by name: never wte/value_embeds/smear on Muon
        if not named:
            continue
        use_muon = name == "matrix"
        for _, p in named:
            p.use_muon = use_muon
        lr = (kw["matrix_lr"] if use_muon else specs[name]["lr"]) * kw["init_lr_frac"]
        extra = (dict(momentum=kw["momentum"], weight_decay=kw["weight_decay"], ns_method="gram") if use_muon
                 else {k: specs[name][k] for k in ("betas", "eps", "weight_decay")})
        if use_muon:  # MuonWithAuxAdam sorts Muon params by size; pre-sort so names stay aligned
            named = sorted(named, key=lambda np_: np_[1].size(), reverse=True)
        groups.append(dict(params=[p for _, p in named], param_names=[n for n, _ in named], use_muon=use_muon,
                           kind="muon" if use_muon else "adamw", name=name, lr=lr, initial_lr=lr, **extra))
    for _, p in model.named_parameters():  # frozen params still need a tag for DeepSpeed
        if not hasattr(p, "use_muon"):
            p.use_muon = False
    return MuonWithAuxAdam(groups), config
