"""Checkpoints: atomic saves, ``resume_from_checkpoint: auto``, bit-exact resume after kill -9, records.

Each run is the tiny recipe (2 x 64 NanoChat, T=128, fp32, seeded) for ``STEPS`` optimizer steps with a
checkpoint every ``SAVE`` steps (and at the end); an uninterrupted run is the reference.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from ckpt_common import ENV, REPO, tiny_overrides  # noqa: E402

from nanosft.training import checkpoint as ckpt  # noqa: E402

STEPS, SAVE = 7, 3  # checkpoints at 3, 6 and 7 (the end)
TRAIN = [sys.executable, "-m", "nanosft.train", "--config", "configs/tiny.yaml"]


def run_args(data_dir, out, **extra):
    return tiny_overrides(data_dir, str(out), max_steps=STEPS, save_steps=SAVE, seed=42, **extra)


def run(cmd, env=None):
    proc = subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def final_weights(out):
    return load_file(os.path.join(out, "model.safetensors"))


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ after resume: {diff[:5]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The uninterrupted reference run and a run killed inside its step-6 save, run side by side
    (one thread each: the two cores run them in parallel)."""
    root = tmp_path_factory.mktemp("ckpt")
    crash = [sys.executable, "tests/distributed/ckpt_crash_in_save.py", "--config", "configs/tiny.yaml"]
    procs = {
        "reference": subprocess.Popen(TRAIN + run_args(data_dir, root / "reference"), cwd=REPO, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "crashed": subprocess.Popen(crash + run_args(data_dir, root / "crashed"), cwd=REPO,
                                    env={**ENV, "NANOSFT_CRASH_STEP": "6"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True),
    }
    results = {name: (p, *p.communicate(timeout=600)) for name, p in procs.items()}
    p, _, err = results["reference"]
    assert p.returncode == 0, err[-4000:]
    return root, results


@pytest.fixture(scope="module")
def reference(runs):
    return runs[0] / "reference"


def test_checkpoints_every_save_steps_and_at_the_end_with_a_record(reference):
    names = sorted(n for n in os.listdir(reference) if n.startswith("checkpoint"))
    assert names == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
    assert not [n for n in os.listdir(reference) if n.startswith(ckpt.TMP_PREFIX)]
    rec = ckpt.read_record(reference / "checkpoint-6")
    assert rec["global_step"] == 6 and rec["max_steps"] == STEPS
    assert rec["tokens_seen"]["input"] > rec["tokens_seen"]["supervised"] > 0
    assert rec["config"]["max_length"] == 128 and rec["config"]["optimizer"] == "muon"
    assert set(rec["versions"]) >= {"torch", "transformers", "trl", "nanosft"}
    assert {"val_bpb", "chatcore", "eval_loss"} <= set(rec)
    card = (reference / "checkpoint-6" / "README.md").read_text()
    assert "## Recipe" in card and "gsm8k" in card
    # tokens are cumulative: the end record counts more than the step-6 one
    assert ckpt.read_record(reference / "checkpoint-7")["tokens_seen"]["input"] > rec["tokens_seen"]["input"]


def test_kill_9_at_a_random_step_then_auto_resume_is_bit_identical(reference, tmp_path, data_dir):
    out = tmp_path / "killed"
    kill_at = random.Random(time.time_ns()).randint(SAVE + 1, STEPS - 1)  # after the first checkpoint
    proc = subprocess.Popen(TRAIN + run_args(data_dir, out), cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    steps_logged = 0
    for line in proc.stdout:  # one {'loss': ...} line per optimizer step (logging_steps=1)
        if line.startswith("{'loss'"):
            steps_logged += 1
            if steps_logged == kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    assert not (out / f"checkpoint-{STEPS}").exists()
    latest = ckpt.latest_checkpoint(str(out))
    assert latest is not None and int(latest.rsplit("-", 1)[1]) in (3, 6)
    resumed = run(TRAIN + run_args(data_dir, out, resume_from_checkpoint="auto"))
    assert f"resume_from_checkpoint=auto: {latest}" in resumed.stderr
    assert_bit_identical(final_weights(out), final_weights(reference))
    # the resumed run's record keeps counting tokens from where the checkpoint stopped
    assert ckpt.read_record(out / f"checkpoint-{STEPS}")["tokens_seen"] == \
        ckpt.read_record(reference / f"checkpoint-{STEPS}")["tokens_seen"]


def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(runs, reference, data_dir):
    from transformers import AutoModelForCausalLM

    out = runs[0] / "crashed"
    proc, stdout, stderr = runs[1]["crashed"]
    assert proc.returncode == -signal.SIGKILL and "CRASHING_IN_SAVE" in stdout, stderr[-3000:]
    # the half-written save is a tmp folder, never a checkpoint-6 that resume could pick
    assert (out / "tmp-checkpoint-6" / "checkpoint-6" / "model.safetensors").is_file()
    assert not (out / "checkpoint-6").exists()
    assert ckpt.latest_checkpoint(str(out)) == str(out / "checkpoint-3")
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint-3")
    assert model.num_parameters() > 0
    torch.load(out / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    # auto resumes from checkpoint-3, clears the stale tmp folder and still ends bit-identical
    run(TRAIN + run_args(data_dir, out, resume_from_checkpoint="auto"))
    assert not (out / "tmp-checkpoint-6").exists() and (out / "checkpoint-6").is_dir()
    assert_bit_identical(final_weights(out), final_weights(reference))


def test_resolve_resume_values(tmp_path):
    assert ckpt.resolve_resume(None, str(tmp_path)) is None
    assert ckpt.resolve_resume("auto", str(tmp_path / "missing")) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.resolve_resume(True, str(tmp_path))
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # incomplete: written by a killed stock Trainer
    (tmp_path / "tmp-checkpoint-14" / "checkpoint-14").mkdir(parents=True)
    assert ckpt.resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert ckpt.resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "checkpoint-12"), str(tmp_path))


def test_commit_replaces_an_existing_checkpoint_atomically(tmp_path):
    final = tmp_path / "checkpoint-5"
    final.mkdir()
    (final / "old.txt").write_text("old")
    written = tmp_path / "tmp-checkpoint-5" / "checkpoint-5"
    written.mkdir(parents=True)
    (written / "trainer_state.json").write_text("{}")
    ckpt.commit(str(written), str(final))
    assert sorted(os.listdir(final)) == ["trainer_state.json"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-5"]


def test_records_redact_tokens():
    assert ckpt.redact({"hub_token": "hf_abc", "max_length": 3, "pad_token": None}) == \
        {"hub_token": "<redacted>", "max_length": 3, "pad_token": None}


def test_training_record_lists_only_the_lrs_the_optimizer_used(tmp_path):
    """Hugging Face one-LR AdamW (`optimizer_kwargs: {lr: ...}`) trains every group at lr: the record gives it as
    `learning_rate` and nulls the four group LRs, so a later run does not inherit group LRs that were never used."""
    from types import SimpleNamespace

    lrs = {"embedding_lr": 0.2, "unembedding_lr": 0.004, "matrix_lr": 0.02, "scalar_lr": 0.5}
    hf_adamw = SimpleNamespace(optimizer="adamw", optimizer_kwargs={"lr": 3e-5, "adam_eps": 1e-8}, **lrs)
    trainer = SimpleNamespace(args=hf_adamw, optimizer_choice="auto", base_model_path="b")
    ckpt.write_training_config(str(tmp_path), trainer)
    record = json.loads((tmp_path / "nanosft_config.json").read_text())
    assert record == {"optimizer": "adamw", "optimizer_choice": "auto", "embedding_lr": None, "unembedding_lr": None,
                      "matrix_lr": None, "scalar_lr": None, "learning_rate": 3e-5, "base_model": "b"}
    grouped = SimpleNamespace(optimizer="muon", optimizer_kwargs=None, **lrs)
    ckpt.write_training_config(str(tmp_path), SimpleNamespace(args=grouped, base_model_path="b"))
    record = json.loads((tmp_path / "nanosft_config.json").read_text())
    assert {k: record[k] for k in lrs} == lrs and record["learning_rate"] is None


def test_a_nanosft_checkpoint_passes_on_its_optimizer_and_lrs(tmp_path, data_dir):
    """Run 1 fine-tunes a plain Llama with Muon at chosen LRs; run 2 starts from run 1's output with
    ``optimizer: auto`` and no LRs: its nanosft_config.json makes it Muon at run 1's LRs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=65536, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4)).save_pretrained(base)
    lrs = {"embedding_lr": 0.01, "unembedding_lr": 0.003, "matrix_lr": 0.011}
    first, second = tmp_path / "first", tmp_path / "second"
    proc = run(TRAIN + tiny_overrides(data_dir, str(first), max_steps=2, save_steps=2, model_config="null",
                                      model_name_or_path=str(base), optimizer="muon", **lrs))
    assert "optimizer muon: set in the config" in proc.stdout
    # scalar_lr not set and the Llama has no LR record: the pretrained-model default, not nanochat's 0.5
    assert "scalar_lr = 0.0001 (default for a base not pretrained with Muon)" in proc.stderr
    lrs["scalar_lr"] = 1e-4
    for folder in (first, first / "checkpoint-2"):
        record = json.loads((folder / "nanosft_config.json").read_text())
        assert record["optimizer"] == "muon" and record["base_model"] == str(base)
        assert {k: record[k] for k in lrs} == lrs
    proc = run(TRAIN + tiny_overrides(data_dir, str(second), max_steps=1, save_steps=1, model_config="null",
                                      model_name_or_path=str(first), optimizer="auto"))
    choice = "optimizer auto -> muon: the base model's nanosft_config.json records muon"
    assert choice in proc.stdout, proc.stdout[-2000:]
    assert "matrix_lr = 0.011 (inherited from" in proc.stderr
    record = json.loads((second / "nanosft_config.json").read_text())
    assert record["optimizer"] == "muon" and record["optimizer_choice"] == choice
    assert {k: record[k] for k in lrs} == lrs and record["base_model"] == str(first)
    assert json.loads((second / "run_config.json").read_text())["optimizer_choice"] == choice
    assert f"- {choice}" in (second / "README.md").read_text()
