"""nanochat checkpoint -> HF NanoChat: logits equal nanochat's own forward; unsupported parts fail loudly.

The checkpoints are written by the test in nanochat's layout (``base_checkpoints/<tag>/model_<step>.pt``,
``meta_<step>.json``, ``tokenizer/`` beside ``base_checkpoints``), and the reference forward below is a
re-implementation of nanochat/gpt.py (Oct 2025) written from nanochat's code, not from transformers'.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nanosft.models.convert import UnsupportedCheckpointError, convert_checkpoint

VOCAB, D, LAYERS, HEADS, KV_HEADS, T = 65536, 64, 2, 4, 2, 16


def nanochat_state_dict(seed=0, extra=False):
    """A random state dict with nanochat's key names and shapes (GQA: 4 query heads, 2 kv heads)."""
    g = torch.Generator().manual_seed(seed)
    hd = D // HEADS
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"transformer.wte.weight": r(VOCAB, D), "lm_head.weight": r(VOCAB, D)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        sd.update({p + "attn.c_q.weight": r(HEADS * hd, D), p + "attn.c_k.weight": r(KV_HEADS * hd, D),
                   p + "attn.c_v.weight": r(KV_HEADS * hd, D), p + "attn.c_proj.weight": r(D, D),
                   p + "mlp.c_fc.weight": r(4 * D, D), p + "mlp.c_proj.weight": r(D, 4 * D)})
    if extra:  # newer nanochat (2026): value embeddings, their gates, residual and x0 lambdas
        sd["value_embeds.0.weight"] = r(VOCAB, KV_HEADS * hd)
        sd["transformer.h.0.attn.ve_gate.weight"] = r(KV_HEADS, 32)
        sd["resid_lambdas"] = torch.ones(LAYERS)
        sd["x0_lambdas"] = torch.zeros(LAYERS)
    return sd


def nanochat_forward(sd, idx):
    """nanochat/gpt.py GPT.forward (fp32): norm(wte), blocks x += attn(norm x); x += mlp(norm x), norm, softcap."""
    norm = lambda x: F.rms_norm(x, (x.size(-1),))  # noqa: E731
    B, Tn = idx.shape
    hd = D // HEADS
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(Tn, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def rotary(x):
        d = x.shape[3] // 2
        x1, x2 = x[..., :d], x[..., d:]
        return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)

    x = norm(F.embedding(idx, sd["transformer.wte.weight"]))
    for i in range(LAYERS):
        w = lambda n: sd[f"transformer.h.{i}.{n}.weight"]  # noqa: E731
        h = norm(x)
        q = F.linear(h, w("attn.c_q")).view(B, Tn, HEADS, hd)
        k = F.linear(h, w("attn.c_k")).view(B, Tn, KV_HEADS, hd)
        v = F.linear(h, w("attn.c_v")).view(B, Tn, KV_HEADS, hd)
        q, k = norm(rotary(q)), norm(rotary(k))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=True)
        x = x + F.linear(y.transpose(1, 2).contiguous().view(B, Tn, -1), w("attn.c_proj"))
        x = x + F.linear(F.relu(F.linear(norm(x), w("mlp.c_fc"))).square(), w("mlp.c_proj"))
    logits = F.linear(norm(x), sd["lm_head.weight"])
    return 15 * torch.tanh(logits / 15)


def write_nanochat_run(root, sd, tokenizer_src, step=1200, window=None):
    """``<root>/base_checkpoints/d2/{model,meta}_<step>.pt|json`` and ``<root>/tokenizer/``, as nanochat saves."""
    ckpt = root / "base_checkpoints" / "d2"
    ckpt.mkdir(parents=True)
    torch.save(sd, ckpt / f"model_{step:06d}.pt")
    mc = {"sequence_len": 256, "vocab_size": VOCAB, "n_layer": LAYERS, "n_head": HEADS, "n_kv_head": KV_HEADS,
          "n_embd": D}
    if window:
        mc["window_pattern"] = window
    meta = {"step": step, "val_bpb": 1.23, "model_config": mc,
            "user_config": {"embedding_lr": 0.25, "unembedding_lr": 0.008, "matrix_lr": 0.03}}
    (ckpt / f"meta_{step:06d}.json").write_text(json.dumps(meta))
    shutil.copytree(tokenizer_src, root / "tokenizer")
    return ckpt


@pytest.fixture
def tok_src(data_dir):
    return os.path.join(data_dir, "nanochat_tokenizer")


