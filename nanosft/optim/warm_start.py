"""Optimizer warm start: SFT begins with the base checkpoint's optimizer state (nanochat ``load_optimizer=1``).

nanochat's chat_sft.py loads the pretraining optimizer's momentum buffers and then resets the LRs to
the SFT values: a warm Muon momentum avoids the first steps moving along a cold, noisy direction.
Two sources are read, whichever the base folder holds: a Hugging Face Trainer ``optimizer.pt``, or
nanochat's per-rank ``optim_<step>_rank<r>.pt`` shards of the latest step. State is matched to this
optimizer's parameters by name (or by transformers' group order) and shape; only state is loaded,
never LRs. When nothing is found the run says so and continues with a fresh optimizer.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import defaultdict

import torch
from torch import Tensor, nn
from transformers import Trainer

from .muon import NANOCHAT_GPT_ADAMW_GROUPS, is_nanochat_gpt, normuon_dim

logger = logging.getLogger(__name__)


_NANOCHAT_OPTIM = re.compile(r"optim_(\d+)_rank(\d+)\.pt$")


def _find_optimizer_files(base_path: str) -> tuple[str, list[str]]:
    """("hf", [optimizer.pt]) | ("nanochat", [rank files of the latest step]) | ("", [])."""
    if os.path.isfile(base_path):
        return ("nanochat" if _NANOCHAT_OPTIM.search(base_path) else "hf"), [base_path]
    hf = os.path.join(base_path, "optimizer.pt")
    if os.path.isfile(hf):
        return "hf", [hf]
    shards = [(m, f) for f in glob.glob(os.path.join(base_path, "optim_*_rank*.pt"))
              if (m := _NANOCHAT_OPTIM.search(f))]
    if not shards:
        return "", []
    last = max(int(m.group(1)) for m, _ in shards)
    return "nanochat", [f for m, f in sorted(shards, key=lambda s: int(s[0].group(2))) if int(m.group(1)) == last]


def _hf_saved_states(sd: dict, model: nn.Module | None) -> dict[str, dict]:
    """name -> saved per-param state of an HF/torch optimizer state_dict."""
    names = []
    if all("param_names" in g for g in sd["param_groups"]):
        for g in sd["param_groups"]:
            names += list(zip(g["params"], g["param_names"]))
    elif model is not None:
        # transformers' default optimizer: [decayed params, the rest], each in model order.
        decay = set(Trainer.get_decay_parameter_names(None, model))
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        order = [n for n in trainable if n in decay] + [n for n in trainable if n not in decay]
        ids = [i for g in sd["param_groups"] for i in g["params"]]
        if len(ids) != len(order):
            return {}
        names = list(zip(ids, order))
    return {name: sd["state"][i] for i, name in names if i in sd["state"]}


def _nanochat_saved_states(shards: list[dict], optimizer) -> dict[str, dict]:
    """name -> state from nanochat's per-rank MuonAdamW/DistMuonAdamW shards (nanochat/optim.py).

    nanochat's group order (nanochat/gpt.py setup_optimizers) is lm_head, wte, [value embeds,
    lambdas], then one Muon group per matrix shape (sorted), params in module order; a Muon
    group keeps stacked (K or ceil(K/W), m, n) buffers on its first param, and DistMuonAdamW
    shards AdamW state of large params along dim 0. Shards are concatenated in rank order. Older
    nanochat (separate AdamW and Muon, per-param ``momentum_buffer``) maps the same way.
    """
    ours = {name: (g, p) for g in optimizer.param_groups for name, p in zip(g["param_names"], g["params"])}
    by_role = {g["name"]: g["param_names"] for g in optimizer.param_groups}
    by_shape = defaultdict(list)
    for name in by_role.get("matrix", []):
        by_shape[tuple(ours[name][1].shape)].append(name)
    held = lambda idx: [s["state"][idx] for s in shards if idx in s["state"]]  # a param's state, per rank
    cat = lambda states, key: torch.cat([st[key] for st in states]) if len(states) > 1 else states[0][key]
    out, taken = {}, defaultdict(int)
    adam_roles = iter(["unembedding", "embedding"])
    for g in shards[0]["param_groups"]:
        states = held(g["params"][0])
        if not states:
            continue
        if "momentum_buffer" in states[0]:
            stacked = states[0]["momentum_buffer"].ndim == 3  # nanochat >= 2026: one stack per group
            items = ([(cat(states, "momentum_buffer")[k], k) for k in range(len(g["params"]))] if stacked
                     else [(held(i)[0]["momentum_buffer"], i) for i in g["params"] if held(i)])
            v = cat(states, "second_momentum_buffer") if stacked and "second_momentum_buffer" in states[0] else None
            for buf, k in items:
                shape = tuple(buf.shape)
                names = by_shape.get(shape, [])
                if taken[shape] >= len(names):
                    logger.warning("load_optimizer: nanochat %s matrix state has no counterpart here", shape)
                    continue
                out[names[taken[shape]]] = {"momentum_buffer": buf}
                if v is not None:
                    out[names[taken[shape]]]["second_momentum_buffer"] = v[k]
                taken[shape] += 1
        elif "exp_avg" in states[0]:
            role = next(adam_roles, None)
            if role is None or len(by_role.get(role, [])) != 1:
                continue
            out[by_role[role][0]] = {k: cat(states, k) if torch.is_tensor(t) and t.ndim else t
                                     for k, t in states[0].items()}
    return out


def _gather(states: list[dict], key: str, shape: tuple) -> Tensor | None:
    """One parameter's ``key`` buffer from W rank shards: concatenated along dim 0 when the ranks hold slices
    (nanochat DistMuonAdamW shards large AdamW params), else the first rank's replicated copy; None if neither
    has ``shape``."""
    if len(states) > 1:
        cat = torch.cat([st[key] for st in states])
        if tuple(cat.shape) == shape:
            return cat
    return states[0][key] if tuple(states[0][key].shape) == shape else None


def _nanochat_gpt_saved_states(shards: list[dict], optimizer) -> tuple[dict[str, dict], list[str]]:
    """name -> state from the current nanochat's ``optim_<step>_rank<r>.pt`` (nanochat/optim.py MuonAdamW), and
    the list of mismatches (empty when every group and shape matches).

    nanochat's groups (nanochat/gpt.py ``setup_optimizer``): six AdamW groups in ``NANOCHAT_GPT_ADAMW_GROUPS``
    order, params in module order (``step``, ``exp_avg``, ``exp_avg_sq`` each), then one Muon group per matrix
    shape, sorted by shape, whose FIRST param holds stacked ``momentum_buffer`` [k, m, n] and
    ``second_momentum_buffer`` [k, m, 1] or [k, 1, n] for its k matrices (with W ranks, each rank a slice of
    ceil(k / W); concatenated in rank order). Our "matrix" params of one shape, in model order, take the slices.
    """
    ours = {g.get("name"): list(zip(g["param_names"], g["params"])) for g in optimizer.param_groups}
    by_shape = defaultdict(list)
    for name, p in ours.get("matrix", []):
        by_shape[tuple(p.shape)].append(name)
    held = lambda idx: [s["state"][idx] for s in shards if idx in s["state"]]  # noqa: E731
    out, problems, seen_shapes = {}, [], set()
    roles = iter(g[0] for g in NANOCHAT_GPT_ADAMW_GROUPS)
    for g in shards[0]["param_groups"]:
        if g.get("kind", "adamw") == "adamw":
            role = next(roles, None)
            mine = ours.get(role, [])
            if len(mine) != len(g["params"]):
                problems.append(f"AdamW group {role!r}: the file has {len(g['params'])} parameters, this model "
                                f"{len(mine)} ({[n for n, _ in mine]})")
                continue
            for idx, (name, p) in zip(g["params"], mine):
                states = held(idx)
                if not states:
                    continue
                st = {"step": states[0].get("step", 0)}
                for key in ("exp_avg", "exp_avg_sq"):
                    st[key] = _gather(states, key, tuple(p.shape))
                    if st[key] is None:
                        problems.append(f"{name}: the file's {key} has shape {tuple(states[0][key].shape)} "
                                        f"(x{len(states)} ranks), the parameter {tuple(p.shape)}")
                out[name] = st
            continue
        states = held(g["params"][0])
        if not states:
            continue
        k = len(g["params"])
        mb = torch.cat([st["momentum_buffer"] for st in states])[:k]
        shape = tuple(mb.shape[1:])
        seen_shapes.add(shape)
        names = by_shape.get(shape, [])
        if len(names) != k:
            problems.append(f"Muon group of shape {shape}: the file has {k} matrices, this model {len(names)}")
            continue
        v = (torch.cat([st["second_momentum_buffer"] for st in states])[:k]
             if "second_momentum_buffer" in states[0] else None)
        for i, name in enumerate(names):
            out[name] = {"momentum_buffer": mb[i]} | ({"second_momentum_buffer": v[i]} if v is not None else {})
    for shape in sorted(set(by_shape) - seen_shapes):
        problems.append(f"Muon matrices of shape {shape} ({by_shape[shape][0]}, ...) have no group in the file")
    return out, problems


def _merge_state_dicts(sds: list[dict]) -> dict:
    """Concatenate optimizer state_dicts, renumbering each one's param indices after the previous."""
    merged, offset = {"param_groups": [], "state": {}}, 0
    for sd in sds:
        n = sum(len(g["params"]) for g in sd["param_groups"])
        merged["param_groups"] += [{**g, "params": [i + offset for i in g["params"]]} for g in sd["param_groups"]]
        merged["state"].update({i + offset: st for i, st in sd["state"].items()})
        offset += n
    return merged


