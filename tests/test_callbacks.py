"""nanosft.eval.callbacks: bits per byte by hand, and ChatCORE/bpb metrics reaching every log consumer."""

import copy
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from nanosft.eval.callbacks import BitsPerByteCallback, ChatCoreCallback, evaluate_bpb, token_bytes

from conftest import DATA_DIR as DATA  # noqa: E402  (the shared data folder, NANOSFT_DATA_DIR)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer(nanochat_tokenizer):
    # a copy: trainers in this module set pad tokens on it, the session tokenizer stays pristine
    return copy.deepcopy(nanochat_tokenizer)


@pytest.fixture
def tiny_model(tiny_nanochat):
    return lambda: tiny_nanochat(hidden_size=32, intermediate_size=64, layers=1, heads=2, max_pos=256)


class Recorder(TrainerCallback):
    """Stands in for a report_to integration: keeps a copy of every logs dict it receives."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_token_bytes_counts_utf8_bytes_and_zeroes_special_tokens(tokenizer):
    tb = token_bytes(tokenizer)
    assert tb.dtype == torch.long and tb.shape == (65536,)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    assert tb[enc("A")[0]] == 1 and tb[enc(" A")[0]] == 2 and tb[enc(" the")[0]] == 4
    assert all(tb[i] == 0 for i in range(65527, 65536))
    e_acute = enc("é")
    assert int(tb[e_acute].sum()) == 2  # one character, two UTF-8 bytes, however it is split
    assert token_bytes(tokenizer, vocab_size=70000).shape == (70000,)


class UniformModel(torch.nn.Module):
    """Zero logits over V tokens: every target costs exactly ln V nats."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=None, **kwargs):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_bits_per_byte_matches_hand_computation():
    vocab = 8
    tb = torch.tensor([0, 1, 2, 3, 1, 1, 4, 0])  # ids 0 and 7 are "special" (0 bytes)
    batch = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "labels": torch.tensor([[1, 2, -100, 7], [3, 6, 0, -100]]),  # already shifted targets
    }
    # counted targets: 1, 2, 3, 6 (bytes 1+2+3+4 = 10); -100 and the 0-byte ids 7, 0 are skipped
    expected = 4 * math.log(vocab) / (math.log(2) * 10)
    assert evaluate_bpb(UniformModel(vocab), [batch], tb) == pytest.approx(expected)
    # the same targets written HF-style (unshifted: labels[t] is the token at t)
    unshifted = {"input_ids": batch["input_ids"], "labels": torch.tensor([[-100, 1, 2, -100], [-100, 3, 6, -100]])}
    assert evaluate_bpb(UniformModel(vocab), [unshifted], tb, labels_shifted=False) == pytest.approx(expected)


def test_bits_per_byte_of_a_real_model_equals_a_per_token_loop(tokenizer, tiny_model):
    model = tiny_model().eval()
    tb = token_bytes(tokenizer)
    ids = torch.tensor([[65527, 65528, 500, 600, 65529, 65530, 700, 800, 65531]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 700, 800, 65531, -100]])
    got = evaluate_bpb(model, [{"input_ids": ids, "labels": labels}], tb)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    nats = -(logp[5, 700] + logp[6, 800])  # 65531 (<|assistant_end|>) is special: excluded
    assert got == pytest.approx(float(nats) / (math.log(2) * int(tb[700] + tb[800])), rel=1e-5)


def _lm_batches(n=4, length=12):
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(100, 5000, (n, length), generator=g)
    return [{"input_ids": r, "labels": r.clone()} for r in rows]


def _collate(features):
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def _chatcore_cb(tokenizer):
    return ChatCoreCallback(
        tokenizer,
        tasks=["ARC-Easy", "SpellingBee"],
        every=2,
        max_categorical=4,
        max_generative=2,
        data_dir=DATA,
        max_new_tokens=4,
    )


