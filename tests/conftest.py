"""Shared fixtures: the embedded data, the full data folder when present, the real nanochat tokenizer, tiny models.

Tests read the small data embedded in the package (``nanosft/resources/data``), so they run in a bare clone.
Tests that need the full copies (sizes, whole splits) take ``full_data_dir`` or carry ``needs_full_data``: they
skip, with the reason, when no full data folder exists (``NANOSFT_DATA_DIR``, else ``../shared/data`` beside the
repository).
"""

import os
import socket
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_DATA_DIR = os.path.join(REPO, "nanosft", "resources", "data")
DATA_DIR = EMBEDDED_DATA_DIR  # what tests read unless they need the full data
TOKENIZER_DIR = os.path.join(EMBEDDED_DATA_DIR, "nanochat_tokenizer")
_FULL = os.environ.get("NANOSFT_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
FULL_DATA_DIR = _FULL if os.path.isdir(_FULL) else None
NO_FULL_DATA = f"needs the full data folder, not found at {_FULL} (set NANOSFT_DATA_DIR)"
needs_full_data = pytest.mark.skipif(FULL_DATA_DIR is None, reason=NO_FULL_DATA)

sys.path.insert(0, REPO)


def free_port() -> str:
    """A TCP port free on localhost now (the OS picks it), for the rendezvous of a multi-process test: fixed
    ports collide when two test runs share a machine (EADDRINUSE)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="session")
def data_dir():
    """The embedded data folder (same layout as the full one, a few hundred rows per dataset)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def full_data_dir():
    """The full data folder; skips the test when there is none."""
    if FULL_DATA_DIR is None:
        pytest.skip(NO_FULL_DATA)
    return FULL_DATA_DIR


@pytest.fixture(scope="session")
def nanochat_tokenizer():
    from nanosft.format.tokenizer import build_nanochat_tokenizer

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
