"""Tests for nanosft/optim/schedule.py: the LR of every group at every step equals the hand formula,
and LRs are inherited from the base checkpoint's training config, or overridden, with a log line."""

import json
import logging

import pytest
import torch
from transformers import NanoChatConfig, NanoChatForCausalLM, get_wsd_schedule

from nanosft.optim.muon import build_optimizer
from nanosft.optim.schedule import build_scheduler, lr_multiplier, resolve_learning_rates


def tiny_nanochat():
    torch.manual_seed(0)
    return NanoChatForCausalLM(NanoChatConfig(
        vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=None))


def test_lr_multiplier_pieces():
    assert lr_multiplier(0.1, warmup_ratio=0.2) == pytest.approx(0.5)
    assert lr_multiplier(0.3) == 1.0 and lr_multiplier(0.5) == 1.0
    assert lr_multiplier(0.75) == pytest.approx(0.5)
    assert lr_multiplier(0.75, final_lr_frac=0.2) == pytest.approx(0.6)
    assert lr_multiplier(1.0, final_lr_frac=0.2) == pytest.approx(0.2)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_every_group_lr_at_every_step_equals_the_formula(optimizer):
    N, warmup, warmdown, final = 20, 0.1, 0.5, 0.1
    scale = (64 / 768) ** -0.5  # AdamW LRs scale by (d_model / 768) ** -0.5
    base = {"matrix": 0.02 if optimizer == "muon" else 0.004 * scale,
            "embedding": 0.3 * scale, "unembedding": 0.004 * scale}
    opt = build_optimizer(tiny_nanochat(), optimizer=optimizer)
    sched = build_scheduler(opt, N, warmup_ratio=warmup, warmdown_ratio=warmdown, final_lr_frac=final)
    for step in range(N):
        t = (step + 1) / N  # fraction of the run done once this step has run
        if t < warmup:
            mult = t / warmup
        elif t <= 0.5:
            mult = 1.0
        else:
            mult = 1 - (t - 0.5) / 0.5 * (1 - final)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(base[g["name"]] * 0.8 * mult, rel=1e-12), (step, g["name"])
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups][0] == pytest.approx(base["matrix"] * 0.8 * final)


def test_warmdown_is_transformers_wsd_one_step_earlier():
    N = 10
    p = torch.nn.Parameter(torch.zeros(1))
    ours = build_scheduler(torch.optim.SGD([p], lr=1.0), N, warmdown_ratio=0.5, final_lr_frac=0.1)
    wsd = get_wsd_schedule(torch.optim.SGD([p], lr=1.0), 0, 5, N, decay_type="linear", min_lr_ratio=0.1)
    want = [wsd.lr_lambdas[0](s + 1) for s in range(N - 1)]
    assert [ours.lr_lambdas[0](s) for s in range(N - 1)] == pytest.approx(want)


def test_bad_ratios_raise():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError):
        build_scheduler(torch.optim.SGD([p], lr=1.0), 10, warmup_ratio=0.6, warmdown_ratio=0.6)


def test_lrs_inherited_from_nanochat_meta_and_overridden(tmp_path, caplog):
    meta = {"step": 21400, "model_config": {"n_embd": 1280},
            "user_config": {"embedding_lr": 0.2, "unembedding_lr": 0.008, "matrix_lr": 0.03}}
    (tmp_path / "meta_021400.json").write_text(json.dumps(meta))
    (tmp_path / "meta_000100.json").write_text(json.dumps({"user_config": {"embedding_lr": 9.0}}))
    with caplog.at_level(logging.INFO, logger="nanosft.optim.schedule"):
        lrs = resolve_learning_rates(str(tmp_path), {"matrix_lr": 0.01, "embedding_lr": None})
    assert lrs == {"embedding_lr": 0.2, "unembedding_lr": 0.008, "matrix_lr": 0.01, "scalar_lr": 0.5}
    assert "embedding_lr = 0.2 (inherited from" in caplog.text and "meta_021400.json" in caplog.text
    assert "matrix_lr = 0.01 (overridden (base had 0.03))" in caplog.text
    assert "scalar_lr = 0.5 (nanochat default)" in caplog.text


