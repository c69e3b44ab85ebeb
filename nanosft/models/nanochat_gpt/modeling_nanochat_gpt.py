"""The current nanochat GPT (karpathy/nanochat ``nanochat/gpt.py``, commit 92d63d4) as a transformers model.

Forward, following nanochat step by step (``rms_norm`` = ``F.rms_norm`` without weight, eps = dtype default):

1. x = rms_norm(embed_tokens[ids]); embeddings and lm_head have ``padded_vocab_size`` rows.
2. Smear: x[t] += smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1] for every t whose previous token is in
   the same sequence; at decode x[t-1] is read from the cache. x0 = x.
3. Layer i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0; x += attn(rms_norm(x)); x += mlp(rms_norm(x));
   the residual after layer n_layer // 2 is kept as x_mid.
4. Attention: GQA; on layers with a value embedding v += 3 * sigmoid(ve_gate(x[..., :12])) * value_embeds[i][ids];
   rotary (base 100,000, half-split layout) THEN rms_norm(q), rms_norm(k) THEN q, k *= 1.2; scale 1/sqrt(head_dim);
   causal, with a sliding window on "S" layers.
5. x = rms_norm(x - backout_lambda * x_mid); logits = lm_head(x)[..., :vocab_size] in fp32; 15 * tanh(logits / 15).

Sequence boundaries: a token whose ``position_ids`` is not its predecessor's plus one starts a new sequence
(nanosft's packed rows restart positions at 0 per conversation). transformers' mask functions then keep
attention (and the sliding windows) inside each sequence, and the smear is switched off at that token, so no
information crosses a boundary. With positions 0..T-1 across the row this is nanochat's whole-row forward.

Attention goes through transformers' attention interface: ``eager`` (below, the readable reference), ``sdpa``,
``flash_attention_2/3`` (window passed as ``sliding_window``; packed rows as ``cu_seq_lens``).

KV cache: transformers' ``DynamicCache`` built from ``layer_types``/``sliding_window`` (sliding layers keep only
their window). The smear at decode needs the previous token's normalized embedding: the forward keeps it on
the cache object (``nanochat_prev_embedding``), as nanochat's ``KVCache.prev_embedding``; beam search reorders
it with the layers (``_reorder_cache``).

This file is shipped next to every checkpoint (``auto_map``); it imports only torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep

from .configuration_nanochat_gpt import NanoChatGPTConfig

# attribute of the KV cache holding the last token's normalized embedding (the smear reads it at decode)
PREV_EMBEDDING_ATTR = "nanochat_prev_embedding"


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """``F.rms_norm`` over the last dim, no weight, eps = the dtype's machine epsilon (nanochat/gpt.py ``norm``)."""
    return F.rms_norm(x, (x.size(-1),))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x2, -x1] over the last dim (halves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """nanochat's ``apply_rotary_emb``: y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos (rotation by -theta).

    x: [B, H, T, D]; cos, sin: [B, T, D] (the half-dim table repeated twice).
    """
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D], each kv head repeated for its query heads (GQA)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """softmax(q k^T * scaling + mask) v. query [B, H, T, D], key/value [B, H_kv, S, D], attention_mask
    additive [B, 1, T, S] (or None: plain causal). Returns ([B, T, H, D], weights [B, H, T, S])."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is None:
        t, s = query.shape[2], key.shape[2]
        attention_mask = torch.full((t, s), float("-inf"), device=query.device).triu(s - t + 1).to(weights.dtype)
    elif attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros_like(attention_mask, dtype=weights.dtype).masked_fill(
            ~attention_mask, torch.finfo(weights.dtype).min)
    weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class NanoChatGPTRotaryEmbedding(nn.Module):
    """cos/sin tables of the rotary embedding: inv_freq = theta^(-2i/head_dim), angles = position * inv_freq."""

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__()
        self.config = config
        self.rope_type = "default"
        inv_freq = self.compute_default_rope_parameters(config)[0]
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: NanoChatGPTConfig, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """inv_freq [head_dim / 2] float32 for base ``config.rope_theta``
        (nanochat ``GPT._precompute_rotary_embeddings``)."""
        dim = config.hidden_size // config.num_attention_heads
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)), 1.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, T] -> (cos, sin) [B, T, head_dim] in x's dtype (angles computed in fp32)."""
        freqs = position_ids[..., None].float() * self.inv_freq.float().to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class NanoChatGPTAttention(nn.Module):
    """Causal self-attention with GQA, value embedding gate, rotary -> QK-norm -> 1.2 scale, sliding window."""

    def __init__(self, config: NanoChatGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        self.sliding_window = config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.ve_gate = (nn.Linear(config.ve_gate_channels, self.num_kv_heads, bias=False)
                        if config.has_value_embedding(layer_idx) else None)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, value_embedding: torch.Tensor | None = None,
                cache: Cache | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, T, C] (already normalized); value_embedding [B, T, kv_dim] or None -> [B, T, C]."""
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        if self.ve_gate is not None and value_embedding is not None:  # value residual (ResFormer), per kv head
            gate_in = hidden_states[..., : self.config.ve_gate_channels]
            gate = self.config.ve_gate_scale * torch.sigmoid(self.ve_gate(gate_in))  # [B, T, H_kv], in (0, 3)
            v = v + gate.unsqueeze(-1) * value_embedding.view(b, t, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q) * self.config.qk_scale, rms_norm(k) * self.config.qk_scale  # rotary THEN QK-norm
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                     eager_attention_forward)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                 sliding_window=self.sliding_window,
                                 dropout=self.config.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(out.reshape(b, t, -1).contiguous()), weights


class NanoChatGPTMLP(nn.Module):
    """fc2(relu(fc1(x))^2), hidden 4 * n_embd (nanochat ``MLP``)."""

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)).square())


class NanoChatGPTDecoderLayer(GradientCheckpointingLayer):
    """x += attn(rms_norm(x)); x += mlp(rms_norm(x)) (nanochat ``Block``)."""

    def __init__(self, config: NanoChatGPTConfig, layer_idx: int):
        super().__init__()
        self.self_attn = NanoChatGPTAttention(config, layer_idx)
        self.mlp = NanoChatGPTMLP(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                value_embedding: torch.Tensor | None = None, cache: Cache | None = None, **kwargs) -> torch.Tensor:
        attn, _ = self.self_attn(rms_norm(hidden_states), position_embeddings, attention_mask,
                                 value_embedding=value_embedding, cache=cache, **kwargs)
        hidden_states = hidden_states + attn
        return hidden_states + self.mlp(rms_norm(hidden_states))


class NanoChatGPTPreTrainedModel(PreTrainedModel):
    """Shared transformers plumbing: config class, attention backends (eager/sdpa/flash), gradient checkpointing
    per decoder layer, and nanochat's weight initialisation for freshly built models."""

    config_class = NanoChatGPTConfig
    config: NanoChatGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NanoChatGPTDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """nanochat ``GPT.init_weights``: wte N(0, 0.8), lm_head N(0, 0.001), q/k/v and value embeddings
        U(+-sqrt(3/C)), c_fc U(+-0.4 sqrt(3/C)), output projections 0, gates U(0, 0.02), smear_lambda 0,
        backout 0.2, resid_lambdas 1.15 - 0.1 i/(L-1), x0_lambdas 0.2 - 0.15 i/(L-1)."""
        c = self.config
        s = 3 ** 0.5 * c.hidden_size ** -0.5
        if isinstance(module, NanoChatGPTModel):
            nn.init.normal_(module.embed_tokens.weight, mean=0.0, std=0.8)
            for ve in module.value_embeds.values():
                nn.init.uniform_(ve.weight, -s, s)
            n = c.num_hidden_layers
            steps = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
            module.resid_lambdas.copy_(1.15 - 0.10 * steps)
            module.x0_lambdas.copy_(0.20 - 0.15 * steps)
            nn.init.zeros_(module.smear_lambda)
            nn.init.constant_(module.backout_lambda, 0.2)
            nn.init.uniform_(module.smear_gate.weight, 0.0, 0.02)
        elif isinstance(module, NanoChatGPTAttention):
            for lin in (module.q_proj, module.k_proj, module.v_proj):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(module.o_proj.weight)
            if module.ve_gate is not None:
                nn.init.uniform_(module.ve_gate.weight, 0.0, 0.02)
        elif isinstance(module, NanoChatGPTMLP):
            nn.init.uniform_(module.fc1.weight, -0.4 * s, 0.4 * s)
            nn.init.zeros_(module.fc2.weight)
        elif isinstance(module, NanoChatGPTRotaryEmbedding):
            inv_freq = module.compute_default_rope_parameters(c)[0]
            module.inv_freq.copy_(inv_freq)
            module.original_inv_freq.copy_(inv_freq)
        elif isinstance(module, NanoChatGPTForCausalLM):
            nn.init.normal_(module.lm_head.weight, mean=0.0, std=0.001)


