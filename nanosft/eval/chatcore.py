"""ChatCORE: six chat tasks, batched evaluation and one centered score (nanochat/scripts/chat_eval.py).

| task | kind | baseline | scoring |
|---|---|---|---|
| ARC-Easy, ARC-Challenge, MMLU | categorical | 0.25 | argmax of the choice letters' logits after ``<|assistant_start|>`` |
| GSM8K, SpellingBee | generative | 0 | ``#### N`` extracted by regex, commas stripped, exact match |
| HumanEval | generative | 0 | first code block + imports + tests + ``check()`` run in ``nanosft.eval.sandbox`` |

ChatCORE = mean over the tasks of a task set of ``(acc - baseline) / (1 - baseline)``; ``chatcore_cat``
is the same over the set's categorical tasks. Two sets (``TASK_SETS``): ``nanosft6``, the six tasks above
(the default), and ``nanochat``, the five of current nanochat (scripts/chat_eval.py ``all_tasks``: no
SpellingBee), whose numbers compare with nanochat's published ones. Every aggregate is named with its set
(``chatcore_metric/nanochat``). As in nanochat, a run on fewer tasks than its set is *partial*: it reports
per-task accuracies and no ChatCORE.

Capped subsets are nanochat's: a task's problems are ordered by ``numpy.random.default_rng(42).permutation``
(nanochat/tasks/common.py ``HubDataset.shuffle``, the same permutation as ``datasets.Dataset.shuffle(seed=42)``)
and a cap of N keeps the first N, so with the same source rows nanosft and nanochat score the same problems.

Categorical problems go through the model in batches: prompts are sorted by length and right-padded
(causal attention: a pad after the last prompt token cannot change that token's logits, so no mask
is needed, as nanochat does), and only the answer positions are projected on the vocabulary
(``logits_to_keep``): for MMLU at batch 32 that is 32 rows of 65,536 logits instead of ~32x400.
Generative problems are completed in batches by ``engine.generate_batch`` (left-padded, KV cache,
calculator tool). Under several processes each one takes a contiguous share of the problems
(``accelerate.PartialState.split_between_processes``) and the outcomes are gathered
(``gather_object``); every process returns the same totals.

Problems are dicts in nanochat's conversation form: ``{"messages": [user, assistant], ...}`` plus
``letters`` (categorical), ``reference`` (GSM8K, SpellingBee) or ``test``/``entry_point`` (HumanEval).
"""

from __future__ import annotations

import inspect
import math
import logging

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..data.tasks.gsm8k import extract_answer
from ..data.tasks.humaneval import build_program
from ..data.tasks.registry import CATEGORICAL, REGISTRY, Task
from ..format.template import ChatRenderer
from ..format.tokenizer import ordinary_encoder
from .engine import gathered_for_generation, generate_batch
from .sandbox import execute_many, require_isolation

logger = logging.getLogger(__name__)

GENERATIVE_CAP_DURING_SFT = 24  # nanochat/scripts/chat_sft.py caps generative tasks at 24 problems


def score_numeric(problems: list[dict], completions: list[str]) -> list[bool]:
    """GSM8K/SpellingBee: exact match of the ``####`` answer with the problem's ``reference``."""
    return [p["reference"] is not None and extract_answer(c) == p["reference"] for p, c in zip(problems, completions)]


def score_humaneval(
    problems: list[dict], completions: list[str], timeout: float = 5.0, allow_weak_sandbox: bool = False
) -> list[bool]:
    """HumanEval: run each program (``tasks.humaneval.build_program``) in the sandbox, 4 at a time.

    Raises:
        sandbox.WeakSandboxError: the sandbox has neither namespaces nor Landlock here and
            ``allow_weak_sandbox`` is False.
    """
    require_isolation(allow_weak_sandbox)
    programs = [build_program(p, c) for p, c in zip(problems, completions)]
    results = execute_many(programs, max_workers=4, timeout=timeout, allow_weak=allow_weak_sandbox)
    return [r.success for r in results]