def load_warm_start(optimizer: torch.optim.Optimizer, base_path: str | None,
                    model: nn.Module | None = None) -> bool:
    """Load the base checkpoint's momentum buffers into ``optimizer``; keep the SFT LRs.

    Looks in ``base_path`` (a folder or a file) for, in order: an HF Trainer ``optimizer.pt``
    (names from ``param_names`` when the groups carry them, else transformers' default
    [decayed, not decayed] order, which needs ``model``); nanochat's ``optim_<step>_rank<r>.pt``
    shards of the latest step. Each saved tensor is copied only where its shape equals ours:
    AdamW params take ``exp_avg``/``exp_avg_sq``/``step``; Muon params take ``momentum_buffer``
    (or an AdamW ``exp_avg``, the same EMA of gradients) and ``second_momentum_buffer``.
    Only state is loaded - never param groups - so LRs stay the SFT values (nanochat
    chat_sft.py resets them the same way); the Muon momentum warmup restarts at step 0.

    Returns:
        True if any parameter got state; False (with a log line saying what was looked for)
        when nothing usable was found - training then starts from a fresh optimizer.

    Raises:
        ValueError: a nanochat file for the current nanochat GPT whose groups or shapes differ from this
            model's (it must match exactly: :func:`_nanochat_gpt_saved_states`), naming each mismatch.
    """
    kind, files = _find_optimizer_files(base_path) if base_path else ("", [])
    if not files:
        logger.warning("load_optimizer: no optimizer state in %s (looked for optimizer.pt and "
                       "optim_<step>_rank<r>.pt); starting from a fresh optimizer.", base_path)
        return False
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    if kind == "nanochat" and isinstance(shards[0], list):  # older nanochat: [adamw_sd, muon_sd]
        shards = [_merge_state_dicts(s) for s in shards]
    if kind == "nanochat" and is_nanochat_gpt(model if model is not None else optimizer):
        saved, problems = _nanochat_gpt_saved_states(shards, optimizer)
        if problems:
            raise ValueError(f"load_optimizer: {files[0]} does not match this model (set load_optimizer: false to "
                             "start from a fresh optimizer):\n  " + "\n  ".join(problems))
    else:
        saved = _hf_saved_states(shards[0], model) if kind == "hf" else _nanochat_saved_states(shards, optimizer)
    loaded = total = 0
    for group in optimizer.param_groups:
        for name, p in zip(group.get("param_names", []), group["params"]):
            total += 1
            src = saved.get(name, {})
            if _copy_state(optimizer, group, p, src):
                loaded += 1
        if group.get("kind") == "muon":
            group["steps_done"] = 0
    if loaded == 0:
        logger.warning("load_optimizer: %s holds no state that maps onto this model (names/shapes differ); "
                       "starting from a fresh optimizer.", files[0])
        return False
    logger.info("load_optimizer: warm-started %d/%d parameters from %s (%s); LRs kept at the SFT values.",
                loaded, total, files[0] if len(files) == 1 else f"{len(files)} rank shards", kind)
    return True


def _copy_state(optimizer, group: dict, p: Tensor, src: dict) -> bool:
    match = lambda t: torch.is_tensor(t) and tuple(t.shape) == tuple(p.shape)
    if group.get("kind") == "muon":
        buf = src.get("momentum_buffer", src.get("exp_avg"))
        if not match(buf):
            return False
        state = optimizer.state[p]
        state["momentum_buffer"] = buf.to(p).clone()
        v = src.get("second_momentum_buffer")
        if group.get("beta2") is not None and torch.is_tensor(v):
            shape = (p.shape[0], 1) if normuon_dim(p.shape) == -1 else (1, p.shape[1])
            if tuple(v.shape) == shape:
                state["second_momentum_buffer"] = v.to(p).clone()
        return True
    if not (match(src.get("exp_avg")) and match(src.get("exp_avg_sq"))):
        return False
    step = src.get("step", 0)
    optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": src["exp_avg"].to(p).clone(),
                          "exp_avg_sq": src["exp_avg_sq"].to(p).clone()}
    return True
