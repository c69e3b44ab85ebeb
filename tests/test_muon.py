"""Tests for nanosft/optim/muon.py: each formula against a float64 reference written here from
nanochat-reference.md ("Muon as nanochat uses it"), grouping on NanoChat and Llama, the
transformers factory hook, warm start, DeepSpeed preparation, and 2-process DDP."""

import logging
import math
import os
import subprocess
import sys

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)
import torch
from transformers import LlamaConfig, LlamaForCausalLM, NanoChatConfig, NanoChatForCausalLM

from nanosft.optim.muon import MuonAdamW, build_optimizer, orthogonalize
from nanosft.optim.warm_start import load_warm_start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
NS = [(3.4445, -4.7750, 2.0315)] * 5


def tiny_nanochat(seed=0):
    torch.manual_seed(seed)
    return NanoChatForCausalLM(NanoChatConfig(
        vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=None))


# --- float64 references, written from the formulas, one matrix at a time, plain Python loops

def ref_orthogonalize(G, coeffs, scale, eps):
    X = G.double().clone()
    m = X.shape[0]
    target = X.norm() / math.sqrt(m)  # MuonEq
    for i in range(m):
        X[i] = X[i] * (target / max(X[i].norm().item(), 1e-6))
    X = X / (X.norm() * scale + eps)
    for a, b, c in coeffs:
        if X.shape[0] <= X.shape[1]:
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        else:
            A = X.T @ X
            X = a * X + X @ (b * A + c * A @ A)
    return X


def ref_muon_step(W, G, buf, v, mu, lr, wd, beta2):
    """One nanochat Muon step in float64: returns new W, buf, v."""
    m, n = W.shape
    buf = buf + (1 - mu) * (G - buf)
    g = G + mu * (buf - G)
    g = ref_orthogonalize(g, PE, 1.01, 1e-6)
    g = g * (math.sqrt(min(m, n)) / g.norm())  # Muon+
    norm_before = g.norm()
    sq = g * g
    v_mean = sq.mean(dim=1, keepdim=True) if m >= n else sq.mean(dim=0, keepdim=True)
    v = beta2 * v + (1 - beta2) * v_mean
    g = g / v.clamp_min(1e-10).sqrt()
    g = g * (norm_before / g.norm())  # NorMuon keeps ||g||_F
    lr_eff = lr * math.sqrt(max(1.0, m / n))
    mask = ((g * W) >= 0).double()
    W = W - lr_eff * g - lr_eff * wd * W * mask
    return W, buf, v


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
@pytest.mark.parametrize("method,coeffs,scale,eps", [("polar_express", PE, 1.01, 1e-6),
                                                    ("newton_schulz", NS, 1.0, 1e-7)])
def test_orthogonalize_matches_float64_reference(shape, method, coeffs, scale, eps):
    torch.manual_seed(1)
    G = torch.randn(shape)
    got = orthogonalize(G, method=method).double()
    want = ref_orthogonalize(G, coeffs, scale, eps)
    assert (got - want).abs().max() < 1e-5
    if method == "polar_express" and shape[0] != shape[1]:
        s = torch.linalg.svdvals(want)
        assert 0.7 < s.min() and s.max() < 1.2  # an approximate polar factor


