"""The nanochat special tokens, and HF tokenizers that carry them.

Two ways to get a tokenizer that speaks the nanochat chat format:

1. ``build_nanochat_tokenizer(dir)``: a nanochat tokenizer folder (``tokenizer.tiktoken`` rank
   file + ``tokenizer_meta.json``) becomes a ``PreTrainedTokenizerFast`` whose ids equal tiktoken's
   (65,527 BPE ranks, then the 9 special tokens at 65527..65535). Converting the 65K ranks takes
   seconds; ``save_pretrained`` writes a ``tokenizer.json`` that loads without the conversion.
2. ``add_nanochat_special_tokens(tokenizer, model)``: any other HF tokenizer (e.g. SmolLM2's) gets the
   9 special tokens appended; the model's embeddings are resized and the new rows initialised to the
   mean of the existing rows (HF's ``mean_resizing``), so the new tokens start as "an average token"
   rather than noise.

Either way the saved tokenizer parses special-token strings (``apply_chat_template`` needs that),
while ``ordinary_encoder`` gives nanochat's ``encode_ordinary``: a user typing ``<|bos|>`` gets
plain text tokens, never the control id.

``tiktoken_encoding`` recovers an exact tiktoken encoder from such a tokenizer (saved or not); the
renderer uses it because tiktoken encodes ~4x faster than the ``tokenizers`` backend here.

Padding never freezes a real token: see ``release_padding_idx``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import weakref

import tiktoken
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

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

# The same format in jinja. Every character it emits is inside {{ }}, so template whitespace never leaks.
# Assistant parts accumulate in ns.run and are flushed as ONE generation block before each tool output and
# at <|assistant_end|>: transformers maps a block's last character to the FIRST token that covers it, so a
# block ending in a character of several byte tokens (an emoji) would lose its other tokens from the mask;
# with maximal blocks, only a text part whose last character spans several tokens directly followed by a
# python_output part (no python part between, which nanochat data never has) can still differ.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', text='', run='') -%}"
    "{{- '" + BOS + "' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' or message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
    "{%- else -%}{%- set ns.text = '' -%}"
    "{%- for part in message['content'] -%}{%- set ns.text = ns.text + part['text'] -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = ns.text + '\n\n' -%}"
    "{%- else -%}{{- '" + USER_START + "' + ns.system + ns.text + '" + USER_END + "' -}}{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT_START + "' -}}"
    "{%- if message['content'] is string -%}{%- set ns.run = message['content'] -%}"
    "{%- else -%}{%- set ns.run = '' -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'python_output' -%}"
    "{%- if ns.run -%}{% generation %}{{- ns.run -}}{% endgeneration %}{%- endif -%}"
    "{%- set ns.run = '' -%}"
    "{{- '" + OUTPUT_START + "' + part['text'] + '" + OUTPUT_END + "' -}}"
    "{%- elif part['type'] == 'python' -%}"
    "{%- set ns.run = ns.run + '" + PYTHON_START + "' + part['text'] + '" + PYTHON_END + "' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.run = ns.run + part['text'] -%}"
    "{%- else -%}{{- raise_exception('unknown assistant part type ' + part['type'] | string) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{% generation %}{{- ns.run + '" + ASSISTANT_END + "' -}}{% endgeneration %}"
    "{%- else -%}{{- raise_exception('unknown role ' + message['role'] | string + ': nanochat knows system, user, assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT_START + "' -}}{%- endif -%}"
)


def build_nanochat_tokenizer(tokenizer_dir: str):
    """Build a ``PreTrainedTokenizerFast`` from a nanochat tokenizer folder.

    Args:
        tokenizer_dir: folder with ``tokenizer.tiktoken`` (base64 token, rank per line) and
            ``tokenizer_meta.json`` (``pattern``, ``special_tokens`` name -> id).

    Returns:
        A fast tokenizer with ``bos_token="<|bos|>"``, ``eos_token="<|assistant_end|>"``, no pad
        token, and the nanochat chat template (``CHAT_TEMPLATE``). Token ids equal
        tiktoken's ``encode_ordinary`` on text (checked in tests) and the special ids from the meta.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: the special-token ids in the meta do not follow the BPE ranks in nanochat's order.
    """
    rank_file = os.path.join(tokenizer_dir, "tokenizer.tiktoken")
    meta_file = os.path.join(tokenizer_dir, "tokenizer_meta.json")
    for path in (rank_file, meta_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"nanochat tokenizer file not found: {path}. A nanochat tokenizer folder holds tokenizer.tiktoken "
                "and tokenizer_meta.json (nanochat's tok_train.py writes them; the package ships one: "
                "pkg://nanosft/resources/data/nanochat_tokenizer)."
            )
    with open(meta_file, encoding="utf-8") as f:
        meta = json.load(f)
    specials = meta.get("special_tokens", {})
    with open(rank_file, "rb") as f:
        ranks_count = sum(1 for line in f if line.strip())
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
    (https://huggingface.co/docs/tokenizers/api/tokenizer); the copy keeps the saved tokenizer untouched
    (serving needs parsing).

    Returns:
        ``tokenizers.Tokenizer``; use ``.encode_batch(texts, add_special_tokens=False)``.
    """
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.encode_special_tokens = True
    backend.no_padding()
    backend.no_truncation()
    return backend


# Probe texts for the fast-path self-check: contractions, digits, unicode, whitespace runs, CR/LF
# (no special-token strings: the tokenizer's own backend parses those).
_PROBES = [
    "Hello world! It's 2024, isn't it? I'd've said 12345.678 = 1e-9 ...",
    "  leading and trailing spaces   \n\n\t tabs\r\nand CRLF\n \n",
    "naïve café, 中文字符, 日本語のテキスト, 한국어, emoji 🧪🦀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "<<48/2=24>> #### 72 def f(x):\n    return x**2  # comment",
]