class NanoChatGPTModel(NanoChatGPTPreTrainedModel):
    """Embedding, smear, the decoder layers with residual/x0 lambdas, backout and the final norm."""

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__(config)
        vocab = config.padded_vocab_size
        kv_dim = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
        self.embed_tokens = nn.Embedding(vocab, config.hidden_size)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, kv_dim) for i in range(config.num_hidden_layers)
                                           if config.has_value_embedding(i)})
        self.layers = nn.ModuleList(NanoChatGPTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.resid_lambdas = nn.Parameter(torch.ones(config.num_hidden_layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self.smear_gate = nn.Linear(config.smear_channels, 1, bias=False)
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.backout_lambda = nn.Parameter(torch.full((1,), 0.2))
        self.rotary_emb = NanoChatGPTRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _smear(self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               cache: Cache | None) -> torch.Tensor:
        """x [B, T, C] normalized embeddings -> x with the previous token mixed in where it is the same sequence."""
        prev = getattr(cache, PREV_EMBEDDING_ATTR, None) if cache is not None and cache.get_seq_length() > 0 else None
        if cache is not None:
            setattr(cache, PREV_EMBEDDING_ATTR, x[:, -1:].detach())
        c = self.config.smear_channels
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., :c]))  # [B, T, 1]
        if prev is not None and prev.shape[0] == x.shape[0]:  # decode: the previous token lives in the cache
            before = torch.cat([prev.to(x.dtype), x[:, :-1]], dim=1)
            same = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
            same = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            same[:, 1:] = True
        pos = position_ids.expand(x.shape[0], -1)
        same[:, 1:] &= pos[:, 1:] == pos[:, :-1] + 1  # a position that does not continue starts a new sequence
        if attention_mask is not None and attention_mask.dim() == 2:  # padding (left-padded generate) never smears in
            t, am = x.shape[1], attention_mask.bool()
            if am.shape[1] == t:  # no past: the first token has no predecessor
                am = torch.cat([torch.zeros_like(am[:, :1]), am], dim=1)
            same &= am[:, -t - 1:-1] & am[:, -t:]
        return x + (gate * before) * same[..., None].to(x.dtype)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                past_key_values: Cache | None = None, **kwargs) -> BaseModelOutputWithPast:
        """input_ids [B, T] int64 (needed by the value embeddings) -> last_hidden_state [B, T, C] (normalized).

        Raises:
            ValueError: no ``input_ids`` (the value embeddings look tokens up; ``inputs_embeds`` alone cannot).
        """
        cache = cache if cache is not None else past_key_values
        if input_ids is None:
            raise ValueError("NanoChatGPT needs input_ids (its value embeddings are looked up by token id)")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(x.shape[1], device=x.device) + past).unsqueeze(0)
        mask_kwargs = dict(config=self.config, inputs_embeds=x, attention_mask=attention_mask, cache=cache,
                           position_ids=position_ids)
        if isinstance(attention_mask, dict):
            masks = attention_mask
        else:
            masks = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in self.config.layer_types:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        position_embeddings = self.rotary_emb(x, position_ids)

        x = rms_norm(x)
        x = self._smear(x, position_ids, attention_mask if torch.is_tensor(attention_mask) else None, cache)
        x0, x_mid, backout_layer = x, None, self.config.num_hidden_layers // 2
        for i, layer in enumerate(self.layers):
            x = self.resid_lambdas[i].to(x.dtype) * x + self.x0_lambdas[i].to(x.dtype) * x0
            ve = self.value_embeds[str(i)](input_ids).to(x.dtype) if str(i) in self.value_embeds else None
            x = layer(x, attention_mask=masks[self.config.layer_types[i]], position_embeddings=position_embeddings,
                      value_embedding=ve, cache=cache, position_ids=position_ids, **kwargs)
            if i == backout_layer:
                x_mid = x
        if x_mid is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_mid
        return BaseModelOutputWithPast(last_hidden_state=rms_norm(x), cache=cache)


