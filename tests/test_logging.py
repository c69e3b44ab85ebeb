"""Logging integrations through ``report_to``: TensorBoard writes events offline; wandb/trackio are accepted keys.

One real 2-step ``nanosft.train`` run (in-process, fresh tiny model, T=256) also shows that every run ends
with ``report.md`` next to the model (nanosft/report/report.py).
"""

import glob
import os

import pytest
import yaml

from nanosft.training.config import read_config_dict


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, data_dir):
    from nanosft.train import main

    tmp = tmp_path_factory.mktemp("tb")
    config = {
        "model_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2},
        "tokenizer_name_or_path": os.path.join(data_dir, "nanochat_tokenizer"), "data_dir": data_dir,
        "datasets": [{"name": "spellingbee", "size": 12}], "eval_datasets": [{"name": "gsm8k", "split": "test", "max_rows": 4}],
        "max_length": 256, "per_device_train_batch_size": 2, "max_steps": 2, "optimizer": "adamw",
        "eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 2,
        "output_dir": str(tmp / "run"), "report_to": ["tensorboard"], "save_strategy": "no", "disable_tqdm": True,
    }
    path = tmp / "tb.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path)]) == 0
    return tmp / "run"


def test_report_to_tensorboard_writes_the_train_loss_scalar(tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(tb_run / "runs" / "*" / "events.out.tfevents.*"))
    assert files, os.listdir(tb_run)
    acc = EventAccumulator(os.path.dirname(files[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/tokens_per_second" in tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert "eval/val_bpb" in tags or "train/val_bpb" in tags, tags  # BitsPerByteCallback reaches the integrations


def test_every_run_ends_with_a_report(tb_run):
    text = (tb_run / "report.md").read_text()
    assert "## Throughput" in text and "![loss](loss.png)" in text
    assert (tb_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("value", ["wandb", ["tensorboard", "trackio"], "none", "all"])
def test_report_to_values_pass_config_validation(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_config": {}, "report_to": value}))
    assert read_config_dict(str(path))["report_to"] == value
