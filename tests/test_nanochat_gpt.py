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
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.environ.get("NANOSFT_DATA_DIR", os.path.join(REPO, "..", "shared", "data")), "..",
                       "fixtures", "nanochat-head-d4")
pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"nanochat fixture not found: {FIXTURE}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from nanosft.convert import convert_checkpoint

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


def _packed(reference, lens, attention):
    from nanosft.packing import PackedCollator

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
            torch.save(m(torch.load({str(tmp_path / 'ids.pt')!r}), use_cache=False).logits, {str(tmp_path / 'out.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    logits = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(logits, reference["logits"][:, :40], rtol=0, atol=1e-4)
