"""nanosft.eval.chatcore and the eval CLI: task data, prompts, scoring, ChatCORE arithmetic, batched eval."""

import copy
import gc
import itertools
import json
import os
import weakref

import pytest
import torch

from nanosft.eval import chatcore
from nanosft.data.tasks import DataSourceError

from conftest import DATA_DIR as DATA  # noqa: E402  (the embedded data folder)
from conftest import needs_full_data  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(nanochat_tokenizer):
    # a copy: trainers in this module set pad tokens on it, the session tokenizer stays pristine
    return copy.deepcopy(nanochat_tokenizer)


@pytest.fixture
def tiny_model(tiny_nanochat):
    return lambda seed=0, init=1.0: tiny_nanochat(hidden_size=64, intermediate_size=128, seed=seed,
                                                  initializer_range=init).eval()


# ---------------------------------------------------------------- data


@pytest.mark.parametrize(
    "task, count",
    [("ARC-Easy", 2376), ("ARC-Challenge", 1172), ("GSM8K", 1319), ("HumanEval", 164), ("SpellingBee", 256)],
)
def test_full_task_sizes(task, count, full_data_dir):
    assert len(chatcore.load_problems(task, data_dir=full_data_dir)) == count


@pytest.mark.parametrize(
    "task, count",
    [("ARC-Easy", 256), ("ARC-Challenge", 256), ("MMLU", 256), ("GSM8K", 256), ("HumanEval", 164),
     ("SpellingBee", 256)],
)
def test_embedded_task_sizes(task, count):
    assert len(chatcore.load_problems(task, data_dir=DATA)) == count


def test_mmlu_local_has_all_subjects_and_capping_mixes_them(full_data_dir):
    problems = chatcore.load_problems("MMLU", data_dir=full_data_dir)
    assert len(problems) == 14079 and len({p["subject"] for p in problems}) == 57
    capped = chatcore.load_problems("MMLU", data_dir=full_data_dir, max_problems=50)
    assert capped == problems[:50]  # a cap is a prefix of the seeded shuffle
    assert len({p["subject"] for p in capped}) > 20  # not the first 50 rows (all abstract_algebra)


def test_arc_prompt_matches_nanochat_format():
    with open(os.path.join(DATA, "arc", "arc_easy_test.jsonl"), encoding="utf-8") as f:
        first = json.loads(f.readline())
    from nanosft.data.tasks.arc import load_problems

    p = load_problems("ARC-Easy", data_dir=DATA)[0]
    question = first["query"][len("Question: ") :]
    expected = (
        f"Multiple Choice question: {question}\n"
        + "".join(f"- {c}={l}\n" for l, c in zip("ABCD", first["choices"]))
        + "\nRespond only with the letter of the correct answer."
    )
    assert p["messages"][0]["content"] == expected
    assert p["messages"][1]["content"] == "ABCD"[first["gold"]] and p["letters"] == list("ABCD")


def test_prompt_letter_is_the_same_token_as_the_answer_letter(tokenizer):
    letter_ids = chatcore.letter_token_ids(tokenizer, "ABCD")
    assert letter_ids == [65, 66, 67, 68]
    renderer = chatcore.renderer_for(tokenizer)
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    problems = chatcore.load_problems("ARC-Challenge", data_dir=DATA, max_problems=100)
    problems += chatcore.load_problems("MMLU", data_dir=DATA, max_problems=100)
    for p in problems:
        ids = renderer.render_for_completion(p["messages"])
        pairs = {(a, b) for a, b in itertools.pairwise(ids)}
        # "=" may merge with the choice's last character (")=" is one token) but the letter never does
        assert all((lid, newline) in pairs for lid in letter_ids), p["messages"][0]["content"]


def test_gsm8k_and_spellingbee_references():
    g = chatcore.load_problems("GSM8K", data_dir=DATA)
    assert all(p["reference"] is not None for p in g)
    s = chatcore.load_problems("SpellingBee", data_dir=DATA, max_problems=20)
    for p in s:
        word_count = p["messages"][1]["content"][1]["text"]  # "'<word>'.count('<letter>')"
        assert str(eval(word_count)) == p["reference"]


# nanochat's capped subsets: its tasks do ``load_hub_dataset(...).shuffle(seed=42)`` and evaluate rows 0..cap-1
# (nanochat/tasks/common.py, scripts/chat_eval.py). The independent reference here is Hugging Face
# ``datasets.Dataset.shuffle(seed=42)``, which nanochat's own shuffle states it reproduces row for row.


def nanochat_order(n: int) -> list[int]:
    import datasets

    return datasets.Dataset.from_dict({"row": list(range(n))}).shuffle(seed=42)["row"]


def _source_rows(task: str, data_dir: str) -> list[dict]:
    return chatcore.get_task(task).load("test", data_dir)  # source order, unshuffled