# Never a token of any tokenizer: NUL bytes around a name no one types.
TIKTOKEN_SEPARATOR = "\x00<|nanosft_text_separator|>\x00"


def tiktoken_encoding(tokenizer):
    """A ``tiktoken.Encoding`` that encodes text exactly like the tokenizer's ``encode_ordinary``, or None.

    tiktoken's Rust BPE encodes the nanochat chat mix faster than the ``tokenizers`` backend
    (``bench/render.py`` measures it), so ``ChatRenderer`` uses it where it is exact: a byte-level BPE
    converted from tiktoken ranks (nanochat's rank file via ``build_nanochat_tokenizer``, or any
    ``TikTokenConverter`` output, also after ``save_pretrained``/``from_pretrained``). Exact means: no
    normalizer, pre-tokenizer ``Split(regex)`` + ``ByteLevel(use_regex=False)``, ``ignore_merges``,
    every added token special, and the merges are exactly all splits of each token into two tokens,
    ordered by the rank (id) of the merged token (what ``TikTokenConverter`` writes), so that "merge
    the pair with the lowest merge index" equals tiktoken's "merge the pair whose result has the
    lowest rank". A probe of tricky texts must then encode identically, or None is returned.

    Returns:
        ``tiktoken.Encoding`` whose ``encode_ordinary`` gives the tokenizer's ids, or None (other
        tokenizers, e.g. SmolLM2's GPT-2-style BPE: callers fall back to the ``tokenizers`` backend).
        Its special tokens are the tokenizer's added tokens plus ``TIKTOKEN_SEPARATOR`` (one id past
        the vocabulary; never a model input).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    state = json.loads(backend.to_str())
    model, pre = state.get("model") or {}, state.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or not model.get("ignore_merges") or state.get("normalizer") is not None:
        return None
    if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if (
        not steps
        or len(steps) != 2
        or steps[0].get("type") != "Split"
        or "Regex" not in (steps[0].get("pattern") or {})
        or steps[0].get("behavior") != "Isolated"
        or steps[0].get("invert")
        or steps[1].get("type") != "ByteLevel"
        or steps[1].get("use_regex")
        or steps[1].get("add_prefix_space")
    ):
        return None
    added = state.get("added_tokens") or []
    if not all(t.get("special") for t in added):
        return None  # a non-special added token splits text even in ordinary encoding
    decode = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(decode[c] for c in tok): i for tok, i in model["vocab"].items()}
    except KeyError:
        return None  # a token that is not byte-level text
    if len(ranks) != len(model["vocab"]) or any(bytes([b]) not in ranks for b in range(256)):
        return None
    merges = model.get("merges") or []
    last = -1
    for merge in merges:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        try:
            rank = model["vocab"][a + b]
        except KeyError:
            return None
        if rank < last:
            return None
        last = rank
    splits = sum(1 for tok in ranks for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks)
    if splits != len(merges):
        return None
    specials = {t["content"]: t["id"] for t in added}
    # A private separator, so that ChatRenderer can encode many texts in one call and split the ids
    # (tiktoken encodes the text between two allowed special tokens on its own, like separate calls).
    specials[TIKTOKEN_SEPARATOR] = max([*ranks.values(), *specials.values()]) + 1
    try:
        enc = tiktoken.Encoding(f"nanosft-{id(tokenizer)}", pat_str=steps[0]["pattern"]["Regex"],
                                mergeable_ranks=ranks, special_tokens=specials)
    except (ValueError, TypeError, OverflowError) as e:  # a regex tiktoken cannot compile, duplicate ids, ...
        logger.info("tiktoken fast path unavailable: %s: %s", type(e).__name__, e)
        return None
    if [backend.encode(t, add_special_tokens=False).ids for t in _PROBES] != [enc.encode_ordinary(t) for t in _PROBES]:
        logger.warning("tiktoken fast path disabled: it encodes the probe texts differently than the tokenizer")
        return None
    return enc


_TIKTOKEN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_tiktoken_encoding(tokenizer):
    """``tiktoken_encoding`` memoized per tokenizer object and vocabulary size (building and checking one is slow)."""
    try:
        hit = _TIKTOKEN_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return tiktoken_encoding(tokenizer)
    if hit is None or hit[0] != len(tokenizer):
        hit = (len(tokenizer), tiktoken_encoding(tokenizer))
        _TIKTOKEN_CACHE[tokenizer] = hit
    return hit[1]


def special_token_ids(tokenizer) -> dict[str, int]:
    """Map each nanochat special token to its id.

    One ``convert_tokens_to_ids`` per token; the 65K-entry ``get_vocab()`` dict (slow) is built only
    to name the missing tokens.

    Raises:
        ValueError: a special token is missing (names it and says to call ``add_nanochat_special_tokens``).
    """
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if all(i is not None and i != tokenizer.unk_token_id for i in ids.values()):
        return ids
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer lacks the nanochat special tokens {missing}; call "
            "nanosft.format.tokenizer.add_nanochat_special_tokens (train.py does it when `add_special_tokens: true`)."
        )
    return {t: vocab[t] for t in SPECIAL_TOKENS}


def release_padding_idx(model) -> int | None:
    """Let every token's input-embedding row learn.

    The trap: HF embeddings are built with ``padding_idx=config.pad_token_id``
    (transformers/models/nanochat/modeling_nanochat.py), and that row never receives gradient
    (``torch.nn.Embedding``). NanoChatConfig's default pad id 1 is a byte token, and a pad of
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
