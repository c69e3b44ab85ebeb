"""Batched generation with a KV cache and nanochat's calculator tool, on transformers ``generate``.

nanochat/engine.py runs its own decode loop: one prompt, ``num_samples`` rows sharing a prefilled KV
cache, and a per-row state machine that, when a row closes ``<|python_start|> expr <|python_end|>``,
evaluates ``expr`` with a calculator and force-feeds ``<|output_start|> result <|output_end|>`` before
the row samples again. Its chat eval runs one problem at a time.

nanosft keeps the state machine and hands everything else to ``model.generate``: many problems are
left-padded into one batch (``attention_mask`` + the position ids ``generate`` derives from it), the
KV cache is transformers' own, sampling is ``GenerationConfig`` (greedy by default, temperature/top-k,
``num_return_sequences`` for pass@k), and each row stops on ``<|assistant_end|>`` (or ``<|bos|>``, as
nanochat). The tool runs inside a ``LogitsProcessor``: it reads the token each row just produced and,
while a row has tool output queued, masks that row's logits to the one forced token. So it works for
any HF causal LM and cache type, under greedy and sampling alike, and needs no model code.

Trade-offs in numbers: forcing costs one decode step per forced token, exactly like nanochat's loop;
``num_return_sequences`` re-runs the prompt prefill once per sample, where nanochat prefills once (the
prefill is <10% of a 512-token generation); finished rows keep riding along until the longest row of
the batch stops. Against that, a batch of 32 problems decodes 32 rows per forward pass:
``bench/chatcore.py`` measures the GSM8K problems/s against a one-problem-at-a-time loop (several times
more, growing with the number of new tokens), with identical greedy answers.
"""

from __future__ import annotations

import ast
import contextlib
import math
from collections import deque

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.integrations import is_deepspeed_zero3_enabled
from trl.models import unwrap_model_for_generation

from ..format.tokenizer import ASSISTANT_END, BOS, OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START, special_token_ids