# ChatCORE's tasks by their names (ARC-Easy, ...): the registry's tasks that give eval problems, in its order.
TASKS: dict[str, Task] = {t.title: t for t in REGISTRY.values() if t.load is not None}
SCORERS = {"answer": score_numeric, "program": score_humaneval}  # Task.score -> (problems, completions) -> bools
# Task sets: ChatCORE averages over a whole set. "nanochat": nanochat/scripts/chat_eval.py ``all_tasks``.
TASK_SETS: dict[str, tuple[str, ...]] = {
    "nanosft6": ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"),
    "nanochat": ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"),
}
DEFAULT_TASK_SET = "nanosft6"
DEFAULT_TASKS = TASK_SETS[DEFAULT_TASK_SET]
METRIC_KEYS = ("chatcore_metric", "chatcore_cat")


def resolve_tasks(tasks=None) -> tuple[str, tuple[str, ...]]:
    """``(task set, task names)`` of a ``chatcore_tasks`` value.

    Args:
        tasks: None (the default set), a set name (``TASK_SETS``), or a list of task names. A list equal to
            a set (any order) is that set; any other list belongs to the default set (which holds every
            task) and is partial there.

    Raises:
        ValueError: an unknown set or task name (listing the known ones), or an empty list.
    """
    if tasks is None:
        return DEFAULT_TASK_SET, DEFAULT_TASKS
    if isinstance(tasks, str):
        if tasks not in TASK_SETS:
            raise ValueError(f"unknown ChatCORE task set {tasks!r}; known sets: {', '.join(TASK_SETS)} "
                             f"(or a list of tasks among {', '.join(TASKS)})")
        return tasks, TASK_SETS[tasks]
    names = tuple(dict.fromkeys(tasks))
    if not names:
        raise ValueError("an empty list of ChatCORE tasks")
    for name in names:
        get_task(name)
    for set_name, members in TASK_SETS.items():
        if set(names) == set(members):
            return set_name, members
    return DEFAULT_TASK_SET, names


def is_complete(task_set: str, tasks) -> bool:
    """Whether ``tasks`` covers every task of ``task_set`` (else the run is partial: no ChatCORE)."""
    return set(TASK_SETS[task_set]) <= set(tasks)


def metric_key(base: str, task_set: str) -> str:
    """The log key of an aggregate with its set, e.g. ``chatcore_metric/nanochat``."""
    return f"{base}/{task_set}"


def split_metric_key(key: str) -> tuple[str, str | None] | None:
    """``"chatcore_metric/nanochat"`` -> ``("chatcore_metric", "nanochat")``; ``"eval_"`` prefixes dropped;
    a key without a set (records written before task sets existed) gives set None; other keys give None."""
    key = key.removeprefix("eval_")
    base, _, task_set = key.partition("/")
    if base not in METRIC_KEYS:
        return None
    return base, task_set or None


def require_sandbox(tasks, allow_weak_sandbox: bool = False) -> tuple:
    """Probe and log the code sandbox (once per process) if ``tasks`` include one that runs code.

    Returns:
        the sandbox layers obtained, or ``()`` when no task runs code.

    Raises:
        sandbox.WeakSandboxError: a weak sandbox and ``allow_weak_sandbox`` is False.
    """
    if not any(get_task(name).runs_code for name in tasks):
        return ()
    return require_isolation(allow_weak_sandbox)


