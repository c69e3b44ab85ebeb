"""The current nanochat GPT as a transformers model, against nanochat's own outputs.

``../shared/fixtures/nanochat-head-d4`` holds a depth-4 checkpoint written by nanochat's ``save_checkpoint``
(commit 92d63d4; window SSSL, sequence_len 256, so layers 0-2 see 129 keys) and ``reference/reference.pt``:
nanochat's fp32 logits, loss and greedy continuation for it. Independent expectations: nanochat's numbers,
each conversation run alone (document packing), the full forward (cached decode), the un-checkpointed
gradients.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import free_port  # noqa: E402  (rendezvous port of the multi-process tests)
import torch
import torch.nn.functional as F

import nanosft  # noqa: F401  registers model_type nanochat_gpt with the Auto classes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.environ.get("NANOSFT_DATA_DIR", os.path.join(REPO, "..", "shared", "data")), "..",
                       "fixtures", "nanochat-head-d4")
pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"nanochat fixture not found: {FIXTURE}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from nanosft.models.convert import convert_checkpoint

    out = str(tmp_path_factory.mktemp("nanochat_gpt") / "hf")
    return convert_checkpoint(os.path.join(FIXTURE, "base_checkpoints", "d4"), out)


@pytest.fixture(scope="module")
def reference():
    return torch.load(os.path.join(FIXTURE, "reference", "reference.pt"), map_location="cpu", weights_only=False)


def load(path, impl="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_logits_and_loss_equal_nanochat(converted, reference, impl):
    model = load(converted, impl)
    assert type(model).__name__ == "NanoChatGPTForCausalLM"
    with torch.no_grad():
        logits = model(reference["input_ids"], use_cache=False).logits
    assert logits.shape == reference["logits"].shape and logits.dtype == torch.float32
    assert (logits - reference["logits"]).abs().max().item() < 1e-4
    loss = F.cross_entropy(logits.flatten(0, 1), reference["targets"].flatten(), ignore_index=-1)
    assert abs(loss.item() - reference["loss"]) < 1e-5


def test_greedy_generate_with_cache_equals_nanochat(converted, reference):
    model = load(converted)
    prompt = torch.tensor([reference["prompt"]])
    out = model.generate(prompt, max_new_tokens=24, do_sample=False, use_cache=True)
    assert out[0, prompt.shape[1]:].tolist() == reference["greedy_continuation"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_cached_decode_equals_full_forward_past_the_window(converted, reference, impl):
    """150 prompt tokens + 12 decoded ones: sliding layers (129 keys) drop old keys, the smear reads the cache."""
    model = load(converted, impl)
    prompt = reference["input_ids"][:1, :150]
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, output_logits=True,
                         return_dict_in_generate=True)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    step_logits = torch.stack(out.logits, dim=1)  # [1, 12, V]: logits that chose each new token
    assert (step_logits - full[:, 149:-1]).abs().max().item() < 1e-4


def test_left_padded_batch_generates_what_each_prompt_generates_alone(converted, reference):
    """nanosft's ChatCORE engine batches left-padded prompts: padding must not smear into the first real token."""
    model = load(converted)
    prompts = [reference["input_ids"][0, :20].tolist(), reference["input_ids"][1, :9].tolist()]
    alone = [model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p):].tolist()
             for p in prompts]
    ids = torch.tensor([prompts[0], [0] * 11 + prompts[1]])
    mask = torch.tensor([[1] * 20, [0] * 11 + [1] * 9])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out[:, 20:].tolist() == alone


def test_beam_search_scores_equal_the_full_forward(converted, reference):
    """Beams reorder the cache and the smear's previous embedding together: the best beam's score (sum of
    log-probs, length_penalty 0) equals the full forward's log-probabilities of the same tokens. (Prompt and
    beam count chosen so that beams swap rows with different last tokens: without the reorder the score is off
    by 0.016.)"""
    model = load(converted)
    prompt = reference["input_ids"][1:2, :30]
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, num_beams=4,
                         do_sample=False, length_penalty=0.0, output_scores=True, return_dict_in_generate=True)
    seq = out.sequences
    with torch.no_grad():
        logp = torch.log_softmax(model(seq, use_cache=False).logits[0, 29:-1], dim=-1)
    total = logp.gather(1, seq[0, 30:, None]).sum().item()
    assert abs(total - out.sequences_scores[0].item()) < 1e-4


