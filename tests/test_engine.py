"""nanosft.eval.engine: the calculator, tool injection inside generate, batched == one-at-a-time."""

import copy

import pytest
import torch
from transformers import LogitsProcessor

from nanosft.eval.engine import generate_batch, use_calculator
from nanosft.format.tokenizer import special_token_ids



@pytest.fixture(scope="module")
def tokenizer(nanochat_tokenizer):
    # a copy: trainers in this module set pad tokens on it, the session tokenizer stays pristine
    return copy.deepcopy(nanochat_tokenizer)


@pytest.fixture(scope="module")
def model(tiny_nanochat):
    # a large init std makes the random model's outputs depend on the prompt
    return tiny_nanochat(hidden_size=64, intermediate_size=128, initializer_range=1.0).eval()


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("48/2", "24"),
        ("16-3-4", "9"),
        ("9*2", "18"),
        ("(1+2)*3", "9"),
        ("-5+2", "-3"),
        ("10/4", "2.5"),
        ("1,000*2", "2000"),
        ("'strawberry'.count('r')", "3"),
        ("\"a,b,c\".count(',')", "2"),
    ],
)
def test_calculator_evaluates_arithmetic_and_count(expr, expected):
    assert use_calculator(expr) == expected


@pytest.mark.parametrize(
    "expr",
    [
        "2**100",
        "__import__('os').system('true')",
        "open('x')",
        "x + 1",
        "'a'.upper()",
        "'abc'.count(x)",
        "(lambda: 1)()",
        "[1, 2]",
        "1/0",
        "'a' * 3",
        "",
        "1 +",
        "9" * 1001,
    ],
)
def test_calculator_refuses_anything_else(expr):
    assert use_calculator(expr) is None


class ScriptedModelProcessor(LogitsProcessor):
    """Stands in for a model: row r emits scripts[r] token by token, skipping steps the tool forced.

    The script position is the number of generated tokens outside <|output_start|>..<|output_end|>
    blocks, so forced tool output does not consume script tokens.
    """

    def __init__(self, scripts, prompt_len, output_start, output_end):
        self.scripts, self.prompt_len = scripts, prompt_len
        self.output_start, self.output_end = output_start, output_end

    def __call__(self, input_ids, scores):
        for r, script in enumerate(self.scripts):
            k, inside = 0, False
            for tok in input_ids[r, self.prompt_len :].tolist():
                if tok == self.output_start:
                    inside = True
                elif tok == self.output_end:
                    inside = False
                elif not inside:
                    k += 1
            scores[r] = -1e9
            scores[r, script[min(k, len(script) - 1)]] = 0.0
        return scores


def test_tool_output_is_fed_back_between_output_tokens_per_row(tokenizer, model):
    ids = special_token_ids(tokenizer)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    ps, pe, end = ids["<|python_start|>"], ids["<|python_end|>"], ids["<|assistant_end|>"]
    scripts = [
        enc("Compute ") + [ps] + enc("12*3") + [pe] + enc(" so #### 36") + [end],
        enc("Check ") + [ps] + enc("'strawberry'.count('r')") + [pe] + [end],
    ]
    prompts = [
        [ids["<|bos|>"], 100, 200, 300, ids["<|assistant_start|>"]],
        [ids["<|bos|>"], ids["<|assistant_start|>"]],
    ]
    width = max(map(len, prompts))
    script = ScriptedModelProcessor(scripts, width, ids["<|output_start|>"], ids["<|output_end|>"])
    out = generate_batch(model, tokenizer, prompts, max_new_tokens=40, logits_processors=[script])
    texts = [tokenizer.decode(o[0], skip_special_tokens=False) for o in out]
    assert texts[0] == "Compute <|python_start|>12*3<|python_end|><|output_start|>36<|output_end|> so #### 36"
    assert texts[1] == "Check <|python_start|>'strawberry'.count('r')<|python_end|><|output_start|>3<|output_end|>"


def test_rejected_tool_call_gets_no_output(tokenizer, model):
    ids = special_token_ids(tokenizer)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    script = [ids["<|python_start|>"]] + enc("__import__('os')") + [ids["<|python_end|>"], ids["<|assistant_end|>"]]
    prompt = [ids["<|bos|>"], ids["<|assistant_start|>"]]
    proc = ScriptedModelProcessor([script], 2, ids["<|output_start|>"], ids["<|output_end|>"])
    out = generate_batch(model, tokenizer, [prompt], max_new_tokens=20, logits_processors=[proc])
    assert ids["<|output_start|>"] not in out[0][0]


def test_batched_greedy_generation_equals_one_at_a_time(tokenizer, model):
    prompts = [
        [65527, 65528] + list(range(1000 + 37 * i, 1000 + 37 * i + 3 + 4 * i)) + [65529, 65530] for i in range(4)
    ]
    batched = generate_batch(model, tokenizer, prompts, max_new_tokens=8)
    single = [generate_batch(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert len({tuple(b[0]) for b in batched}) > 1, "the test model must not ignore its prompt"


def test_sampling_is_seeded_and_gives_num_samples(tokenizer, model):
    prompt = [[65527, 65528, 500, 600, 65529, 65530]]
    a = generate_batch(model, tokenizer, prompt, num_samples=3, max_new_tokens=4, temperature=1.0, top_k=50, seed=3)
    b = generate_batch(model, tokenizer, prompt, num_samples=3, max_new_tokens=4, temperature=1.0, top_k=50, seed=3)
    assert a == b and len(a[0]) == 3
    assert len({tuple(s) for s in a[0]}) > 1


def test_generation_does_not_touch_the_callers_rng(tokenizer, model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_batch(model, tokenizer, [[65527, 65530]], max_new_tokens=4, temperature=1.0, seed=9)
    assert torch.equal(torch.rand(3), expected)