def test_stacked_orthogonalize_equals_one_by_one():
    torch.manual_seed(2)
    G = torch.randn(3, 16, 40)
    stacked = orthogonalize(G)
    for k in range(3):
        assert torch.allclose(stacked[k], orthogonalize(G[k]), atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_muon_steps_match_float64_reference(shape):
    """Three steps through momentum warmup, MuonEq, Polar Express, Muon+, NorMuon, cautious WD."""
    torch.manual_seed(3)
    W0 = torch.randn(shape) * 0.1
    p = torch.nn.Parameter(W0.clone())
    opt = MuonAdamW([dict(params=[p], kind="muon", lr=0.05, weight_decay=0.3, momentum=0.95,
                          momentum_start=0.85, momentum_warmup_steps=2, beta2=0.9)])
    W, buf = W0.double(), torch.zeros(shape, dtype=torch.float64)
    v = torch.zeros((shape[0], 1) if shape[0] >= shape[1] else (1, shape[1]), dtype=torch.float64)
    for step, mu in enumerate([0.85, 0.90, 0.95]):  # 0.85 -> 0.95 over 2 steps
        G = torch.randn(shape)
        p.grad = G.clone()
        opt.step()
        W, buf, v = ref_muon_step(W, G.double(), buf, v, mu, 0.05, 0.3, 0.9)
        assert (p.detach().double() - W).abs().max() < 1e-5, f"step {step}"
    assert torch.allclose(opt.state[p]["momentum_buffer"].double(), buf, atol=1e-6)
    assert opt.orthogonalized == 3


def test_normuon_off_and_plain_weight_decay():
    """beta2=None skips NorMuon; cautious=False decays every coordinate."""
    torch.manual_seed(4)
    W0, G = torch.randn(16, 24), torch.randn(16, 24)
    p = torch.nn.Parameter(W0.clone())
    opt = MuonAdamW([dict(params=[p], kind="muon", lr=0.1, weight_decay=0.5, beta2=None, cautious=False,
                          momentum_warmup_steps=0)])
    p.grad = G.clone()
    opt.step()
    g = ref_orthogonalize(0.05 * G.double() + 0.95 * (0.05 * G.double()), PE, 1.01, 1e-6)
    g = g * (math.sqrt(16) / g.norm())
    want = W0.double() - 0.1 * g - 0.1 * 0.5 * W0.double()
    assert (p.detach().double() - want).abs().max() < 1e-5
    assert "second_momentum_buffer" not in opt.state[p]


def test_adamw_group_matches_float64_reference():
    torch.manual_seed(5)
    W0 = torch.randn(10, 8)
    p = torch.nn.Parameter(W0.clone())
    opt = MuonAdamW([dict(params=[p], kind="adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)])
    W, m, v = W0.double(), torch.zeros(10, 8, dtype=torch.float64), torch.zeros(10, 8, dtype=torch.float64)
    for t in range(1, 4):
        G = torch.randn(10, 8)
        p.grad = G.clone()
        opt.step()
        W = W * (1 - 0.01 * 0.1)
        m = 0.8 * m + 0.2 * G.double()
        v = 0.95 * v + 0.05 * G.double() ** 2
        W = W - (0.01 / (1 - 0.8 ** t)) * m / ((v / (1 - 0.95 ** t)).sqrt() + 1e-10)
        assert (p.detach().double() - W).abs().max() < 1e-5


def test_nanochat_groups_and_lr_scaling():
    model = tiny_nanochat()
    opt = build_optimizer(model)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"matrix", "embedding", "unembedding"}  # NanoChat norms have no params
    assert groups["matrix"]["kind"] == "muon" and len(groups["matrix"]["params"]) == 12
    assert groups["embedding"]["param_names"] == ["model.embed_tokens.weight"]
    assert groups["unembedding"]["param_names"] == ["lm_head.weight"]
    scale = (64 / 768) ** -0.5
    assert groups["embedding"]["lr"] == pytest.approx(0.3 * scale * 0.8)
    assert groups["unembedding"]["lr"] == pytest.approx(0.004 * scale * 0.8)
    assert groups["matrix"]["lr"] == pytest.approx(0.02 * 0.8)  # sqrt(max(1, m/n)) is applied per matrix
    assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)
    assert groups["matrix"]["beta2"] == 0.9 and groups["matrix"]["cautious"] is True


def test_llama_norms_go_to_adamw_and_block_matrices_to_muon():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    opt = build_optimizer(model, scalar_lr=1e-3)
    names = {g["name"]: g["param_names"] for g in opt.param_groups}
    assert names["embedding"] == ["model.embed_tokens.weight"] and names["unembedding"] == ["lm_head.weight"]
    assert all("norm" in n for n in names["scalar"]) and len(names["scalar"]) == 3
    assert all(".layers." in n for n in names["matrix"]) and len(names["matrix"]) == 7
    model(input_ids=torch.randint(0, 128, (2, 8)), labels=torch.randint(0, 128, (2, 8))).loss.backward()
    opt.step()  # GQA k/v (16, 32) and MLP (64, 32), (32, 64) shapes all step


def test_adamw_option_is_torch_adamw_with_the_same_groups():
    model = tiny_nanochat()
    muon, adamw = build_optimizer(model), build_optimizer(model, optimizer="adamw")
    assert type(adamw) is torch.optim.AdamW
    by_name = lambda o: {g["name"]: g for g in o.param_groups}
    for name in ("embedding", "unembedding"):
        assert by_name(adamw)[name]["lr"] == by_name(muon)[name]["lr"]
    assert by_name(adamw)["matrix"]["lr"] == pytest.approx(by_name(muon)["unembedding"]["lr"])
    assert by_name(adamw)["embedding"]["betas"] == (0.8, 0.95)


def test_adamw_with_one_lr_gives_every_group_that_lr():
    """``lr``: the Hugging Face fine-tuning AdamW, one LR for every group (``optimizer: adamw`` with
    ``optimizer_kwargs: {lr: ...}``)."""
    model = tiny_nanochat()
    opt = build_optimizer(model, optimizer="adamw", lr=2e-5, adam_betas=(0.9, 0.999), adam_eps=1e-8,
                          weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"matrix", "embedding", "unembedding"}
    assert all(g["lr"] == pytest.approx(2e-5 * 0.8) and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
               for g in opt.param_groups)
    assert groups["matrix"]["weight_decay"] == 0.1 and groups["embedding"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="needs optimizer='adamw'"):
        build_optimizer(model, lr=2e-5)


def test_unknown_option_fails_loudly():
    with pytest.raises(TypeError):
        build_optimizer(tiny_nanochat(), matrx_lr=0.1)
    with pytest.raises(ValueError, match="optimizer must be"):
        build_optimizer(tiny_nanochat(), optimizer="sgd")


def test_transformers_trainer_builds_it_through_optimizer_cls_and_kwargs(tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=tiny_nanochat(), args=args,
                      optimizer_cls_and_kwargs=(build_optimizer, {"matrix_lr": 0.01, "momentum": 0.9}))
    opt = trainer.create_optimizer()
    assert isinstance(opt, MuonAdamW)
    matrix = next(g for g in opt.param_groups if g["name"] == "matrix")
    assert matrix["lr"] == pytest.approx(0.008) and matrix["momentum"] == 0.9


def _train(model, opt, steps=2):
    torch.manual_seed(7)
    for _ in range(steps):
        x = torch.randint(0, 512, (2, 16))
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


def test_warm_start_roundtrip_keeps_sft_lrs(tmp_path):
    model = tiny_nanochat()
    base = build_optimizer(model, matrix_lr=0.05)
    _train(model, base)
    torch.save(base.state_dict(), tmp_path / "optimizer.pt")
    sft = build_optimizer(model)
    assert load_warm_start(sft, str(tmp_path))
    for p in model.parameters():
        for key, t in base.state[p].items():
            assert torch.equal(sft.state[p][key], t)
    matrix = next(g for g in sft.param_groups if g["name"] == "matrix")
    assert matrix["lr"] == pytest.approx(0.016) and matrix["steps_done"] == 0


def test_warm_start_from_hf_trainer_adamw_state(tmp_path):
    """transformers' default AdamW saves no names; groups are [decayed, not decayed] in model order."""
    from transformers import Trainer, TrainingArguments

    model = tiny_nanochat()
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    hf_opt = trainer.create_optimizer()
    _train(model, hf_opt)
    sd = hf_opt.state_dict()
    for g in sd["param_groups"]:
        g.pop("param_names", None)
    torch.save(sd, tmp_path / "optimizer.pt")
    sft = build_optimizer(model)
    assert load_warm_start(sft, str(tmp_path), model=model)
    q = model.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(sft.state[q]["momentum_buffer"], hf_opt.state[q]["exp_avg"])
    emb = model.model.embed_tokens.weight
    assert torch.equal(sft.state[emb]["exp_avg_sq"], hf_opt.state[emb]["exp_avg_sq"])


def test_warm_start_from_nanochat_rank_shards(tmp_path):
    """Two DistMuonAdamW shards: stacked Muon buffers split by chunk, AdamW state by rows."""
    model = tiny_nanochat()
    mats = [p for n, p in model.named_parameters() if ".layers." in n]
    shapes = sorted({tuple(p.shape) for p in mats})
    torch.manual_seed(9)
    lm_ea, wte_ea = torch.randn(512, 64), torch.randn(512, 64)
    full = {s: torch.randn(sum(tuple(p.shape) == s for p in mats), *s) for s in shapes}
    for rank in range(2):
        groups, state, idx = [], {}, 0
        for kind, t in (("adamw", lm_ea), ("adamw", wte_ea)):
            groups.append({"kind": kind, "params": [idx], "lr": 1.0})
            rows = t[rank * 256:(rank + 1) * 256]
            state[idx] = {"step": 100, "exp_avg": rows, "exp_avg_sq": rows.abs()}
            idx += 1
        for s in shapes:
            K = full[s].shape[0]
            chunk = -(-K // 2)
            groups.append({"kind": "muon", "params": list(range(idx, idx + K)), "lr": 1.0})
            state[idx] = {"momentum_buffer": full[s][rank * chunk:(rank + 1) * chunk]}
            idx += K
        torch.save({"state": state, "param_groups": groups}, tmp_path / f"optim_000650_rank{rank}.pt")
    sft = build_optimizer(model)
    assert load_warm_start(sft, str(tmp_path))
    fc2 = [p for n, p in model.named_parameters() if n.endswith("mlp.fc2.weight")]
    assert torch.equal(sft.state[fc2[1]]["momentum_buffer"], full[tuple(fc2[1].shape)][1])
    o1 = model.model.layers[1].self_attn.o_proj.weight  # 8th (64, 64) matrix in module order
    assert torch.equal(sft.state[o1]["momentum_buffer"], full[(64, 64)][7])
    assert torch.equal(sft.state[model.lm_head.weight]["exp_avg"], lm_ea)
    assert torch.equal(sft.state[model.model.embed_tokens.weight]["exp_avg"], wte_ea)


def test_warm_start_from_older_nanochat_two_optimizer_file(tmp_path):
    """Older nanochat saved [adamw_state_dict, muon_state_dict], Muon state per parameter."""
    model = tiny_nanochat()
    mats = [(n, p) for n, p in model.named_parameters() if ".layers." in n]
    torch.manual_seed(10)
    adamw = {"param_groups": [{"params": [0]}, {"params": [1]}],
             "state": {i: {"step": 5, "exp_avg": torch.randn(512, 64), "exp_avg_sq": torch.rand(512, 64)}
                       for i in range(2)}}
    sizes = sorted({p.numel() for _, p in mats})
    groups, order = [], []
    for size in sizes:  # older Muon grouped by numel, module order inside a group
        members = [(n, p) for n, p in mats if p.numel() == size]
        groups.append({"params": list(range(len(order), len(order) + len(members)))})
        order += members
    state = {i: {"momentum_buffer": torch.randn(p.shape)} for i, (_, p) in enumerate(order)}
    muon = {"param_groups": groups, "state": state}
    torch.save([adamw, muon], tmp_path / "optim_000100_rank0.pt")
    sft = build_optimizer(model)
    assert load_warm_start(sft, str(tmp_path))
    params = dict(model.named_parameters())
    for i, (name, _) in enumerate(order):
        assert torch.equal(sft.state[params[name]]["momentum_buffer"], muon["state"][i]["momentum_buffer"]), name
    assert torch.equal(sft.state[model.lm_head.weight]["exp_avg"], adamw["state"][0]["exp_avg"])


def test_warm_start_absent_says_so_and_continues(tmp_path, caplog):
    opt = build_optimizer(tiny_nanochat())
    with caplog.at_level(logging.WARNING, logger="nanosft.optim.muon"):
        assert load_warm_start(opt, str(tmp_path)) is False
    assert "fresh optimizer" in caplog.text and not opt.state


def test_prepare_deepspeed_muon_tags_matrices_and_fixes_config():
    from nanosft.optim.muon import prepare_deepspeed_muon

    model = tiny_nanochat()
    opt, config = prepare_deepspeed_muon(model, {"zero_optimization": {"stage": 3}, "gradient_clipping": "auto"})
    assert config["gradient_clipping"] == 0.0 and config["zero_optimization"]["reduce_scatter"] is False
    tagged = {n for n, p in model.named_parameters() if p.use_muon}
    assert tagged == {n for n, _ in model.named_parameters() if ".layers." in n}
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["embedding"] == pytest.approx(0.3 * (64 / 768) ** -0.5 * 0.8)
    with pytest.raises(ValueError, match="gradient_clipping"):
        prepare_deepspeed_muon(model, {"gradient_clipping": 1.0})
    with pytest.raises(ValueError, match="optimizer"):
        prepare_deepspeed_muon(model, {"optimizer": {"type": "Muon"}})


def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun, gloo: each rank orthogonalizes half the matrices; updates equal 1 process to 1e-5."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           os.path.join(REPO, "tests", "distributed", "muon_ddp_check.py"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MUON_DDP_OK" in result.stdout


@pytest.mark.distributed  # ~1-2 min on 2 CPU cores: runs in CI, deselect locally with -m "not distributed"
def test_deepspeed_zero_1_2_3_two_processes_match_one_process():
    """deepspeed --num_gpus 2 on CPU: 5-step losses within 1e-4 of 1 process, muon_update counted."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1",
           "TORCH_COMPILE_DISABLE": "1"}  # DeepSpeed's muon_update is torch.compile'd: minutes of inductor on CPU
    cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port", free_port(),
           os.path.join(REPO, "tests", "distributed", "muon_ds_check.py")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MUON_DS_OK" in result.stdout
