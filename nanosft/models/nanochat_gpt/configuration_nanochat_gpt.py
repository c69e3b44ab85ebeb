"""Configuration of the current nanochat GPT (karpathy/nanochat ``nanochat/gpt.py`` ``GPTConfig``, commit 92d63d4).

This file is shipped next to every checkpoint nanosft writes for this model (``auto_map``), so it imports
only from transformers: ``AutoConfig.from_pretrained(path, trust_remote_code=True)`` works without nanosft.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def window_sizes(window_pattern: str, num_hidden_layers: int, sequence_len: int) -> list[int]:
    """nanochat's per-layer left window N (query t sees keys t-N..t), ``GPT._compute_window_sizes``.

    ``window_pattern`` (letters S/L) is tiled over the layers; the last layer is always L. L = ``sequence_len``,
    S = ceil(sequence_len / 4 / 128) * 128 (2048 -> 768, 256 -> 128; nanochat/gpt.py, FA3 tile size 128).

    Raises:
        ValueError: a letter other than S or L.
    """
    pattern = (window_pattern or "L").upper()
    if set(pattern) - {"S", "L"}:
        raise ValueError(f"window_pattern {window_pattern!r}: use only the letters S and L")
    short = -(-sequence_len // 4 // 128) * 128
    sizes = [short if pattern[i % len(pattern)] == "S" else sequence_len for i in range(num_hidden_layers)]
    sizes[-1] = sequence_len
    return sizes


class NanoChatGPTConfig(PretrainedConfig):
    r"""The nanochat GPT of July 2026: value embeddings with gates, residual and x0 lambdas, smear, backout,
    per-layer sliding windows, GQA, rotary base 100,000, q/k scaled by 1.2 after QK-norm, softcap 15.

    Args (nanochat's ``model_config`` name in brackets):
        vocab_size (`vocab_size`): tokens; logits are cropped to it. Embeddings hold ``padded_vocab_size`` rows
            (``vocab_size`` rounded up to ``pad_vocab_size_to`` = 64, nanochat/gpt.py ``GPT.__init__``).
        hidden_size (`n_embd`), num_hidden_layers (`n_layer`), num_attention_heads (`n_head`),
        num_key_value_heads (`n_kv_head`, GQA); head_dim = hidden_size / num_attention_heads.
        intermediate_size: MLP width, 4 * hidden_size in nanochat.
        max_position_embeddings (`sequence_len`): the pretraining context; sets the window sizes.
        window_pattern (`window_pattern`): S/L letters tiled over layers, last layer L ("L" when absent).
        rope_theta: rotary base (100,000 since nanochat's 2026 GPT; 10,000 before).
        qk_scale: q and k are multiplied by it after the QK RMS norm (1.2).
        final_logit_softcapping: logits = c * tanh(logits / c), c = 15.
        smear_channels, ve_gate_channels: inputs of the smear gate (24) and value-embedding gates (12).
        ve_gate_scale: value-embedding gate range, scale * sigmoid (3).

    Derived (not user options): ``layer_types`` ("sliding_attention" | "full_attention" per layer) and
    ``sliding_window`` = S + 1, transformers' count of keys a query sees (nanochat's window (S, 0) lets
    query t see keys t-S..t, S + 1 keys). L layers are full attention (equal to nanochat's window
    (sequence_len, 0) for every sequence up to ``sequence_len + 1`` tokens).
    """

    model_type = "nanochat_gpt"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size: int = 32768, hidden_size: int = 768, intermediate_size: int | None = None,
                 num_hidden_layers: int = 12, num_attention_heads: int = 6, num_key_value_heads: int | None = None,
                 max_position_embeddings: int = 2048, window_pattern: str = "SSSL", rope_theta: float = 100000.0,
                 qk_scale: float = 1.2, final_logit_softcapping: float | None = 15.0, smear_channels: int = 24,
                 ve_gate_channels: int = 12, ve_gate_scale: float = 3.0, pad_vocab_size_to: int = 64,
                 initializer_range: float = 0.02, attention_dropout: float = 0.0, use_cache: bool = True,
                 tie_word_embeddings: bool = False, layer_types: list[str] | None = None,
                 sliding_window: int | None = None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.window_pattern = window_pattern or "L"
        self.rope_theta = rope_theta
        self.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
        self.qk_scale = qk_scale
        self.final_logit_softcapping = final_logit_softcapping
        self.smear_channels = smear_channels
        self.ve_gate_channels = ve_gate_channels
        self.ve_gate_scale = ve_gate_scale
        self.pad_vocab_size_to = pad_vocab_size_to
        self.initializer_range = initializer_range
        self.attention_dropout = attention_dropout
        self.use_cache = use_cache
        sizes = window_sizes(self.window_pattern, num_hidden_layers, max_position_embeddings)
        self.layer_types = ["sliding_attention" if n < max_position_embeddings else "full_attention" for n in sizes]
        short = [n for n in sizes if n < max_position_embeddings]
        self.sliding_window = short[0] + 1 if short else None
        kwargs.pop("rope_parameters", None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding, value embeddings and lm_head: vocab_size rounded up to ``pad_vocab_size_to``."""
        m = self.pad_vocab_size_to or 1
        return -(-self.vocab_size // m) * m

    def has_value_embedding(self, layer_idx: int) -> bool:
        """nanochat/gpt.py ``has_ve``: alternating layers, the last layer always has one."""
        return layer_idx % 2 == (self.num_hidden_layers - 1) % 2


__all__ = ["NanoChatGPTConfig", "window_sizes"]
