"""End to end: the README's main command trains, saves and chats; plain transformers reloads the result."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def accelerate_bin():
    return os.path.join(os.path.dirname(sys.executable), "accelerate")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("tiny") / "run"
    cmd = [accelerate_bin(), "launch", "--num_processes", "1", "-m", "nanosft.train", "--config", "configs/tiny.yaml",
           "--set", "max_steps=10", "--set", "save_steps=5", "--set", "eval_steps=5", "--set", f"output_dir={out}",
           "--set", f"data_dir={data_dir}", "--set", f"tokenizer_name_or_path={data_dir}/nanochat_tokenizer",
           "--set", "chatcore_every=10", "--set", "chatcore_max_categorical=4", "--set", "chatcore_max_generative=1",
           "--set", "chatcore_max_new_tokens=8"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_tiny_run_writes_an_hf_checkpoint_with_records(tiny_run):
    out, _ = tiny_run
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
                 "run_config.json", "metrics.json", "data_stats.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-5" / "optimizer.pt").is_file() and (out / "checkpoint-10").is_dir()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 65531  # <|assistant_end|> in the nanochat vocabulary
    run = json.loads((out / "run_config.json").read_text())
    assert run["config"]["optimizer"] == "muon" and run["versions"]["torch"].startswith("2.")
    stats = json.loads((out / "data_stats.json").read_text())
    assert set(stats) == {"gsm8k[train]", "identity[train]", "spellingbee[train]"}


def test_tiny_run_loss_falls_and_is_shown_with_progress(tiny_run):
    out, proc = tiny_run
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert "it/s]" in proc.stderr or "s/it]" in proc.stderr  # tqdm progress bar
    assert any("eval_loss" in h for h in history)
    assert any("val_bpb" in h for h in history)  # BitsPerByteCallback at the eval cadence
    final = [h for h in history if "chatcore_metric/nanosft6" in h]  # the default six-task set, named in the key
    assert final and {"chatcore/ARC-Easy", "chatcore/GSM8K", "chatcore/SpellingBee", "chatcore/HumanEval",
                      "chatcore_cat/nanosft6"} <= set(final[-1])


def test_checkpoint_loads_and_generates_without_nanosft(tiny_run):
    out, _ = tiny_run
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r})
inputs = tok.apply_chat_template([{{"role": "user", "content": "How many r are in strawberry?"}}],
                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
ids = inputs["input_ids"][0].tolist()
assert ids[0] == 65527 and ids[1] == 65528 and ids[-1] == 65530, ids
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
assert out.shape[1] > inputs["input_ids"].shape[1]
assert "nanosft" not in sys.modules
print("GENERATED", tok.decode(out[0, inputs["input_ids"].shape[1]:]))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd="/", env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED" in proc.stdout


def test_chat_cli_one_shot_streams_a_reply(tiny_run):
    out, _ = tiny_run
    proc = subprocess.run([sys.executable, "-m", "nanosft.chat", "--model", str(out), "--prompt", "Hi",
                           "--max-new-tokens", "5"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() != ""