def test_lrs_from_nanosft_config_and_defaults(tmp_path):
    (tmp_path / "nanosft_config.json").write_text(json.dumps({"training": {"unembedding_lr": 0.006}}))
    assert resolve_learning_rates(str(tmp_path))["unembedding_lr"] == 0.006
    assert resolve_learning_rates(str(tmp_path / "missing")) == {
        "embedding_lr": 0.3, "unembedding_lr": 0.004, "matrix_lr": 0.02, "scalar_lr": 0.5}
    assert resolve_learning_rates({"matrix_lr": 0.05})["matrix_lr"] == 0.05


def test_auto_is_muon_with_its_reason_and_pretrained_lrs_for_a_plain_hf_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from nanosft.training.config import NanoSFTConfig
    from nanosft.optim.schedule import choose_optimizer, pretraining_optimizer, used_learning_rates

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4)).save_pretrained(llama)
    cfg = NanoSFTConfig(output_dir=str(tmp_path / "out"), model_name_or_path=str(llama), report_to="none")
    assert cfg.optimizer == "auto"
    assert pretraining_optimizer(str(llama)) == ("adamw", "base model has no Muon pretraining record")
    # the SmolLM2 A/B kept Muon for AdamW-pretrained models too; the line says so and where the evidence is
    assert choose_optimizer(cfg) == ("optimizer auto -> muon: base model has no Muon pretraining record; Muon still "
                                     "beat AdamW fine-tuning the AdamW-pretrained SmolLM2-135M (SpellingBee 0.80 vs "
                                     "0.63, bench/results/optimizer_ab.txt)")
    assert cfg.optimizer == "muon" and cfg.optimizer_kwargs is None
    # ... at the fine-tuning LRs of a pretrained model, not nanochat's from-scratch ones
    assert resolve_learning_rates(str(llama), muon_pretrained=False) == {
        "embedding_lr": 0.002, "unembedding_lr": 0.002, "matrix_lr": 0.005, "scalar_lr": 1e-4}
    hf_adamw = NanoSFTConfig(output_dir=str(tmp_path / "out"), model_name_or_path=str(llama), optimizer="adamw",
                             optimizer_kwargs={"lr": 3e-5}, report_to="none")
    assert used_learning_rates(hf_adamw) == {"learning_rate": 3e-5}  # what records and the card show
    explicit = NanoSFTConfig(output_dir=str(tmp_path / "out"), model_name_or_path=str(llama), optimizer="muon",
                             report_to="none")
    assert choose_optimizer(explicit) == "optimizer muon: set in the config" and explicit.optimizer == "muon"
    explicit.matrix_lr = 0.01
    assert used_learning_rates(explicit) == {"embedding_lr": None, "unembedding_lr": None, "matrix_lr": 0.01,
                                             "scalar_lr": None}
    (llama / "nanosft_config.json").write_text(json.dumps({"optimizer": "muon"}))
    assert pretraining_optimizer(str(llama)) == ("muon", "the base model's nanosft_config.json records muon")
    tiny_nanochat().save_pretrained(tmp_path / "nanochat")  # transformers' NanoChat: nanochat's Oct-2025 GPT
    assert pretraining_optimizer(str(tmp_path / "nanochat")) == ("muon", "nanochat checkpoint (model_type nanochat)")
    assert pretraining_optimizer(None, fresh=True)[0] == "muon"


def test_batch_shape_inherited_from_nanochat_meta_unless_set(tmp_path):
    import json

    from nanosft.optim.schedule import inherit_batch_shape

    meta = {"model_config": {"sequence_len": 2048, "n_layer": 20}, "device_batch_size": 32, "max_seq_len": 2048,
            "total_batch_size": 524288}
    (tmp_path / "meta_000100.json").write_text(json.dumps(meta))
    out, lines = inherit_batch_shape({"model_name_or_path": str(tmp_path), "per_device_train_batch_size": 16})
    assert (out["max_length"], out["per_device_train_batch_size"], out["total_batch_size"]) == (2048, 16, 524288)
    assert len(lines) == 2 and all("inherited from" in line for line in lines)
    out, _ = inherit_batch_shape({"model_name_or_path": str(tmp_path), "gradient_accumulation_steps": 4})
    assert "total_batch_size" not in out and out["max_length"] == 2048
    assert inherit_batch_shape({"model_config": {}, "model_name_or_path": str(tmp_path)})[1] == []
