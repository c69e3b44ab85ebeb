"""Rewards and pass@k for reinforcement learning on verifiable tasks (nanochat/scripts/chat_rl.py).

A reward function maps one problem and one completion to a float:
``reward(problem: dict, completion: str) -> float``. ``problem`` is a dict in nanochat's
conversation form (``{"messages": [user, assistant], "reference": "72", ...}``, see
``nanosft.eval.chatcore``); ``completion`` is the decoded text of the sampled tokens (tool calls and their
outputs included, special tokens kept as text, e.g. ``<|python_start|>``, as nanochat decodes).

Built in (``REWARDS``): ``gsm8k`` and ``spellingbee``, both 1.0 when the completion's final
``#### N`` answer equals the reference and 0.0 otherwise (nanochat/tasks/gsm8k.py ``reward``; SpellingBee
uses the same scoring). A config can name any other function by its dotted path, ``package.module.fn``
or ``package.module:fn`` (``resolve_reward``).

pass@k (``pass_at_k``): the fraction of problems with a correct answer among their first k samples
(nanochat/scripts/chat_rl.py ``run_gsm8k_eval``), and the unbiased estimator
``1 - C(n - c, k) / C(n, k)`` of Chen et al. 2021, "Evaluating Large Language Models Trained on Code",
eq. 1 (``pass_at_k_unbiased``), from n samples of which c are correct.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from math import comb

from ..data.tasks import gsm8k, spellingbee
from ..data.tasks.gsm8k import extract_answer

RewardFn = Callable[[dict, str], float]


def answer_reward(problem: dict, completion: str) -> float:
    """1.0 if the completion's ``#### N`` answer (commas dropped) equals ``problem["reference"]``, else 0.0.

    Source: nanochat/tasks/gsm8k.py ``evaluate``/``reward`` (exact string match after extraction).
    """
    ref = problem.get("reference")
    return float(ref is not None and extract_answer(completion) == ref)


REWARDS: dict[str, RewardFn] = {"gsm8k": answer_reward, "spellingbee": answer_reward}


def resolve_reward(name: str) -> RewardFn:
    """A reward function: a built-in name (``REWARDS``) or a dotted path ``pkg.mod.fn`` / ``pkg.mod:fn``.

    Raises:
        ValueError: the name is neither built in nor importable, or does not name a callable.
    """
    if name in REWARDS:
        return REWARDS[name]
    module, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward {name!r}: not a built-in reward ({', '.join(REWARDS)}) nor a dotted path "
                         "'package.module.function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r} ({e})") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {module}.{attr} is not callable")
    return fn


def load_rl_problems(task: str, split: str = "train", data_dir: str | None = None,
                     size: int | None = None) -> list[dict]:
    """Problems ``{"messages", "reference"}`` of ``task`` ("gsm8k" or "spellingbee") in file order.

    GSM8K: all rows of the split (7,473 train / 1,319 test); ``size`` keeps the
    first ``size``. SpellingBee is synthetic: examples 0..size-1 (default 256) of the split's draw stream
    (``nanosft.data.tasks.spellingbee``).

    Raises:
        ValueError: an unknown task. ``nanosft.data.tasks.DataSourceError``: missing data files.
    """
    if task == "gsm8k":
        problems = gsm8k.load_problems(split, data_dir)
        return problems[:size] if size else problems
    if task == "spellingbee":
        return spellingbee.load_problems(split, data_dir, size or spellingbee.SIZE)
    raise ValueError(f"unknown RL task {task!r}; known: gsm8k, spellingbee")


def pass_at_k(outcomes: list[list[bool]], k: int) -> float:
    """Fraction of problems with at least one True among their first ``k`` outcomes.

    Args:
        outcomes: per problem, the correctness of its samples in sampling order (each list >= k long).

    Raises:
        ValueError: k < 1, or a problem with fewer than k samples.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(len(o) < k for o in outcomes):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem")
    return sum(any(o[:k]) for o in outcomes) / len(outcomes) if outcomes else float("nan")


def pass_at_k_unbiased(outcomes: list[list[bool]], k: int) -> float:
    """Mean over problems of ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021, eq. 1).

    n = samples of the problem, c = correct ones; the probability that k samples drawn without
    replacement from the n contain a correct one. Same errors as ``pass_at_k``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(len(o) < k for o in outcomes):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem")
    if not outcomes:
        return float("nan")
    return sum(1.0 - comb(len(o) - sum(o), k) / comb(len(o), k) for o in outcomes) / len(outcomes)
