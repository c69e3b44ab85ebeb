"""The recipe under 2 processes on CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 with the repo's launch configs.

Each run is the tiny recipe with ``optimizer: adamw`` (the same grouped torch AdamW in every mode; DeepSpeed's
Muon has other math than MuonAdamW, see nanosft/optim/muon.py) and one global batch of 4 rows: 1 process x 4 rows
against 2 processes x 2 rows. accelerate's ``BatchSamplerShard`` gives rank r the r-th batch of 2 of the same
seeded order, so each step sees the same 4 rows, and the loss is normalized by the supervised tokens of the
whole step across ranks: the logged loss of every step must agree within 1e-4.

On a machine without GPU, TrainingArguments need a hint or each process silently trains alone (transformers
warns "process group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED"): DDP needs
``use_cpu: true`` (accelerate's MULTI_CPU, gloo); DeepSpeed needs ``ddp_backend: gloo`` (``use_cpu`` would
turn DeepSpeed off). The GPU launch yamls are used as they are, with ``--num_processes 2``. The tests also
check that every step consumed the global batch (same ``num_tokens`` and ``epoch`` as the 1-process run).
"""

import json
import os
import sys

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
from ckpt_common import ENV, REPO, bin_path, tiny_overrides  # noqa: E402

STEPS, TOL = 4, 1e-4
ENV_DIST = {**ENV, "TORCH_COMPILE_DISABLE": "1"}


def losses_of(out):
    """[(loss, num_tokens, epoch)] per logged optimizer step."""
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    return [(h["loss"], h["num_tokens"], h["epoch"]) for h in history if "loss" in h]


def train(cmd, out, data_dir, rows, **extra):
    import subprocess

    sets = tiny_overrides(data_dir, str(out), max_steps=STEPS, save_steps=STEPS, optimizer="adamw",
                          per_device_train_batch_size=rows, seed=42, **extra)
    proc = subprocess.run(cmd + ["-m", "nanosft.train", "--config", "configs/tiny.yaml"] + sets, cwd=REPO,
                          env=ENV_DIST, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return losses_of(out), proc


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("dist") / "single"
    losses, _ = train([bin_path("accelerate"), "launch", "--num_processes", "1"], out, data_dir, rows=4)
    assert len(losses) == STEPS
    return losses


def assert_close(got, ref):
    assert len(got) == len(ref) == STEPS, (got, ref)
    assert [g[1:] for g in got] == [r[1:] for r in ref], "a step did not consume the whole global batch"
    diffs = [abs(a[0] - b[0]) for a, b in zip(got, ref)]
    print("losses", [g[0] for g in got], "reference", [r[0] for r in ref], "max |diff|", max(diffs))
    assert max(diffs) <= TOL, (got, ref, diffs)


def test_ddp_two_processes_match_one_process(single, tmp_path, data_dir):
    out = tmp_path / "ddp"
    losses, _ = train([bin_path("accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                       "--main_process_port", free_port()], out, data_dir, rows=2, use_cpu="true")
    assert_close(losses, single)
    assert (out / f"checkpoint-{STEPS}" / "rng_state_1.pth").is_file()  # both ranks' RNG in the atomic save


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes_match_one_process(single, tmp_path, data_dir, stage):
    out = tmp_path / f"zero{stage}"
    losses, proc = train([bin_path("accelerate"), "launch", "--config_file", f"accelerate_configs/zero{stage}.yaml",
                          "--num_processes", "2", "--main_process_port", free_port()], out, data_dir, rows=2,
                         ddp_backend="gloo")
    assert_close(losses, single)
    ckpt = out / f"checkpoint-{STEPS}"
    assert (ckpt / "latest").is_file() and (ckpt / "model.safetensors").is_file()  # ZeRO shards + 16-bit weights
    assert json.loads((ckpt / "nanosft_state.json").read_text())["global_step"] == STEPS