# two optimizer steps on CPU, logging only when a callback asks for it
TWO_STEPS = dict(max_steps=2, per_device_train_batch_size=2, logging_steps=100, report_to=[], save_strategy="no",
                 use_cpu=True, disable_tqdm=True)


def _logged(recorder, key):
    return [entry for entry in recorder.logs if key in entry]


def test_plain_trainer_logs_chatcore_and_bpb_to_integrations(tmp_path, tokenizer, tiny_model):
    recorder = Recorder()
    data = _lm_batches()
    args = TrainingArguments(output_dir=str(tmp_path), **TWO_STEPS)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=data, data_collator=_collate, callbacks=[recorder])
    val = [{"input_ids": data[0]["input_ids"][None, :-1], "labels": data[0]["input_ids"][None, 1:]}]
    _chatcore_cb(tokenizer).attach(trainer)
    BitsPerByteCallback(val, token_bytes(tokenizer), every=2).attach(trainer)
    trainer.train()
    entries = _logged(recorder, "chatcore/ARC-Easy")
    assert len(entries) == 1 and entries[0]["loss"] > 0  # logged with the step-2 train log
    entry = entries[0]
    assert {"chatcore/ARC-Easy", "chatcore/SpellingBee", "val_bpb"} <= entry.keys()
    # 2 of the 6 tasks of the default set: partial, so no ChatCORE aggregate is logged (as nanochat)
    assert not [k for k in entry if k.startswith(("chatcore_metric", "chatcore_cat"))]
    assert entry["val_bpb"] > 0
    assert any("chatcore/SpellingBee" in h and h["step"] == 2 for h in trainer.state.log_history)


def test_sft_trainer_logs_chatcore_without_draining_trl_metrics(tmp_path, tokenizer, tiny_model):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    recorder = Recorder()
    ids = [r["input_ids"].tolist() for r in _lm_batches()]
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, max_length=32, **TWO_STEPS)
    trainer = SFTTrainer(
        model=tiny_model(),
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    _chatcore_cb(None).attach(trainer)  # tokenizer taken from the trainer's processing_class
    trainer.train()
    entries = _logged(recorder, "chatcore/ARC-Easy")
    assert len(entries) == 1
    assert "mean_token_accuracy" in entries[0] and "loss" in entries[0]  # TRL's buffers reached the same log


def test_unattached_callback_warns_and_still_fills_log_history(tmp_path, tokenizer, caplog, tiny_model):
    args = TrainingArguments(output_dir=str(tmp_path), **TWO_STEPS)
    cb = ChatCoreCallback(tokenizer, tasks=["ARC-Easy"], every=2, max_categorical=3, data_dir=DATA)
    trainer = Trainer(
        model=tiny_model(), args=args, train_dataset=_lm_batches(), data_collator=_collate, callbacks=[cb]
    )
    with caplog.at_level(logging.WARNING, logger="nanosft.eval.callbacks"):
        trainer.train()
    assert "attach" in caplog.text
    assert any("chatcore/ARC-Easy" in h for h in trainer.state.log_history)


def test_disabled_callback_never_evaluates(tmp_path, tokenizer, tiny_model):
    args = TrainingArguments(output_dir=str(tmp_path), **{**TWO_STEPS, "logging_steps": 1})
    cb = ChatCoreCallback(tokenizer, tasks=["ARC-Easy"], every=-1, data_dir=DATA)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=_lm_batches(), data_collator=_collate)
    cb.attach(trainer)
    trainer.train()
    assert cb.problems is None and not any("chatcore/ARC-Easy" in h for h in trainer.state.log_history)


def test_chatcore_and_bpb_split_work_across_two_processes_and_gather():
    script = os.path.join(REPO, "tests", "distributed", "chatcore_check.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", script]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("CHATCORE_DISTRIBUTED_OK") == 2
    assert proc.stdout.count("BPB_DISTRIBUTED_OK") == 2