def test_capped_humaneval_is_nanochats_choice():
    rows = _source_rows("HumanEval", "unused")
    capped = chatcore.load_problems("HumanEval", data_dir="unused", max_problems=24)
    assert capped == [rows[i] for i in nanochat_order(164)[:24]]
    # by hand: the first problems nanochat evaluates (np.random.default_rng(42).permutation(164)[:6])
    assert [p["task_id"] for p in capped[:6]] == ["HumanEval/52", "HumanEval/134", "HumanEval/51", "HumanEval/66",
                                                   "HumanEval/147", "HumanEval/101"]


@needs_full_data
@pytest.mark.parametrize("task, cap", [("GSM8K", 24), ("ARC-Easy", 100), ("ARC-Challenge", 100), ("MMLU", 100)])
def test_capped_subsets_are_nanochats_choice(task, cap, full_data_dir):
    rows = _source_rows(task, full_data_dir)
    capped = chatcore.load_problems(task, data_dir=full_data_dir, max_problems=cap)
    assert capped == [rows[i] for i in nanochat_order(len(rows))[:cap]]


@needs_full_data
def test_gsm8k_first_problem_by_hand(full_data_dir):
    with open(os.path.join(full_data_dir, "gsm8k", "test.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()
    first = chatcore.load_problems("GSM8K", data_dir=full_data_dir, max_problems=1)[0]
    # numpy.random.default_rng(42).permutation(1319)[0] is row 30 (0-based)
    assert int(nanochat_order(1319)[0]) == 30
    assert first["messages"][0]["content"] == json.loads(lines[30])["question"]


def test_spellingbee_cap_takes_the_first_examples():
    # nanochat's SpellingBee draws example i from its own seed and was never shuffled
    full = chatcore.load_problems("SpellingBee", data_dir=DATA)
    assert chatcore.load_problems("SpellingBee", data_dir=DATA, max_problems=5) == full[:5]
    from nanosft.data.tasks import spellingbee

    words = spellingbee.load_words(DATA)
    assert full[3]["messages"] == spellingbee.spelling_bee_conversation(words, 3, "test")


def test_missing_local_file_names_the_path(tmp_path):
    with pytest.raises(DataSourceError, match=str(tmp_path / "arc" / "arc_easy_test.jsonl")):
        chatcore.load_problems("ARC-Easy", data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="mmlu"):
        chatcore.load_problems("MMLU", data_dir=str(tmp_path))


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="ARC-Easy"):
        chatcore.load_problems("ARC-Medium", data_dir=DATA)


def test_hub_path_reads_the_hub_schemas(monkeypatch):
    import datasets

    calls = []
    rows = {
        "allenai/ai2_arc": [
            {"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "2"}
        ],
        "cais/mmlu": [{"question": "M?", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": 3}],
        "openai/gsm8k": [{"question": "G?", "answer": "1+1=<<1+1=2>>2\n#### 1,002"}],
        "openai/openai_humaneval": [
            {
                "task_id": "HumanEval/0",
                "prompt": "def f():\n",
                "canonical_solution": "    return 1\n",
                "test": "def check(c):\n    assert c() == 1\n",
                "entry_point": "f",
            }
        ],
    }

    def fake_load_dataset(repo, *args, split=None, **kwargs):
        calls.append((repo, args, split))
        return datasets.Dataset.from_list(rows[repo])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    arc = chatcore.load_problems("ARC-Challenge")
    assert arc[0]["letters"] == ["1", "2", "3"] and arc[0]["messages"][1]["content"] == "2"
    assert "- b=2\n" in arc[0]["messages"][0]["content"]
    mmlu = chatcore.load_problems("MMLU")
    assert mmlu[0]["messages"][1]["content"] == "D" and mmlu[0]["subject"] == "anatomy"
    assert chatcore.load_problems("GSM8K")[0]["reference"] == "1002"
    assert chatcore.load_problems("HumanEval")[0]["entry_point"] == "f"
    assert calls == [
        ("allenai/ai2_arc", ("ARC-Challenge",), "test"),
        ("cais/mmlu", ("all",), "test"),
        ("openai/gsm8k", ("main",), "test"),
        ("openai/openai_humaneval", (), "test"),
    ]


def test_renderer_is_built_once_per_tokenizer_and_freed_with_it(nanochat_tokenizer):
    tok = copy.deepcopy(nanochat_tokenizer)
    renderer = chatcore.renderer_for(tok)
    assert chatcore.renderer_for(tok) is renderer and chatcore.renderer_for(nanochat_tokenizer) is not renderer
    assert renderer.tokenizer is tok
    ref = weakref.ref(tok)
    del tok, renderer
    gc.collect()
    assert ref() is None  # no cache keeps the tokenizer alive


# ---------------------------------------------------------------- scoring


def test_chatcore_metric_matches_hand_computation():
    acc = {"ARC-Easy": 0.55, "ARC-Challenge": 0.43, "MMLU": 0.35, "GSM8K": 0.10, "HumanEval": 0.11, "SpellingBee": 0.5}
    # centered: 0.30/0.75=0.4, 0.18/0.75=0.24, 0.10/0.75=0.133333, then 0.10, 0.11, 0.5 unchanged
    out = chatcore.chatcore_metrics(acc)
    assert out["chatcore_metric"] == pytest.approx((0.4 + 0.24 + 0.1333333333 + 0.10 + 0.11 + 0.5) / 6)
    assert out["chatcore_cat"] == pytest.approx((0.4 + 0.24 + 0.1333333333) / 3)
    # nanochat's set: the same five tasks without SpellingBee
    nano = chatcore.chatcore_metrics(acc, "nanochat")
    assert nano["chatcore_metric"] == pytest.approx((0.4 + 0.24 + 0.1333333333 + 0.10 + 0.11) / 5)
    assert nano["chatcore_cat"] == out["chatcore_cat"]
    # partial sets: no ChatCORE (nanochat prints none); chatcore_cat once all categorical tasks are in
    assert chatcore.chatcore_metrics({"ARC-Easy": 0.25}) == {}
    assert chatcore.chatcore_metrics({"GSM8K": 0.2}, "nanochat") == {}
    assert chatcore.chatcore_metrics({"ARC-Easy": 0.55, "ARC-Challenge": 0.43, "MMLU": 0.35}) == {
        "chatcore_cat": pytest.approx((0.4 + 0.24 + 0.1333333333) / 3)}


def test_spellingbee_weight_differs_between_the_sets():
    # the example: categorical tasks at chance, GSM8K/HumanEval 0, SpellingBee 0.90
    acc = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.9}
    assert chatcore.chatcore_metrics(acc, "nanosft6")["chatcore_metric"] == pytest.approx(0.15)  # 0.9 / 6
    assert chatcore.chatcore_metrics(acc, "nanochat")["chatcore_metric"] == pytest.approx(0.0)


def test_task_sets_resolve_from_names_and_lists():
    assert chatcore.resolve_tasks(None) == ("nanosft6", chatcore.TASK_SETS["nanosft6"])
    five = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")
    assert chatcore.resolve_tasks("nanochat") == ("nanochat", five)
    assert chatcore.resolve_tasks(["HumanEval", "GSM8K", "MMLU", "ARC-Challenge", "ARC-Easy"])[0] == "nanochat"
    assert chatcore.resolve_tasks(["GSM8K"]) == ("nanosft6", ("GSM8K",))  # partial
    with pytest.raises(ValueError, match="nanochat"):
        chatcore.resolve_tasks("nanochat6")
    with pytest.raises(ValueError, match="ARC-Easy"):
        chatcore.resolve_tasks(["ARC-Medium"])


def test_run_chatcore_labels_the_set_and_partial_runs(monkeypatch, tokenizer):
    outcomes = {"ARC-Easy": [True, False], "ARC-Challenge": [False, False], "MMLU": [True, True],
                "GSM8K": [True, False], "HumanEval": [False, False], "SpellingBee": [True, True]}
    monkeypatch.setattr(chatcore, "evaluate_task", lambda model, tok, name, probs, **kw: outcomes[name][: len(probs)])
    problems = {name: [{}, {}] for name in outcomes}
    model = torch.nn.Linear(1, 1)
    res = chatcore.run_chatcore(model, tokenizer, "nanochat", problems=problems)
    assert res["task_set"] == "nanochat" and res["complete"]
    assert set(res["tasks"]) == set(chatcore.TASK_SETS["nanochat"])
    centered = [(0.5 - 0.25) / 0.75, -1 / 3, 1.0, 0.5, 0.0]
    assert res["chatcore_metric"] == pytest.approx(sum(centered) / 5)
    logs = chatcore.log_metrics(res)
    assert logs["chatcore_metric/nanochat"] == res["chatcore_metric"] and "chatcore_cat/nanochat" in logs
    partial = chatcore.run_chatcore(model, tokenizer, ["GSM8K", "ARC-Easy"], problems=problems)
    assert partial["task_set"] == "nanosft6" and not partial["complete"]
    assert "chatcore_metric" not in partial and "chatcore_cat" not in partial
    assert set(chatcore.log_metrics(partial)) == {"chatcore/GSM8K", "chatcore/ARC-Easy"}


def test_numeric_answers_are_extracted_and_compared_exactly():
    problems = [{"reference": "1234"}] * 4 + [{"reference": "-3"}]
    replies = ["so #### 1,234", "#### 1234.", "the answer is 1234", "#### 12345", "#### -3"]
    assert chatcore.score_numeric(problems, replies) == [True, False, False, False, True]


class AlwaysA(torch.nn.Module):
    """A fake causal LM whose logits favour token "A" (id 65) at every position."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep=None, use_cache=None, **kwargs):
        t = input_ids.shape[1] if logits_to_keep is None else len(logits_to_keep)
        logits = torch.zeros(input_ids.shape[0], t, 65536)
        logits[..., 65] = 1.0
        return type("Out", (), {"logits": logits})()


def test_categorical_accuracy_of_a_constant_model_is_the_share_of_a_answers(tokenizer):
    problems = chatcore.load_problems("ARC-Easy", data_dir=DATA, max_problems=40)
    expected = sum(p["messages"][1]["content"] == "A" for p in problems) / 40
    res = chatcore.run_chatcore(AlwaysA(), tokenizer, ["ARC-Easy"], problems={"ARC-Easy": problems}, batch_size=16)
    assert res["tasks"]["ARC-Easy"]["accuracy"] == pytest.approx(expected)
    assert "chatcore_metric" not in res  # one task of six: partial


def test_batched_categorical_equals_one_at_a_time(tokenizer, tiny_model):
    model = tiny_model()
    problems = chatcore.load_problems("ARC-Challenge", data_dir=DATA, max_problems=10)
    preds, scores = chatcore.predict_categorical(model, tokenizer, problems, batch_size=4, return_scores=True)
    renderer = chatcore.renderer_for(tokenizer)
    letter_ids = chatcore.letter_token_ids(tokenizer, "ABCD")
    lengths = set()
    for p, pred, score in zip(problems, preds, scores):
        ids = renderer.render_for_completion(p["messages"])
        lengths.add(len(ids))
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1, letter_ids]
        torch.testing.assert_close(score, ref, atol=1e-4, rtol=1e-4)
        assert pred == "ABCD"[int(ref.argmax())]
    assert len(lengths) > 1, "batches must mix prompt lengths to exercise padding"


def test_generative_pass_at_k_counts_a_problem_once_any_sample_is_right(tokenizer, monkeypatch):
    problems = [{"messages": [{"role": "user", "content": f"q{i}"}], "reference": str(i)} for i in range(3)]
    answers = {0: ["#### 9", "#### 0"], 1: ["#### 1", "#### 1"], 2: ["#### 5", "no"]}

    def fake_complete(model, tok, probs, *args, **kwargs):
        return [answers[int(p["messages"][0]["content"][1:])] for p in probs]

    monkeypatch.setattr(chatcore, "complete_problems", fake_complete)
    assert chatcore.evaluate_task(None, tokenizer, "GSM8K", problems, num_samples=2) == [True, True, False]


def test_run_chatcore_on_a_tiny_model_restores_train_mode(tokenizer, tiny_model):
    model = tiny_model(init=0.02).train()
    res = chatcore.run_chatcore(
        model,
        tokenizer,
        ["ARC-Easy", "SpellingBee"],
        data_dir=DATA,
        max_categorical=4,
        max_generative=2,
        max_new_tokens=4,
    )
    assert model.training
    assert {n: r["total"] for n, r in res["tasks"].items()} == {"ARC-Easy": 4, "SpellingBee": 2}
    logs = chatcore.log_metrics(res)
    assert set(logs) == {"chatcore/ARC-Easy", "chatcore/SpellingBee"}  # partial: no aggregate


# ---------------------------------------------------------------- CLI


def test_eval_cli_writes_json_and_prints_a_table(tmp_path, tokenizer, capsys, tiny_model):
    from nanosft.eval.__main__ import main

    ckpt = tmp_path / "ckpt"
    tiny_model(init=0.02).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    results = main(
        [
            "--model",
            str(ckpt),
            "--tasks",
            "ARC-Easy,GSM8K",
            "--max-problems",
            "3",
            "--data-dir",
            DATA,
            "--max-new-tokens",
            "4",
        ]
    )
    written = json.loads((ckpt / "chatcore.json").read_text())
    assert written["tasks"].keys() == {"ARC-Easy", "GSM8K"}
    assert all(t["total"] == 3 for t in written["tasks"].values())
    assert written["task_set"] == "nanosft6" and written["complete"] is False
    assert "chatcore_metric" not in written and "chatcore_metric" not in results
    table = capsys.readouterr().out
    rows = [line.split()[0] for line in table.strip().splitlines()]
    assert rows[-3:] == ["ARC-Easy", "GSM8K", "partial:"]
    assert "partial: 2 of the 6 tasks of set nanosft6; no ChatCORE" in table
    assert not [f for f in os.listdir(ckpt) if f.startswith(".chatcore.")]  # no temp file left
