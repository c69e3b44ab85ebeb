"""The prepared-data cache (nanosft/data/prepare.py): rows identical to the in-memory path, hit and miss, corrupt
caches rebuilt, best-fit decreasing and overlong splitting, and a 2-process run where only rank 0 renders."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)

from nanosft.data.mixture import DatasetSpec, load_mixture, render_dataset, supervision_stats
from nanosft.data.packing import pack_best_fit_decreasing, pack_dataset
from nanosft.data.prepare import ROWS_FILE, document_pieces, prepare_rows
from nanosft.format.template import ChatRenderer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from ckpt_common import ENV, REPO, bin_path, tiny_overrides  # noqa: E402

MIX = [{"name": "gsm8k", "max_rows": 300}, {"name": "identity", "max_rows": 100}, {"name": "spellingbee", "size": 200}]
T = 256  # short enough that 65 GSM8K and most identity conversations are truncated


def specs(mix=MIX):
    return [DatasetSpec.from_dict(d) for d in mix]


def today(tokenizer, data_dir, T=T, buffer_size=100, mix=MIX):
    """The in-memory path that train.build_datasets used before the cache: render_dataset -> pack_dataset."""
    convs, sources = load_mixture(specs(mix), data_dir)
    renderer = ChatRenderer(tokenizer, max_tokens=T + 1)
    rendered = render_dataset(renderer, convs, sources)
    return pack_dataset(rendered, T, buffer_size), supervision_stats(rendered, renderer.stats)


@pytest.mark.parametrize("num_proc", [None, 2])
def test_rows_and_stats_identical_to_the_in_memory_path(nanochat_tokenizer, data_dir, tmp_path, num_proc):
    ref_rows, ref_stats = today(nanochat_tokenizer, data_dir)
    prep = prepare_rows(specs(), data_dir, nanochat_tokenizer, max_length=T, cache_dir=str(tmp_path), num_proc=num_proc)
    assert prep.status == "built"
    assert len(prep.rows) == len(ref_rows)
    got, ref = prep.rows[:], ref_rows[:]
    for col in ("input_ids", "assistant_masks", "seq_lengths"):
        assert got[col] == ref[col], col
    assert prep.rows.features["input_ids"].feature.dtype == "int32"
    assert prep.rows.features["assistant_masks"].feature.dtype == "int8"
    assert sum(s["truncated"] for s in ref_stats.values()) > 0  # the comparison covers truncation
    for src, s in ref_stats.items():
        assert {k: prep.stats[src][k] for k in s} == s
        assert prep.stats[src]["overlong"] == "truncate"


# epochs repeat and sub-sample conversations (each rendered once by prepare_rows); two entries share a label
EPOCH_MIX = [{"name": "gsm8k", "max_rows": 120, "epochs": 2.5}, {"name": "identity", "max_rows": 60, "epochs": 0.3},
             {"name": "spellingbee", "size": 50}, {"name": "spellingbee", "size": 50, "epochs": 1.5}]


def test_epochs_rows_and_stats_identical_to_the_in_memory_path(nanochat_tokenizer, data_dir, tmp_path):
    ref_rows, ref_stats = today(nanochat_tokenizer, data_dir, mix=EPOCH_MIX)
    prep = prepare_rows(specs(EPOCH_MIX), data_dir, nanochat_tokenizer, max_length=T, cache_dir=str(tmp_path))
    got, ref = prep.rows[:], ref_rows[:]
    for col in ("input_ids", "assistant_masks", "seq_lengths"):
        assert got[col] == ref[col], col
    assert ref_stats["spellingbee[train]"]["conversations"] == 50 + 75
    assert sum(s["truncated"] for s in ref_stats.values()) > 0
    for src, s in ref_stats.items():
        assert {k: prep.stats[src][k] for k in s} == s


def test_cache_hit_does_not_load_and_a_changed_input_rebuilds(nanochat_tokenizer, data_dir, tmp_path, monkeypatch):
    jsonl = tmp_path / "extra.jsonl"
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    jsonl.write_text("\n".join(json.dumps({"messages": conv}) for _ in range(5)) + "\n")
    mix = specs(MIX + [{"name": "jsonl", "path": str(jsonl)}])
    cache = str(tmp_path / "cache")
    first = prepare_rows(mix, data_dir, nanochat_tokenizer, max_length=T, cache_dir=cache)
    assert (first.status, first.reason) == ("built", "no cache yet")

    import nanosft.data.prepare

    def no_loading(*a, **k):
        raise AssertionError("a cache hit must not load or render")

    monkeypatch.setattr(nanosft.data.prepare, "iter_conversations", no_loading)
    hit = prepare_rows(mix, data_dir, nanochat_tokenizer, max_length=T, cache_dir=cache)
    assert (hit.status, hit.fingerprint, hit.path) == ("hit", first.fingerprint, first.path)
    assert hit.rows[:] == first.rows[:] and hit.stats == first.stats
    monkeypatch.undo()

    other = prepare_rows(mix, data_dir, nanochat_tokenizer, max_length=128, cache_dir=cache)
    assert other.status == "built" and other.fingerprint != first.fingerprint
    assert "max_length" in other.reason and "sources" not in other.reason

    jsonl.write_text(jsonl.read_text().replace("hello there", "hello again"))  # same specs, new file contents
    changed = prepare_rows(mix, data_dir, nanochat_tokenizer, max_length=128, cache_dir=cache)
    assert changed.status == "built" and "sources" in changed.reason and "max_length" not in changed.reason
    assert changed.fingerprint != other.fingerprint


@pytest.mark.parametrize("damage", ["truncate_rows", "flip_byte", "drop_meta", "garbage_meta"])
def test_corrupt_or_half_written_cache_is_rebuilt(nanochat_tokenizer, data_dir, tmp_path, damage):
    cache = str(tmp_path)
    first = prepare_rows(specs(), data_dir, nanochat_tokenizer, max_length=T, cache_dir=cache)
    expected = first.rows[:]
    rows, meta = os.path.join(first.path, ROWS_FILE), os.path.join(first.path, "meta.json")
    if damage == "truncate_rows":  # a copy cut short
        with open(rows, "r+b") as f:
            f.truncate(os.path.getsize(rows) // 2)
    elif damage == "flip_byte":  # same size, still opens: only the checksum sees it
        with open(rows, "r+b") as f:
            f.seek(os.path.getsize(rows) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "drop_meta":  # killed before the metadata was written
        os.unlink(meta)
    else:
        with open(meta, "w") as f:
            f.write("{not json")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: a killed build's leftovers
    os.makedirs(os.path.join(cache, f".tmp-train-{first.fingerprint}-{socket.gethostname()}-{dead.pid}-0123abcd"))
    again = prepare_rows(specs(), data_dir, nanochat_tokenizer, max_length=T, cache_dir=cache)
    assert again.status == "built" and "corrupt" in again.reason, again.reason
    assert damage != "flip_byte" or "checksum" in again.reason
    assert again.path == first.path and again.rows[:] == expected
    assert [p for p in os.listdir(cache) if p.startswith(".tmp")] == []
    assert prepare_rows(specs(), data_dir, nanochat_tokenizer, max_length=T, cache_dir=cache).status == "hit"


def test_best_fit_decreasing_by_hand():
    # longest first: 6 opens row 0 (room 2), 5 row 1 (room 3), 4 row 2 (room 4); 3 takes the tightest room
    # that fits (row 1, room 3 -> 0); 2 goes to row 0 (room 2 -> 0); 1 to row 2 (room 4 -> 3).
    assert pack_best_fit_decreasing([5, 3, 4, 2, 6, 1], 8) == [[4, 3], [0, 1], [2, 5]]
    assert pack_best_fit_decreasing([4, 4, 4], 4) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="rows hold 1..4"):
        pack_best_fit_decreasing([5], 4)


def test_split_pieces_by_hand():
    import numpy as np

    # capacity 4: a 10-token conversation -> pieces [0,4), [3,7), [6,10) (one token overlap); 3 tokens stay whole
    conv, offset, length, cont = document_pieces(np.array([10, 3]), 4, split=True)
    assert conv.tolist() == [0, 0, 0, 1]
    assert offset.tolist() == [0, 3, 6, 0]
    assert length.tolist() == [4, 4, 4, 3]
    assert cont.tolist() == [False, True, True, False]
    conv, offset, length, cont = document_pieces(np.array([5]), 4, split=True)  # 5 = 4 + 1: second piece of 2 tokens
    assert offset.tolist() == [0, 3] and length.tolist() == [4, 2]


def test_bfd_with_split_keeps_every_supervised_token(nanochat_tokenizer, data_dir, tmp_path):
    convs, sources = load_mixture(specs(), data_dir)
    full = ChatRenderer(nanochat_tokenizer).render_batch(convs, normalized=True)
    tokens = sum(len(x) for x, _ in full)
    supervised = sum(sum(m[1:]) for _, m in full)  # targets: every supervised token but a first one
    prep = prepare_rows(specs(), data_dir, nanochat_tokenizer, max_length=T, cache_dir=str(tmp_path),
                        packing_strategy="bfd", overlong="split")
    rows = prep.rows[:]
    assert all(len(r) <= T + 1 for r in rows["input_ids"])
    assert all(sum(ls) == len(r) for ls, r in zip(rows["seq_lengths"], rows["input_ids"]))
    # every document starts with an unsupervised token (BOS, or a continuation's context token)
    firsts = [m[sum(ls[:k])] for m, ls in zip(rows["assistant_masks"], rows["seq_lengths"]) for k in range(len(ls))]
    assert set(firsts) == {0}
    assert sum(sum(m) for m in rows["assistant_masks"]) == supervised
    over = sum(1 for x, _ in full if len(x) > T + 1)
    assert prep.packing["split"] == over > 0 and prep.packing["truncated"] == 0
    assert prep.packing["tokens_kept"] == tokens
    assert sum(s["split"] for s in prep.stats.values()) == over
    assert {s["overlong"] for s in prep.stats.values()} == {"split"}


def test_two_processes_only_rank_zero_renders(data_dir, tmp_path):
    """accelerate launch (gloo, CPU): rank 0 builds under main_process_first, rank 1 memory-maps the result."""
    sets = tiny_overrides(data_dir, str(tmp_path / "out"), use_cpu="true")
    cmd = [bin_path("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", free_port(),
           "-m", "nanosft.prepare", "--config", "configs/tiny.yaml"] + sets
    proc = subprocess.run(cmd, cwd=REPO, env={**ENV, "TORCH_COMPILE_DISABLE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, proc.stdout
    assert lines[0].split()[:3] == ["rank", "0:", "train"] and lines[0].split()[3] == "built"
    assert lines[1].split()[:4] == ["rank", "1:", "train", "hit"]
    assert lines[0].split()[4] == lines[1].split()[4]  # same fingerprint
    assert os.path.isdir(tmp_path / "out" / "_data_cache")


@pytest.mark.parametrize("key,value", [("packing_strategy", "wrapped"), ("overlong", "drop")])
def test_unknown_packing_options_are_config_errors(key, value):
    from nanosft.training.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=f"{key}: must be"):
        build_config({"model_config": {"hidden_size": 8}, key: value})


def test_prepare_cli_config_error_exits_2(tmp_path, capsys):
    from nanosft.errors import run_cli
    from nanosft.prepare import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("packing_strategy: wrapped\nmodel_config: {hidden_size: 8}\n")
    assert run_cli(main, ["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "packing_strategy: must be" in err
