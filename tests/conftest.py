"""Shared fixtures: the real offline data folder, the real nanochat tokenizer, tiny models."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("NANOSFT_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
TOKENIZER_DIR = os.path.join(DATA_DIR, "nanochat_tokenizer")

if not os.path.isdir(DATA_DIR):
    raise RuntimeError(f"test data folder not found: {DATA_DIR}; set NANOSFT_DATA_DIR to the shared/data folder")

sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def data_dir():
    return DATA_DIR


@pytest.fixture(scope="session")
def nanochat_tokenizer():
    from nanosft.tokenizer import build_nanochat_tokenizer

    return build_nanochat_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_nanochat():
    """A factory of tiny random NanoChat models with the nanochat vocabulary (fp32, eval-free)."""
    import torch
    from transformers import NanoChatConfig, NanoChatForCausalLM

    def make(vocab_size=65536, hidden_size=64, layers=2, heads=4, max_pos=1024, seed=0, intermediate_size=None, **kw):
        torch.manual_seed(seed)
        cfg = NanoChatConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                             intermediate_size=intermediate_size or 4 * hidden_size,
                             num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_pos,
                             pad_token_id=None, **kw)
        return NanoChatForCausalLM(cfg)

    return make