MAX_EXPR_CHARS = 1000
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _calc(node):
    """Evaluate a whitelisted AST node; anything else raises ValueError (TypeError for str/number mixes)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _calc(node.operand)
        if not isinstance(value, (int, float)):
            raise TypeError("unary operator on a string")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _calc(node.left), _calc(node.right)
        if not all(isinstance(v, (int, float)) for v in (left, right)):
            raise TypeError("arithmetic on strings")
        return _BINOPS[type(node.op)](left, right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "count"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.func.value.value.count(node.args[0].value)
    raise ValueError(f"not allowed in the calculator: {type(node).__name__}")


def use_calculator(expr: str) -> str | None:
    """Evaluate a calculator call the way nanochat's tool does, without ``eval``.

    Allowed (nanochat/engine.py ``use_calculator``): numbers, ``+ - * /``, unary minus, parentheses,
    and ``'<string>'.count('<string>')``. ``**`` is refused as in nanochat (it could be very
    expensive). Thousands separators are dropped (``1,000*2``). The expression is parsed with ``ast``
    and walked against that whitelist: no names, attributes other than ``count``, or calls exist.

    Returns:
        the result as text (integral floats print as integers, so ``48/2`` gives ``24`` as in the
        GSM8K annotations the model was trained on; nanochat prints ``24.0``), or None when the
        expression is not allowed, malformed, divides by zero or is longer than 1,000 characters.
    """
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    tree = None
    for candidate in (expr, expr.replace(",", "")):
        try:
            tree = ast.parse(candidate, mode="eval")
        except SyntaxError:
            continue
        if not isinstance(tree.body, ast.Tuple):  # "1,000*2" parses as a tuple: retry without commas
            break
        tree = None
    if tree is None:
        return None
    try:
        value = _calc(tree.body)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else str(value)
    return str(value)


class CalculatorToolProcessor(LogitsProcessor):
    """Run nanochat's calculator tool inside ``model.generate`` (nanochat/engine.py ``RowState``).

    One instance serves one ``generate`` call. On each step it reads the token every row produced
    last; a row that closes ``<|python_start|> expr <|python_end|>`` gets ``<|output_start|>``, the
    result's tokens and ``<|output_end|>`` queued, and while a row has queued tokens its scores are
    masked to the next one (all others ``-inf``), which greedy and sampling both pick.
    ``forced[row]`` lists the positions (0-based, counted from the first new token) that were forced,
    so a trainer can leave them out of a loss (nanochat/engine.py ``masks``: 0 for forced tokens).

    Args:
        tokenizer: HF tokenizer holding the nanochat special tokens; ``decode``/``encode`` are used.
    """

    def __init__(self, tokenizer):
        ids = special_token_ids(tokenizer)
        self.tokenizer = tokenizer
        self.python_start, self.python_end = ids[PYTHON_START], ids[PYTHON_END]
        self.output_start, self.output_end = ids[OUTPUT_START], ids[OUTPUT_END]
        self.prompt_len = None
        self.rows: list[dict] = []
        self.forced: list[list[int]] = []
        self.calls = 0  # tool calls evaluated, for tests and logs

    def _observe(self, row: dict, token: int) -> None:
        if token == self.python_start:
            row["expr"] = []
        elif token == self.python_end and row["expr"] is not None:
            expr = self.tokenizer.decode(row["expr"])
            row["expr"] = None
            result = use_calculator(expr)
            self.calls += 1
            if result is not None:
                out = self.tokenizer.encode(result, add_special_tokens=False)
                row["forced"].extend([self.output_start, *out, self.output_end])
        elif row["expr"] is not None:
            row["expr"].append(token)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
            self.rows = [{"expr": None, "forced": deque()} for _ in range(input_ids.shape[0])]
            self.forced = [[] for _ in range(input_ids.shape[0])]
        elif input_ids.shape[1] > self.prompt_len:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                self._observe(row, token)
        forced = [(i, row["forced"].popleft()) for i, row in enumerate(self.rows) if row["forced"]]
        if forced:
            for i, _ in forced:
                self.forced[i].append(input_ids.shape[1] - self.prompt_len)
            rows = torch.tensor([i for i, _ in forced], device=scores.device)
            toks = torch.tensor([t for _, t in forced], device=scores.device)
            scores[rows] = -float("inf")
            scores[rows, toks] = 0.0
        return scores


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a reply: ``<|assistant_end|>`` and ``<|bos|>`` (nanochat/engine.py)."""
    ids = special_token_ids(tokenizer)
    return [ids[ASSISTANT_END], ids[BOS]]


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[list[int]],
    num_samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    use_tool: bool = True,
    logits_processors: list | None = None,
) -> list[list[list[int]]]:
    """Complete a batch of prompts in one ``model.generate`` call.

    Args:
        model: an HF causal LM (any attention implementation that honours ``attention_mask``).
        tokenizer: its tokenizer, holding the nanochat special tokens.
        prompts: token ids per prompt (e.g. ``ChatRenderer.render_for_completion``), any lengths.
        num_samples: completions per prompt (pass@k); rows of one prompt are adjacent.
        max_new_tokens: cap per completion (nanochat: 512).
        temperature: 0 is greedy (nanochat's default for eval); > 0 samples.
        top_k: with temperature > 0, sample from the k most likely tokens.
        seed: seeds sampling inside ``torch.random.fork_rng``: the caller's RNG state is untouched.
        use_tool: run the calculator tool (see ``CalculatorToolProcessor``).
        logits_processors: extra ``LogitsProcessor`` s applied before the tool (which has the last
            word on forced tokens).

    Returns:
        ``out[p][s]``: the new token ids of sample ``s`` of prompt ``p``, forced tool tokens included,
        cut before the first stop token.

    Raises:
        ValueError: an empty prompt, or temperature < 0.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = stops[0]
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_k=top_k if sample else None,
        top_p=None,
        num_return_sequences=num_samples,
        eos_token_id=stops,
        pad_token_id=pad,
        use_cache=True,
    )
    processors = LogitsProcessorList(
        list(logits_processors or []) + ([CalculatorToolProcessor(tokenizer)] if use_tool else [])
    )
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors)
    new = out[:, width:].tolist()
    results = []
    for p in range(len(prompts)):
        samples = []
        for row in new[p * num_samples : (p + 1) * num_samples]:
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            samples.append(row[:cut])
        results.append(samples)
    return results


@contextlib.contextmanager
def gathered_for_generation(model, accelerator=None):
    """Make a ZeRO-3-partitioned model whole for generation; a no-op otherwise.

    Under DeepSpeed ZeRO-3 each rank holds a shard of every weight; ``generate`` would gather them
    layer by layer at every decode step (and hang if ranks generate different lengths). With an
    ``accelerator`` this is ``trl.models.unwrap_model_for_generation`` (gathers once, removes the
    hooks); without one, ``deepspeed.zero.GatheredParameters`` over all parameters. Costs one full
    copy of the weights per rank while it lasts. Not exercised by the CPU tests (no ZeRO-3 run here).
    """
    try:
        zero3 = is_deepspeed_zero3_enabled()
    except ImportError:
        zero3 = False
    if not zero3:
        yield model
        return
    if accelerator is not None:
        with unwrap_model_for_generation(model, accelerator) as unwrapped:
            yield unwrapped
        return
    import deepspeed  # heavy (CUDA ops); ZeRO-3 runs only

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield model
