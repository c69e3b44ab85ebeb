"""nanosft/data/mixture.py validation, rendering and statistics; nanosft/train.py startup checks."""

import json
import logging

import pytest

from nanosft.data.mixture import DatasetSpec, DataValidationError, load_mixture, render_dataset, supervision_stats
from nanosft.format.template import ChatRenderer

GOOD = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]

BAD_ROWS = {
    "roles not alternating": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "assistant", "content": "c"}], "roles must alternate"),
    "first not user": ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
                       "first non-system message must be from the user"),
    "empty conversation": ([], "empty conversation"),
    "no assistant": ([{"role": "user", "content": "a"}], "no assistant message"),
    "content None": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}], "content is None"),
    "content not str or list": ([{"role": "user", "content": {"text": "a"}}, {"role": "assistant", "content": "b"}],
                                "content must be a string or a list of parts"),
    "unknown part type": ([{"role": "user", "content": "a"},
                           {"role": "assistant", "content": [{"type": "tool_call", "text": "x"}]}],
                          "unknown type 'tool_call'"),
    "unknown role": ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "unknown role 'bot'"),
}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_invalid_row_error_names_dataset_row_and_reason(tmp_path, case):
    row, reason = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD, GOOD, row, GOOD])
    spec = DatasetSpec.from_dict({"name": "jsonl", "path": path})
    with pytest.raises(DataValidationError) as e:
        load_mixture([spec], data_dir=None)
    msg = str(e.value)
    assert f"dataset jsonl/{path}[train]" in msg
    assert f"{path}[train], line 3;" in msg  # the 1-based line of the file
    assert reason in msg
    assert "skip_invalid" in msg  # says what to change


def test_rows_wrapped_in_messages_dicts_are_accepted(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": GOOD}, GOOD])
    convs, sources = load_mixture([DatasetSpec.from_dict({"name": "jsonl", "path": path})], data_dir=None)
    assert len(convs) == 2 and sources == [f"jsonl/{path}[train]"] * 2


def test_skip_invalid_skips_bad_rows_and_logs_count(tmp_path, caplog):
    rows = [GOOD] + [BAD_ROWS[k][0] for k in sorted(BAD_ROWS)] + [GOOD, GOOD]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    spec = DatasetSpec.from_dict({"name": "jsonl", "path": path})
    with caplog.at_level(logging.WARNING, logger="nanosft.data.mixture"):
        convs, _ = load_mixture([spec], data_dir=None, skip_invalid=True)
    assert len(convs) == 3
    assert f"skipped {len(BAD_ROWS)} invalid rows of {len(rows)}" in caplog.text


def test_skip_invalid_still_fails_when_nothing_is_left(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_ROWS["no assistant"][0]])
    with pytest.raises(DataValidationError, match="no valid conversations"):
        load_mixture([DatasetSpec.from_dict({"name": "jsonl", "path": path})], data_dir=None, skip_invalid=True)


def test_skip_invalid_is_off_by_default(tmp_path):
    """Called without ``skip_invalid``, one bad row among good ones fails the whole mixture."""
    path = write_jsonl(tmp_path / "one_bad.jsonl", [GOOD, GOOD, BAD_ROWS["no assistant"][0]])
    with pytest.raises(DataValidationError, match="skip_invalid"):
        load_mixture([DatasetSpec.from_dict({"name": "jsonl", "path": path})], data_dir=None)


def test_real_mixture_renders_with_per_source_stats(nanochat_tokenizer, data_dir):
    specs = [DatasetSpec.from_dict(d) for d in ({"name": "gsm8k", "max_rows": 40, "epochs": 2},
                                                {"name": "identity", "max_rows": 20})]
    convs, sources = load_mixture(specs, data_dir, seed=42)
    assert len(convs) == 100
    renderer = ChatRenderer(nanochat_tokenizer, max_tokens=257)
    ds = render_dataset(renderer, convs, sources, chunk=32)
    assert ds.column_names == ["input_ids", "assistant_masks", "source"]
    assert all(len(i) == len(m) <= 257 for i, m in zip(ds["input_ids"], ds["assistant_masks"]))
    stats = supervision_stats(ds, renderer.stats)
    assert set(stats) == {"gsm8k[train]", "identity[train]"}
    assert stats["gsm8k[train]"]["conversations"] == 80
    for s in stats.values():
        assert 0.2 < s["supervised_ratio"] < 0.95
        assert s["max_len"] <= 257
    assert stats["identity[train]"]["truncated"] > 0  # identity chats run past 257 tokens
    assert sum(s["truncated"] for s in stats.values()) == renderer.stats.truncated