def _packed(reference, lens, attention):
    from nanosft.data.packing import PackedCollator

    ids = reference["input_ids"][0].tolist()
    row = ids[: sum(lens)]
    collator = PackedCollator(sum(lens) - 1, pad_token_id=0, attention=attention)
    return collator([{"input_ids": row, "assistant_masks": [1] * len(row), "seq_lengths": list(lens)}]), row


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_document_rows_equal_each_conversation_alone(converted, reference, impl):
    """No attention, window or smear crosses a boundary: a 150-token conversation (longer than the 129-key
    window) after a 50-token one gives the logits it has alone."""
    model = load(converted, impl)
    lens = (50, 150)
    batch, row = _packed(reference, lens, "document")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        first = model(torch.tensor([row[:50]]), use_cache=False).logits[0]
        second = model(torch.tensor([row[50:199]]), use_cache=False).logits[0]
    assert (packed[:50] - first).abs().max().item() < 1e-4
    assert (packed[50:199] - second).abs().max().item() < 1e-4
    # the first token of the second conversation differs from the whole-row forward (smear and attention cut)
    with torch.no_grad():
        whole = model(batch["input_ids"], use_cache=False).logits[0]
    assert (whole[50] - packed[50]).abs().max().item() > 1e-3


def test_packed_causal_rows_equal_nanochat_whole_row(converted, reference):
    model = load(converted)
    batch, _ = _packed(reference, (50, 150), "causal")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert (logits[0] - reference["logits"][0, :199]).abs().max().item() < 1e-4