def get_task(name: str) -> Task:
    """The ChatCORE task called ``name`` (``nanosft.data.tasks.registry.Task``); raises ValueError listing the known names."""
    if name not in TASKS:
        raise ValueError(f"unknown ChatCORE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def load_problems(
    task: str, split: str = "test", data_dir: str | None = None, max_problems: int | None = None, seed: int = 42
) -> list[dict]:
    """The problems of a task in nanochat's order, capped at ``max_problems``.

    The order is ``numpy.random.default_rng(seed).permutation(n)`` of the source rows, as nanochat's tasks
    shuffle (``.shuffle(seed=42)``, nanochat/tasks/common.py), so a cap keeps the problems nanochat evaluates
    for the same cap and source; a cap is a random subset, not the first rows (MMLU files are sorted by
    subject), and a smaller cap is a prefix of a larger one. SpellingBee is not shuffled (``Task.shuffle``).

    Raises:
        ValueError: unknown task.
        DataSourceError: missing local file (named in the message) or unreachable Hub.
    """
    spec = get_task(task)
    problems = spec.load(split, data_dir)
    order = np.random.default_rng(seed).permutation(len(problems)) if spec.shuffle else np.arange(len(problems))
    if max_problems is not None:
        order = order[: max(0, max_problems)]
    return [problems[int(i)] for i in order]


def centered_score(task: str, accuracy: float) -> float:
    """(accuracy - b) / (1 - b), b the task's chance baseline (0.25 for 4-way multiple choice, 0 for
    generative tasks; nanochat/scripts/chat_eval.py). Raises ValueError for an unknown task."""
    baseline = get_task(task).baseline
    return (accuracy - baseline) / (1.0 - baseline)


def task_cap(task: str, max_categorical: int | None, max_generative: int | None) -> int | None:
    """The problem cap that applies to ``task``: ``max_categorical`` or ``max_generative`` by its kind."""
    return max_categorical if get_task(task).kind == CATEGORICAL else max_generative


def chatcore_metrics(accuracies: dict[str, float], task_set: str = DEFAULT_TASK_SET) -> dict[str, float]:
    """Centered scores of one task set (nanochat/scripts/chat_eval.py, scripts/chat_sft.py).

    Args:
        accuracies: task name -> accuracy in [0, 1].
        task_set: a key of ``TASK_SETS``; only its tasks count.

    Returns:
        ``{"chatcore_metric": mean of (acc - b)/(1 - b) over the set's tasks, "chatcore_cat": the same over
        its categorical tasks}``. ``chatcore_metric`` is absent unless every task of the set has an accuracy
        (a partial run: nanochat prints no ChatCORE then), ``chatcore_cat`` unless every categorical one has.
    """
    members = TASK_SETS[task_set]
    centered = {n: centered_score(n, accuracies[n]) for n in members if n in accuracies}
    out = {}
    if len(centered) == len(members):
        out["chatcore_metric"] = sum(centered.values()) / len(centered)
    cat = [n for n in members if get_task(n).kind == CATEGORICAL]
    if cat and all(n in centered for n in cat):
        out["chatcore_cat"] = sum(centered[n] for n in cat) / len(cat)
    return out


def renderer_for(tokenizer) -> ChatRenderer:
    """A ``ChatRenderer`` per tokenizer object, built once (building one copies the tokenizer's backend).

    Kept as an attribute of the tokenizer, so it is freed with it (the renderer refers to its tokenizer,
    so a module-level cache, even a ``WeakKeyDictionary``, would keep every tokenizer alive)."""
    renderer = getattr(tokenizer, "_nanosft_renderer", None)
    if renderer is None:
        renderer = tokenizer._nanosft_renderer = ChatRenderer(tokenizer)
    return renderer