class NanoChatGPTForCausalLM(NanoChatGPTPreTrainedModel, GenerationMixin):
    """NanoChatGPTModel + untied lm_head; logits cropped to ``vocab_size``, fp32, softcapped."""

    _tied_weights_keys = {}

    def __init__(self, config: NanoChatGPTConfig):
        super().__init__(config)
        self.model = NanoChatGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    def estimate_flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), nanochat's ``GPT.estimate_flops`` (PaLM, arXiv:2204.02311
        appendix B): 6 x the weights of every ``nn.Linear`` (embedding lookups excluded) + 12 x heads x head_dim x
        min(window, seq_len) per layer for q k^T and the weighted sum over values.

        Args:
            seq_len: the training row length T (default ``max_position_embeddings``).
        """
        c = self.config
        t = seq_len or c.max_position_embeddings
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        head_dim = c.hidden_size // c.num_attention_heads
        windows = [c.sliding_window - 1 if kind == "sliding_attention" else t for kind in c.layer_types]
        return 6 * matmul + sum(12 * c.num_attention_heads * head_dim * min(w, t) for w in windows)

    @staticmethod
    def _reorder_cache(cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: reorder the KV cache and the smear's previous-token embedding alike (rows = beams)."""
        cache.reorder_cache(beam_idx)
        prev = getattr(cache, PREV_EMBEDDING_ATTR, None)
        if prev is not None:
            setattr(cache, PREV_EMBEDDING_ATTR, prev.index_select(0, beam_idx.to(prev.device)))
        return cache

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values: Cache | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Returns ``logits`` float32 [B, T, vocab_size] ([N, vocab_size] for a boolean ``logits_to_keep`` mask of N
        True entries); ``loss`` = mean cross entropy over ``labels`` != -100 (shifted inside, transformers'
        convention) when labels are given."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, **kwargs)
        hidden = slice_logits_to_keep(out.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden)[..., : self.config.vocab_size].float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


__all__ = ["NanoChatGPTForCausalLM", "NanoChatGPTModel", "NanoChatGPTPreTrainedModel"]