def test_boolean_logits_to_keep_selects_positions(converted, reference):
    model = load(converted)
    ids = reference["input_ids"][:, :64]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, [3, 10, 63]] = True
    keep[1, [0, 40]] = True
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        kept = model(ids, use_cache=False, logits_to_keep=keep).logits
    assert kept.shape == (5, full.shape[-1])
    torch.testing.assert_close(kept, full[keep], rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(converted, reference):
    ids, targets = reference["input_ids"][:, :48], reference["targets"][:, :48]

    def grads(checkpointing):
        model = load(converted).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        logits = model(ids, use_cache=False).logits
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert set(plain) == set(ckpt) and all(plain[n].abs().sum() > 0 for n in ("model.smear_lambda",
                                                                              "model.value_embeds.1.weight"))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_lora_targets_by_transformers_names(converted, reference):
    from peft import LoraConfig, get_peft_model

    model = load(converted)
    with torch.no_grad():
        before = model(reference["input_ids"][:, :32], use_cache=False).logits
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    names = {n for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(names) == 4 * 6  # 4 layers x 6 target matrices
    with torch.no_grad():
        after = peft_model(input_ids=reference["input_ids"][:, :32], use_cache=False).logits
    torch.testing.assert_close(after, before)  # LoRA B starts at zero


def test_saved_model_loads_with_trust_remote_code_without_nanosft(converted, reference, tmp_path):
    """A process where ``import nanosft`` fails loads the checkpoint from its shipped modeling files."""
    assert {"configuration_nanochat_gpt.py", "modeling_nanochat_gpt.py"} <= set(os.listdir(converted))
    ids = reference["input_ids"][:, :40]
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["nanosft"] = None  # any import of nanosft raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({converted!r}, trust_remote_code=True, dtype=torch.float32).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        with torch.no_grad():
            logits = m(torch.load({str(tmp_path / 'ids.pt')!r}), use_cache=False).logits
        torch.save(logits, {str(tmp_path / 'out.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    logits = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(logits, reference["logits"][:, :40], rtol=0, atol=1e-4)


# ----- nanochat's optimizer groups and warm start from its real optim_<step>_rank<r>.pt

BASE = os.path.join(FIXTURE, "base_checkpoints", "d4")
# nanochat's parameter order in the file (nanochat/gpt.py setup_optimizer), written out by hand for depth 4:
# lm_head, wte, value_embeds (layers 1, 3), resid, x0, smear gate/lambda, backout; then Muon groups by shape.
FILE_ORDER = ["lm_head.weight", "model.embed_tokens.weight", "model.value_embeds.1.weight",
              "model.value_embeds.3.weight", "model.resid_lambdas", "model.x0_lambdas", "model.smear_gate.weight",
              "model.smear_lambda", "model.backout_lambda"]
MUON_STACKS = {  # first param index in the file -> our names, stacked in this order
    9: [f"model.layers.{i}.self_attn.ve_gate.weight" for i in (1, 3)],
    11: [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in range(4) for m in "qkvo"],
    27: [f"model.layers.{i}.mlp.fc2.weight" for i in range(4)],
    31: [f"model.layers.{i}.mlp.fc1.weight" for i in range(4)],
}


def nanochat_optimizer(model, **kw):
    from nanosft.optim.muon import build_optimizer

    # the fixture's base_train settings (meta user_config); init_lr_frac 1 to compare with the file's LRs
    args = dict(embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.5, init_lr_frac=1.0)
    return build_optimizer(model, **{**args, **kw})


def test_optimizer_groups_equal_nanochats_table(converted):
    saved = torch.load(os.path.join(BASE, "optim_000003_rank0.pt"), map_location="cpu", weights_only=True)
    opt = nanochat_optimizer(load(converted), weight_decay=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    names = ["unembedding", "embedding", "value_embedding", "resid_lambda", "x0_lambda", "smear"]
    adam_saved = [g for g in saved["param_groups"] if g["kind"] == "adamw"]
    for name, ref in zip(names, adam_saved):  # nanochat's own settings, as it saved them
        g = groups[name]
        assert g["kind"] == "adamw" and abs(g["lr"] - ref["lr"]) < 1e-12, name
        assert tuple(g["betas"]) == tuple(ref["betas"]) and g["eps"] == ref["eps"], name
        assert g["weight_decay"] == ref["weight_decay"], name
        assert [FILE_ORDER[i] for i in ref["params"]] == g["param_names"], name
    muon = groups["matrix"]
    assert muon["kind"] == "muon" and muon["lr"] == 0.02 and muon["weight_decay"] == 0.1 and muon["beta2"] == 0.9
    assert (muon["momentum_start"], muon["momentum"], muon["momentum_warmup_steps"]) == (0.85, 0.95, 300)
    assert sorted(muon["param_names"]) == sorted(n for names_ in MUON_STACKS.values() for n in names_)
    assert "scalar" not in groups  # every 1-D parameter has its nanochat group


def test_muon_momentum_ramps_over_300_steps():
    from nanosft.optim.muon import momentum_at

    assert momentum_at(0) == pytest.approx(0.85) and momentum_at(150) == pytest.approx(0.90)
    assert momentum_at(300) == pytest.approx(0.95) and momentum_at(1000) == pytest.approx(0.95)


def test_warm_start_holds_exactly_the_files_buffers(converted):
    from nanosft.optim.warm_start import load_warm_start

    saved = torch.load(os.path.join(BASE, "optim_000003_rank0.pt"), map_location="cpu", weights_only=True)
    model = load(converted)
    opt = nanochat_optimizer(model, init_lr_frac=0.8)
    lrs = [g["lr"] for g in opt.param_groups]
    assert load_warm_start(opt, BASE, model=model)
    assert [g["lr"] for g in opt.param_groups] == lrs  # the SFT LRs are kept
    params = dict(model.named_parameters())
    for i, name in enumerate(FILE_ORDER):
        state = opt.state[params[name]]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], saved["state"][i][key]), (name, key)
        assert float(state["step"]) == 3
    for first, names in MUON_STACKS.items():
        for k, name in enumerate(names):
            state = opt.state[params[name]]
            assert torch.equal(state["momentum_buffer"], saved["state"][first]["momentum_buffer"][k]), name
            assert torch.equal(state["second_momentum_buffer"],
                               saved["state"][first]["second_momentum_buffer"][k]), name


def test_warm_start_refuses_mismatched_shapes_naming_them(converted, tmp_path):
    from nanosft.optim.warm_start import load_warm_start

    saved = torch.load(os.path.join(BASE, "optim_000003_rank0.pt"), map_location="cpu", weights_only=True)
    saved["state"][4]["exp_avg"] = torch.zeros(5)  # resid_lambdas of a depth-5 model
    saved["state"][27]["momentum_buffer"] = torch.zeros(4, 128, 256)  # a narrower MLP
    torch.save(saved, tmp_path / "optim_000003_rank0.pt")
    model = load(converted)
    with pytest.raises(ValueError) as e:
        load_warm_start(nanochat_optimizer(model), str(tmp_path), model=model)
    assert "model.resid_lambdas: the file's exp_avg has shape (5,)" in str(e.value)
    assert "Muon group of shape (128, 256)" in str(e.value)
    assert "Muon matrices of shape (128, 512)" in str(e.value)


def test_optimizer_auto_is_muon_for_the_nanochat_checkpoint_and_its_conversion(converted, tmp_path):
    import shutil

    from nanosft.optim.schedule import pretraining_optimizer

    assert pretraining_optimizer(BASE) == ("muon", "nanochat checkpoint (meta_000003.json)")
    shutil.copy(os.path.join(converted, "config.json"), tmp_path / "config.json")  # no meta: the model_type says it
    assert pretraining_optimizer(str(tmp_path)) == ("muon", "nanochat checkpoint (model_type nanochat_gpt)")


# ----- end to end: nanochat's base_checkpoints/d4 -> 4 SFT steps -> a Hub-ready folder loadable without nanosft

def test_train_from_nanochat_folder_and_reload_without_nanosft(tmp_path, data_dir):
    import yaml

    out = tmp_path / "run"
    config = {"model_name_or_path": BASE, "data_dir": data_dir,
              "datasets": [{"name": "identity", "max_rows": 24}, {"name": "spellingbee", "size": 24}],
              "max_length": 256, "per_device_train_batch_size": 2, "max_steps": 4,
              "optimizer": "muon", "load_optimizer": True, "save_steps": 4, "eval_strategy": "no",
              "chatcore_every": 0, "report_to": "none", "output_dir": str(out), "seed": 0}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": REPO}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--num_processes", "1", "-m", "nanosft.train", "--config",
                           str(tmp_path / "run.yaml")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warm-started 35/35 parameters" in proc.stderr, proc.stderr[-3000:]
    # nanochat's meta: LRs and total_batch_size inherited (the config sets max_length and the micro-batch)
    assert "total_batch_size = 1024 (inherited from" in proc.stderr and "embedding_lr = 0.2 (inherited" in proc.stderr
    assert {"modeling_nanochat_gpt.py", "configuration_nanochat_gpt.py"} <= set(os.listdir(out))
    assert "trust_remote_code=True" in (out / "README.md").read_text()  # the model card's loading snippet

    trained = load(str(out))
    base = load(os.path.join(str(out), "_nanochat_base"))
    ids = torch.tensor([[2039, 2040, 1442, 309, 32, 1038, 1564, 32, 55, 63, 2041, 2042]])
    with torch.no_grad():
        expected = trained(ids, use_cache=False).logits
        assert (expected - base(ids, use_cache=False).logits).abs().max() > 1e-4  # 4 steps changed the model
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["nanosft"] = None
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            torch.save(m(torch.load({str(tmp_path / 'ids.pt')!r}), use_cache=False).logits, {str(tmp_path / 'o.pt')!r})
    """)
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "o.pt"), expected, rtol=0, atol=0)


@pytest.mark.distributed  # ~1 min on 2 CPU cores
def test_deepspeed_zero2_two_processes_assign_optimizer_kinds_by_name():
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "TORCH_COMPILE_DISABLE": "1"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port", free_port(),
           os.path.join(REPO, "tests", "distributed", "nanochat_gpt_ds_check.py")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NANOCHAT_GPT_DS_OK" in result.stdout


@pytest.mark.distributed  # ~2 min on 2 CPU cores
def test_zero3_two_processes_train_like_one_process(tmp_path, data_dir):
    """accelerate + DeepSpeed ZeRO-3 (gloo) from nanochat's folder: the 2 logged losses equal 1 process's."""
    import json

    import yaml

    def run(out, launch, rows, **extra):
        config = {"model_name_or_path": BASE, "data_dir": data_dir,
                  "datasets": [{"name": "identity", "max_rows": 24}, {"name": "spellingbee", "size": 24}],
                  "max_length": 256, "per_device_train_batch_size": rows, "gradient_accumulation_steps": 1,
                  "total_batch_size": None, "max_steps": 2, "optimizer": "adamw", "load_optimizer": False,
                  "save_steps": 2, "eval_strategy": "no", "chatcore_every": 0, "report_to": "none",
                  "output_dir": str(out), **extra}
        (tmp_path / f"{out.name}.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": REPO,
               "OMP_NUM_THREADS": "1", "TORCH_COMPILE_DISABLE": "1"}
        accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
        proc = subprocess.run([accelerate, "launch", *launch, "-m", "nanosft.train", "--config",
                               str(tmp_path / f"{out.name}.yaml")], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        history = json.loads((out / "metrics.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    single = run(tmp_path / "single", ["--num_processes", "1"], rows=4)
    zero3 = run(tmp_path / "zero3", ["--config_file", "accelerate_configs/zero3.yaml", "--num_processes", "2",
                                     "--main_process_port", free_port()], rows=2, ddp_backend="gloo")
    assert len(single) == len(zero3) == 2
    assert max(abs(a - b) for a, b in zip(single, zero3)) < 1e-4, (single, zero3)