def letter_token_ids(tokenizer, letters, encoder=None) -> list[int]:
    """Token id of each bare letter, encoded ordinarily (nanochat tokenizer: A..D are 65..68).

    Args:
        encoder: an ``ordinary_encoder(tokenizer)`` to reuse (building one copies the backend).

    Raises:
        ValueError: a letter is not a single token.
    """
    encoder = encoder or ordinary_encoder(tokenizer)
    out = []
    for letter in letters:
        ids = encoder.encode(letter, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens {ids}; categorical eval needs one token")
        out.append(ids[0])
    return out


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def predict_categorical(
    model, tokenizer, problems: list[dict], batch_size: int = 32, progress=None, return_scores: bool = False
):
    """The letter each problem's prompt makes most likely among its allowed letters.

    Args:
        model: HF causal LM; ``model(input_ids).logits`` is ``[B, T, V]`` (or ``[B, K, V]`` with
            ``logits_to_keep``).
        problems: categorical problems (``messages``, ``letters``).
        batch_size: prompts per forward pass.
        progress: optional callable ``n -> None`` called after each batch with its size.
        return_scores: also return each problem's letter logits (float32 CPU tensors).

    Returns:
        one predicted letter per problem, in input order (and the scores with ``return_scores``).
    """
    renderer = renderer_for(tokenizer)
    prompts = [renderer.render_for_completion(p["messages"]) for p in problems]
    letters_all = sorted({x for p in problems for x in p["letters"]})
    cache = dict(zip(letters_all, letter_token_ids(tokenizer, letters_all, renderer.encoder)))
    device = next(model.parameters()).device
    pad = tokenizer.convert_tokens_to_ids("<|bos|>")
    keep = _accepts_logits_to_keep(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    preds: list[str | None] = [None] * len(prompts)
    scores: list[torch.Tensor | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([prompts[i] + [pad] * (width - len(prompts[i])) for i in idx], device=device)
        last = [len(prompts[i]) - 1 for i in idx]
        if keep:
            positions = sorted(set(last))
            logits = model(input_ids=ids, logits_to_keep=torch.tensor(positions, device=device), use_cache=False).logits
            cols = [positions.index(t) for t in last]
        else:
            logits = model(input_ids=ids, use_cache=False).logits
            cols = last
        for row, (i, col) in enumerate(zip(idx, cols)):
            letters = problems[i]["letters"]
            focus = logits[row, col, [cache[x] for x in letters]]
            preds[i] = letters[int(focus.argmax())]
            if return_scores:
                scores[i] = focus.float().cpu()
        if progress is not None:
            progress(len(idx))
    return (preds, scores) if return_scores else preds


def complete_problems(
    model,
    tokenizer,
    problems: list[dict],
    batch_size: int = 16,
    num_samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    progress=None,
) -> list[list[str]]:
    """Generate ``num_samples`` replies per problem, ``batch_size`` problems per ``generate`` call.

    Returns:
        ``out[i][s]``: decoded reply ``s`` of problem ``i`` (tool calls and outputs included as their
        special-token text), in input order.
    """
    renderer = renderer_for(tokenizer)
    prompts = [renderer.render_for_completion(p["messages"]) for p in problems]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[str] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        gen = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in idx],
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed + start,
        )
        for i, samples in zip(idx, gen):
            out[i] = [tokenizer.decode(s, skip_special_tokens=False) for s in samples]
        if progress is not None:
            progress(len(idx))
    return out


def evaluate_task(
    model,
    tokenizer,
    task: str,
    problems: list[dict],
    batch_size: int = 32,
    generative_batch_size: int = 16,
    num_samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    progress=None,
    allow_weak_sandbox: bool = False,
) -> list[bool]:
    """Whether each problem is solved (pass@``num_samples`` for generative tasks), in input order.

    ``allow_weak_sandbox`` goes to scorers that run code (``Task.runs_code``)."""
    spec = get_task(task)
    if spec.kind == CATEGORICAL:
        preds = predict_categorical(model, tokenizer, problems, batch_size, progress)
        return [pred == p["messages"][-1]["content"] for pred, p in zip(preds, problems)]
    replies = complete_problems(
        model,
        tokenizer,
        problems,
        generative_batch_size,
        num_samples,
        max_new_tokens,
        temperature,
        top_k,
        seed,
        progress,
    )
    flat_problems = [p for p, r in zip(problems, replies) for _ in r]
    extra = {"allow_weak_sandbox": allow_weak_sandbox} if spec.runs_code else {}
    flat = SCORERS[spec.score](flat_problems, [x for r in replies for x in r], **extra)
    passed, k = [], 0
    for r in replies:
        passed.append(any(flat[k : k + len(r)]))
        k += len(r)
    return passed


def run_chatcore(
    model,
    tokenizer,
    tasks=None,
    problems: dict[str, list[dict]] | None = None,
    data_dir: str | None = None,
    max_categorical: int | None = None,
    max_generative: int | None = None,
    batch_size: int = 32,
    generative_batch_size: int = 16,
    num_samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 42,
    accelerator=None,
    progress: bool = False,
    allow_weak_sandbox: bool = False,
) -> dict:
    """Evaluate ``tasks`` and compute ChatCORE, sharing the work among all processes.

    Args:
        model: HF causal LM; put in eval mode for the run and restored after. Under ZeRO-3 its weights
            are gathered for the run (``engine.gathered_for_generation``).
        tokenizer: tokenizer with the nanochat special tokens.
        tasks: a task set name, a list of task names, or None for the default set (``resolve_tasks``).
        problems: preloaded problems per task (skips loading); else ``load_problems`` per task.
        data_dir: local data folder (None: the Hub).
        max_categorical, max_generative: caps per kind (None: all); nanochat uses 24 for generative
            tasks during SFT.
        batch_size, generative_batch_size: prompts per forward pass / per ``generate`` call.
        num_samples, max_new_tokens, temperature, top_k: generation (pass@k with k = num_samples).
        seed: problem-subset shuffle and sampling seed.
        accelerator: optional ``accelerate.Accelerator`` (used for ZeRO-3 unwrapping).
        progress: show a tqdm bar per task on the main process.
        allow_weak_sandbox: run HumanEval code even in a sandbox without namespaces or Landlock.

    Returns:
        ``{"tasks": {name: {"accuracy", "correct", "total", "kind", "baseline"}}, "task_set": name,
        "complete": bool, "chatcore_metric", "chatcore_cat"}``, identical on every process; the last two
        only when defined for the set (``chatcore_metrics``): a partial run has none.

    Raises:
        ValueError: an unknown task or task set.
        sandbox.WeakSandboxError: a task runs code, the sandbox is weak and ``allow_weak_sandbox`` is off.
    """
    task_set, tasks = resolve_tasks(tasks)

    # an already-initialized state (a Trainer's) is shared; otherwise a CPU model under a launcher
    # must ask for cpu=True or accelerate reports a single process (accelerate/state.py)
    state = PartialState(cpu=next(model.parameters()).device.type == "cpu")
    require_sandbox(tasks, allow_weak_sandbox)  # refuse a weak sandbox before generating anything
    results = {}
    was_training = model.training
    model.eval()
    try:
        with gathered_for_generation(model, accelerator) as gen_model:
            for name in tasks:
                spec = get_task(name)
                cap = task_cap(name, max_categorical, max_generative)
                if problems is not None and name in problems:
                    task_problems = problems[name][:cap] if cap is not None else problems[name]
                else:
                    task_problems = load_problems(name, "test", data_dir, cap, seed)
                indices = list(range(len(task_problems)))
                with state.split_between_processes(indices) as mine:
                    mine = list(mine)
                bar = None
                if progress and state.is_main_process:
                    bar = tqdm(total=len(mine), desc=name, unit="problem")
                passed = evaluate_task(
                    gen_model,
                    tokenizer,
                    name,
                    [task_problems[i] for i in mine],
                    batch_size=batch_size,
                    generative_batch_size=generative_batch_size,
                    num_samples=num_samples,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    seed=seed,
                    progress=bar.update if bar is not None else None,
                    allow_weak_sandbox=allow_weak_sandbox,
                )
                if bar is not None:
                    bar.close()
                outcomes = (
                    gather_object([(i, bool(p)) for i, p in zip(mine, passed)])
                    if state.num_processes > 1
                    else list(zip(mine, passed))
                )
                correct = sum(int(p) for _, p in dict(outcomes).items())
                total = len(task_problems)
                results[name] = {
                    "accuracy": correct / total if total else 0.0,
                    "correct": correct,
                    "total": total,
                    "kind": spec.kind,
                    "baseline": spec.baseline,
                }
    finally:
        model.train(was_training)
    accuracies = {n: r["accuracy"] for n, r in results.items() if r["total"]}
    out = {"tasks": results, "task_set": task_set, "complete": is_complete(task_set, accuracies)}
    out.update(chatcore_metrics(accuracies, task_set))
    if not out["complete"]:
        logger.info("ChatCORE: partial run (%d of the %d tasks of set %s): per-task accuracies only",
                    len(accuracies), len(TASK_SETS[task_set]), task_set)
    return out


def log_metrics(results: dict) -> dict[str, float]:
    """Flatten ``run_chatcore`` results for ``Trainer.log``: ``chatcore/<task>`` accuracies and the aggregates
    named with their set, ``chatcore_metric/<set>`` and ``chatcore_cat/<set>`` (when defined)."""
    logs = {f"chatcore/{name}": r["accuracy"] for name, r in results["tasks"].items()}
    task_set = results.get("task_set", DEFAULT_TASK_SET)
    for key in METRIC_KEYS:
        if key in results:
            logs[metric_key(key, task_set)] = results[key]
    return logs


def _aggregates(d: dict, task_set: str | None = None) -> dict:
    """The ChatCORE aggregates of a results dict or log entry, keyed with their set
    (``chatcore_metric/nanochat``; a record without a set keeps its bare key)."""
    out = {}
    for key, value in d.items():
        parsed = split_metric_key(key)
        if parsed is not None and isinstance(value, (int, float)):
            base, key_set = parsed
            key_set = key_set or task_set
            out[metric_key(base, key_set) if key_set else base] = value
    return out


def chatcore_from_results(results: dict | None) -> dict:
    """``{"tasks": {task: (accuracy, n)}, "chatcore_metric/<set>": x, "task_set", "complete"}`` from an
    eval/baseline JSON."""
    if not results:
        return {}
    out = {"tasks": {n: (r["accuracy"], r.get("total")) for n, r in results.get("tasks", {}).items() if r.get("total")}}
    out.update(_aggregates(results, results.get("task_set")))
    for key in ("task_set", "complete"):
        if key in results:
            out[key] = results[key]
    return out


def chatcore_from_log(log_history: list[dict]) -> dict:
    """The newest ChatCORE in a log history, as ``chatcore_from_results`` returns (n unknown: None)."""
    for entry in reversed(log_history):
        tasks = {k.split("/", 1)[1]: (v, None) for k, v in entry.items() if k.startswith("chatcore/")}
        if tasks:
            return {"tasks": tasks, "step": entry.get("step"), **_aggregates(entry)}
    return {}


# ChatCORE table layouts: (header lines, task row, aggregate row, partial row) as ``str.format`` templates.
TABLE_LAYOUTS = {
    "report": (["| task | n | before | after | change | noise (1 sigma) |", "|---|---|---|---|---|---|"],
               "| {task} | {n} | {before} | {after} | {change} | {noise} |",
               "| **{key}** (centered) | | {before} | {after} | {change} | |",
               "| partial: {partial}, no ChatCORE | | | | | |"),
    "card": (["| task | accuracy | centered |", "|---|---|---|"], "| {task} | {after} | {centered} |",
             "| **{base} ({task_set})** | | **{after}** |", "| partial task set: no ChatCORE | | |"),
    "text": ([f"{'task':<14} {'kind':<12} {'correct':>10} {'accuracy':>9} {'centered':>9}"],
             "{task:<14} {kind:<12} {correct:>5}/{n:<4} {after:>9} {centered:>9}",
             "{base:<14} {task_set:<12} {blank:>10} {blank:>9} {after:>9}", "partial: {partial}; no ChatCORE"),
}


def chatcore_table(before: dict, after: dict, config: dict | None = None, layout: str = "report") -> list[str]:
    """The ChatCORE table: the one builder of the run report's, the model card's and ``nanosft.eval``'s.

    Args:
        before, after: the base and the trained model's ChatCORE as ``chatcore_from_results`` /
            ``chatcore_from_log`` give it (``{}``: not run); aggregates are keys ``chatcore_metric/<set>``.
        config: the run config; its caps (``task_cap``) give n when the results do not.
        layout: a ``TABLE_LAYOUTS`` key. "report": n, accuracy before/after, change and its noise, the
            binomial sigma sqrt((b (1 - b) + a (1 - a)) / n); "card": accuracy and centered score
            (``centered_score``; baseline 0 for a task this version does not know); "text": fixed
            width, kind, correct/total, accuracy, centered score.

    Returns:
        The lines: header, a row per task, a row per aggregate, and a "partial" row when no side has a
        ``chatcore_metric`` and the tasks do not cover their set. Empty when neither side ran.
    """
    config = config or {}
    head, task_row, aggregate_row, partial_row = TABLE_LAYOUTS[layout]
    tasks = list(dict.fromkeys([*after.get("tasks", {}), *before.get("tasks", {})]))
    if not tasks:
        return []
    fmt = lambda x: "-" if x is None else f"{x:.4f}"
    change = lambda a, b: "-" if a is None or b is None else f"{a - b:+.4f}"
    lines = list(head)
    for t in tasks:
        b, nb = before.get("tasks", {}).get(t, (None, None))
        a, na = after.get("tasks", {}).get(t, (None, None))
        known = t in TASKS  # else: the generative cap and baseline 0, as for a generative task
        n = na or nb or (task_cap(t, config.get("chatcore_max_categorical"), config.get("chatcore_max_generative"))
                         if known else config.get("chatcore_max_generative"))
        noise = math.sqrt((b * (1 - b) + a * (1 - a)) / n) if a is not None and b is not None and n else None
        lines.append(task_row.format(
            task=t, n=n or "-", kind=TASKS[t].kind if known else "-", before=fmt(b),
            correct=round(a * n) if a is not None and n else "-", after=fmt(a), change=change(a, b), noise=fmt(noise),
            centered=fmt(centered_score(t, a) if known and a is not None else a)))
    aggregates = [k for k in dict.fromkeys([*after, *before]) if split_metric_key(k) is not None]
    for key in sorted(aggregates, key=lambda k: (split_metric_key(k)[1] or "", k)):
        b, a = before.get(key), after.get(key)
        if a is not None or b is not None:
            base, task_set = split_metric_key(key)
            lines.append(aggregate_row.format(key=key, base=base, task_set=task_set or "task set not recorded",
                                              before=fmt(b), after=fmt(a), change=change(a, b), blank=""))
    task_set = after.get("task_set") or before.get("task_set")
    members = TASK_SETS.get(task_set, ())
    has_metric = "chatcore_metric" in {split_metric_key(k)[0] for k in aggregates}
    if not has_metric and not (members and set(members) <= set(tasks)):
        partial = f"{len(tasks)} of the {len(members)} tasks of set {task_set}" if members else "task set not recorded"
        lines.append(partial_row.format(partial=partial))
    return lines


def format_table(results: dict) -> str:
    """``run_chatcore`` results as a fixed-width table (``chatcore_table``, layout "text"): task,
    kind, correct/total, accuracy, centered score; then the ChatCORE rows, or a "partial" line."""
    return "\n".join(chatcore_table({}, chatcore_from_results(results), layout="text"))