def _rendered(rows):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "assistant_masks": [r[1] for r in rows],
                                       "source": ["x"] * len(rows)})


def test_check_supervision_accepts_a_normal_rendering(nanochat_tokenizer):
    from nanosft.data.prepare import check_supervision

    check_supervision(_rendered(ChatRenderer(nanochat_tokenizer).render_batch([GOOD, GOOD])), nanochat_tokenizer)


def test_check_supervision_refuses_nothing_supervised(nanochat_tokenizer):
    from nanosft.data.prepare import check_supervision

    ids, mask = ChatRenderer(nanochat_tokenizer).render(GOOD)
    with pytest.raises(ValueError, match="no supervised token"):
        check_supervision(_rendered([(ids, [0] * len(mask))]), nanochat_tokenizer)


def test_check_supervision_refuses_no_supervised_assistant_end(nanochat_tokenizer):
    from nanosft.data.prepare import check_supervision

    # truncation that cuts every <|assistant_end|> away: the model would never learn to stop
    ids, mask = ChatRenderer(nanochat_tokenizer, max_tokens=7).render(GOOD)
    assert sum(mask) > 0 and 65531 not in ids
    with pytest.raises(ValueError, match="no supervised <\\|assistant_end\\|>"):
        check_supervision(_rendered([(ids, mask)]), nanochat_tokenizer)
    # present but unsupervised (a template without the end in its generation block) is refused too
    ids, mask = ChatRenderer(nanochat_tokenizer).render(GOOD)
    mask = [0 if t == 65531 else m for t, m in zip(ids, mask)]
    with pytest.raises(ValueError, match="assistant_end"):
        check_supervision(_rendered([(ids, mask)]), nanochat_tokenizer)


def test_max_rows_is_a_seeded_subset_across_mmlu_subjects(full_data_dir):
    """MMLU's local files are sorted by subject: the first 160 val rows cover 11 subjects and answer D 33%
    of the time (52/160). ``max_rows`` must draw from the whole split instead (full data: 1,542 val rows)."""
    import collections

    data_dir = full_data_dir

    from nanosft.data.tasks import mmlu

    full = [p["messages"] for p in mmlu.load_problems("val", data_dir)]
    spec = DatasetSpec.from_dict({"name": "mmlu", "split": "val", "max_rows": 160})
    convs, _ = load_mixture([spec], data_dir, seed=42)
    again, _ = load_mixture([spec], data_dir, seed=42)
    other, _ = load_mixture([spec], data_dir, seed=7)
    assert len(convs) == 160 and convs == again and convs != other
    users = {c[0]["content"] for c in convs}
    assert users <= {c[0]["content"] for c in full}  # rows of the split, not new ones
    first = [c[0]["content"] for c in full[:160]]
    assert len(users & set(first)) < 60  # ~160 * 160/1542 = 17 expected overlap, not all 160
    letters = collections.Counter(c[-1]["content"][0]["text"] for c in convs)  # normalized: a list of parts
    assert set(letters) == {"A", "B", "C", "D"} and max(letters.values()) <= 0.32 * 160
    idx = spec.row_indices(len(full), 42)
    assert idx == sorted(idx) and len(set(idx)) == 160 and max(idx) > 1000


def test_max_rows_errors_name_the_source_row(tmp_path):
    bad = BAD_ROWS["no assistant"][0]
    spec = DatasetSpec.from_dict({"name": "jsonl", "path": str(tmp_path / "m.jsonl"), "max_rows": 10})
    kept = spec.row_indices(100, 42)
    assert kept != list(range(10))
    # every row that is not drawn is invalid: loading still succeeds, so only the drawn rows are read
    write_jsonl(tmp_path / "m.jsonl", [GOOD if i in kept else bad for i in range(100)])
    convs, _ = load_mixture([spec], data_dir=None, seed=42)
    assert len(convs) == 10
    # a bad row among the drawn ones is reported by its (1-based) line in the file
    write_jsonl(tmp_path / "m.jsonl", [bad if i == kept[3] else GOOD for i in range(100)])
    with pytest.raises(DataValidationError, match=rf"m.jsonl\[train\], line {kept[3] + 1};"):
        load_mixture([spec], data_dir=None, seed=42)