def test_converted_checkpoint_matches_nanochat_forward_and_carries_tokenizer(tmp_path, tok_src):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sd = nanochat_state_dict()
    ckpt = write_nanochat_run(tmp_path, sd, tok_src)
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "nanosft.convert", str(ckpt), str(out)], capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.num_key_value_heads == KV_HEADS and model.config.pad_token_id is None
    idx = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids=idx).logits
    ref = nanochat_forward(sd, idx)
    assert (ours - ref).abs().max() < 1e-4, (ours - ref).abs().max()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[:2] == [65527, 65528] and ids[-1] == 65530  # <|bos|> <|user_start|> ... <|assistant_start|>
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 65531
    assert (out / "meta_001200.json").is_file()  # base LRs stay inheritable (nanosft.optim.schedule)


def test_optimizer_auto_is_muon_for_a_nanochat_checkpoint_and_its_conversion(tmp_path, tok_src):
    from nanosft.optim.schedule import pretraining_optimizer

    ckpt = write_nanochat_run(tmp_path, nanochat_state_dict(), tok_src)
    assert pretraining_optimizer(str(ckpt)) == ("muon", "nanochat checkpoint (meta_001200.json)")
    out = tmp_path / "hf"
    convert_checkpoint(str(ckpt), str(out))
    assert pretraining_optimizer(str(out)) == ("muon", "nanochat checkpoint (meta_001200.json)")
    (out / "meta_001200.json").unlink()  # the model_type alone still says nanochat
    assert pretraining_optimizer(str(out)) == ("muon", "nanochat checkpoint (model_type nanochat)")


def test_unplaceable_tensors_are_listed_never_dropped(tmp_path, tok_src):
    """A 2026-style checkpoint (value embeddings, gates, lambdas, SSSL) that does not fit the current nanochat GPT:
    value embedding on layer 0 (nanochat puts them on layer 1 of 2), a 32-input gate, no smear/backout."""
    ckpt = write_nanochat_run(tmp_path, nanochat_state_dict(extra=True), tok_src, window="SSSL")
    with pytest.raises(UnsupportedCheckpointError) as e:
        convert_checkpoint(str(ckpt), str(tmp_path / "hf"))
    msg = str(e.value)
    for key in ("unplaceable tensor value_embeds.0.weight", "unplaceable tensor transformer.h.0.attn.ve_gate.weight",
                "missing tensor smear_gate.weight", "missing tensor value_embeds.1.weight"):
        assert key in msg, msg
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    proc = subprocess.run([sys.executable, "-m", "nanosft.convert", str(ckpt), str(tmp_path / "hf2")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "value_embeds.0.weight" in proc.stderr


def test_missing_tensor_is_an_error(tmp_path, tok_src):
    sd = nanochat_state_dict()
    del sd["transformer.h.1.mlp.c_fc.weight"]
    ckpt = write_nanochat_run(tmp_path, sd, tok_src)
    with pytest.raises(UnsupportedCheckpointError, match="missing tensor transformer.h.1.mlp.c_fc.weight"):
        convert_checkpoint(str(ckpt), str(tmp_path / "hf"))


def test_tokenizer_pkl_is_read_like_nanochat_saves_it(tmp_path, tok_src, nanochat_tokenizer):
    import pickle

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from nanosft.models.convert import load_nanochat_tokenizer

    meta = json.loads(open(os.path.join(tok_src, "tokenizer_meta.json")).read())
    enc = tiktoken.Encoding(name="rustbpe", pat_str=meta["pattern"],
                            mergeable_ranks=load_tiktoken_bpe(os.path.join(tok_src, "tokenizer.tiktoken")),
                            special_tokens=meta["special_tokens"])
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
    tok = load_nanochat_tokenizer(str(tmp_path))
    text = "Hello world! 12345 <|bos|> naïve"
    assert tok(text, add_special_tokens=False)["input_ids"] == nanochat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|assistant_end|>") == 65531


def test_train_takes_a_nanochat_folder_directly_from_the_config(tmp_path, tok_src, data_dir):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed"))
    from ckpt_common import ENV, REPO, tiny_overrides

    ckpt = write_nanochat_run(tmp_path, nanochat_state_dict(), tok_src)
    out = tmp_path / "run"
    sets = tiny_overrides(data_dir, str(out), max_steps=1, save_strategy='"no"', model_config="null",
                          model_name_or_path=str(ckpt), tokenizer_name_or_path="null")
    proc = subprocess.run([sys.executable, "-m", "nanosft.train", "--config", "configs/tiny.yaml"] + sets, cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "_nanochat_base" / "model.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert "nanosft.models.convert: converted" in proc.stderr
