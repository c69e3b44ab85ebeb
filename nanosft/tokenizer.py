"""The nanochat special tokens, and HF tokenizers that carry them.

Two ways to get a tokenizer that speaks the nanochat chat format:

1. ``build_nanochat_tokenizer(dir)``: a nanochat tokenizer folder (``tokenizer.tiktoken`` rank
   file + ``tokenizer_meta.json``) becomes a ``PreTrainedTokenizerFast`` whose ids equal tiktoken's
   (65,527 BPE ranks, then the 9 special tokens at 65527..65535). Converting the 65K ranks takes
   about 1.2 s, so the result is cached as ``tokenizer.json`` next to nothing: callers save it.
2. ``add_nanochat_special_tokens(tokenizer, model)``: any other HF tokenizer (e.g. SmolLM2's) gets the
   9 special tokens appended; the model's embeddings are resized and the new rows initialised to the
   mean of the existing rows (HF's ``mean_resizing``), so the new tokens start as "an average token"
   rather than noise.

Either way the saved tokenizer parses special-token strings (``apply_chat_template`` needs that),
while ``ordinary_encoder`` gives nanochat's ``encode_ordinary``: a user typing ``<|bos|>`` gets
plain text tokens, never the control id.

Padding never freezes a real token: see ``release_padding_idx``.
"""

from __future__ import annotations

import copy
import json
import logging
import os

logger = logging.getLogger(__name__)

# Order matters: nanochat appends them after the BPE ranks in this order (nanochat/tokenizer.py).
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]
BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END = SPECIAL_TOKENS[:5]
PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END = SPECIAL_TOKENS[5:]


def build_nanochat_tokenizer(tokenizer_dir: str):
    """Build a ``PreTrainedTokenizerFast`` from a nanochat tokenizer folder.

    Args:
        tokenizer_dir: folder with ``tokenizer.tiktoken`` (base64 token, rank per line) and
            ``tokenizer_meta.json`` (``pattern``, ``special_tokens`` name -> id).

    Returns:
        A fast tokenizer with ``bos_token="<|bos|>"``, ``eos_token="<|assistant_end|>"``, no pad
        token, and the nanochat chat template (``nanosft.template.CHAT_TEMPLATE``). Token ids equal
        tiktoken's ``encode_ordinary`` on text (checked in tests) and the special ids from the meta.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: the special-token ids in the meta do not follow the BPE ranks in nanochat's order.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from .template import CHAT_TEMPLATE

    rank_file = os.path.join(tokenizer_dir, "tokenizer.tiktoken")
    meta_file = os.path.join(tokenizer_dir, "tokenizer_meta.json")
    for path in (rank_file, meta_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"nanochat tokenizer file not found: {path}. A nanochat tokenizer folder holds tokenizer.tiktoken "
                "and tokenizer_meta.json (nanochat's tok_train.py writes them; ../shared/data/nanochat_tokenizer "
                "has one)."
            )
    with open(meta_file, encoding="utf-8") as f:
        meta = json.load(f)
    specials = meta.get("special_tokens", {})
    ranks_count = sum(1 for line in open(rank_file, "rb") if line.strip())
    expected = {tok: ranks_count + i for i, tok in enumerate(SPECIAL_TOKENS)}
    if specials and specials != expected:
        raise ValueError(
            f"{meta_file}: special tokens {specials} do not follow the {ranks_count} BPE ranks in nanochat's order "
            f"{expected}."
        )
    converter = TikTokenConverter(vocab_file=rank_file, pattern=meta["pattern"], extra_special_tokens=SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token=BOS,
        eos_token=ASSISTANT_END,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e9),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def add_nanochat_special_tokens(tokenizer, model=None):
    """Give any HF tokenizer the nanochat chat format; resize ``model`` to match.

    Tokens already present keep their ids. New embedding rows (input and output) are set to the mean
    of the existing rows (transformers' ``resize_token_embeddings(mean_resizing=True)``, after Hewitt
    2021, "Initializing New Word Embeddings for Pretrained Language Models").

    Args:
        tokenizer: a fast HF tokenizer.
        model: optional ``PreTrainedModel``; its embeddings are resized to ``len(tokenizer)``.

    Returns:
        The number of tokens added (0..9).

    Raises:
        ValueError: the tokenizer is not a fast tokenizer (the renderer needs the Rust backend).
    """
    from .template import CHAT_TEMPLATE

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; nanosft needs a tokenizers backend.")
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    added = 0
    if missing:
        added = tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        logger.info("added %d nanochat special tokens to %s", added, type(tokenizer).__name__)
    tokenizer.bos_token = BOS
    tokenizer.eos_token = ASSISTANT_END
    tokenizer.chat_template = CHAT_TEMPLATE
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return added


def ordinary_encoder(tokenizer):
    """A copy of the tokenizer's Rust backend that never parses special-token strings.

    nanochat encodes message text with tiktoken's ``encode_ordinary``: a typed ``<|assistant_end|>``
    is seven ordinary tokens. The HF backend does the same only with ``encode_special_tokens=True``
    (hf-integration.md); the copy keeps the saved tokenizer untouched (serving needs parsing).

    Returns:
        ``tokenizers.Tokenizer``; use ``.encode_batch(texts, add_special_tokens=False)``.
    """
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.encode_special_tokens = True
    backend.no_padding()
    backend.no_truncation()
    return backend


def special_token_ids(tokenizer) -> dict[str, int]:
    """Map each nanochat special token to its id.

    Raises:
        ValueError: a special token is missing (names it and says to call ``add_nanochat_special_tokens``).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer lacks the nanochat special tokens {missing}; call nanosft.tokenizer.add_nanochat_special_tokens "
            "(train.py does it when `add_special_tokens: true`)."
        )
    return {t: vocab[t] for t in SPECIAL_TOKENS}


def release_padding_idx(model) -> int | None:
    """Let every token's input-embedding row learn.

    The trap (hf-integration.md): HF embeddings are built with ``padding_idx=config.pad_token_id``;
    that row never receives gradient. NanoChatConfig's default pad id 1 is a byte token, and a pad of
    ``<|bos|>`` or ``<|assistant_end|>`` would freeze a token the model must use. nanosft never feeds
    pad ids to the model without a target mask (the packer pads with ``<|bos|>`` ids and masks them),
    so it turns ``padding_idx`` off on the input embedding.

    Returns:
        The ``padding_idx`` that was removed, or None.
    """
    emb = model.get_input_embeddings()
    old = getattr(emb, "padding_idx", None)
    if old is not None:
        emb.padding_idx = None
        logger.info("input embedding padding_idx=%d removed so that every token row trains", old)
    return old
