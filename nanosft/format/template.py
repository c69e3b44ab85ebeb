"""The nanochat chat format: a direct renderer for training, a jinja template for serving.

A conversation renders as ``<|bos|>`` then alternating user/assistant turns (nanochat/tokenizer.py,
``render_conversation``). The assistant mask is 1 exactly on the tokens the model must produce:

    <|bos|>                                   0
    <|user_start|> text <|user_end|>          0
    <|assistant_start|>                       0   (given at inference)
    assistant text                            1
    <|python_start|> code <|python_end|>      1   (tool call)
    <|output_start|> out <|output_end|>       0   (tool result comes from the environment)
    <|assistant_end|>                         1   (the model must learn to stop)

Training uses ``ChatRenderer``: it collects every text piece of a batch of conversations, encodes them
ordinarily (a typed ``<|bos|>`` is text, never the control token) in one call, then stitches ids and
mask. For the nanochat tokenizer (and any tiktoken-converted BPE) the call goes to tiktoken, with the
texts joined by a private separator token; otherwise to the tokenizer's Rust backend. On 10,000 real
conversations (GSM8K, identity, GPTeacher, SpellingBee; ``bench/render.py``, one process) that is several
times faster than TRL's jinja + ``return_assistant_tokens_mask`` path (slightly faster with the Rust
backend: HF's BPE encode, not jinja, is most of TRL's time).

``tokenizer.CHAT_TEMPLATE`` is the same format in jinja with ``{% generation %}`` markers. It ships in every
checkpoint so ``apply_chat_template`` works for serving (transformers, vLLM) and for TRL's
``assistant_only_loss``; for any conversation whose text holds no special-token strings it yields the
same ids and mask as the renderer (a property test pins that), with one exception that nanochat data
never has: transformers maps the last character of a generation block to its first token, so an
assistant text part ending in a character of several tokens (an emoji) directly followed by a
python_output part loses that character's other tokens from the jinja mask. Consecutive text parts of
one assistant message are joined before encoding, as jinja does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from .tokenizer import (
    ASSISTANT_END,
    ASSISTANT_START,
    BOS,
    OUTPUT_END,
    OUTPUT_START,
    PYTHON_END,
    PYTHON_START,
    TIKTOKEN_SEPARATOR,
    USER_END,
    USER_START,
    cached_tiktoken_encoding,
    ordinary_encoder,
    special_token_ids,
)

logger = logging.getLogger(__name__)

PART_TYPES = ("text", "python", "python_output")

class ConversationError(ValueError):
    """A conversation that does not follow the nanochat format; the message says why."""


def _text_parts(content, where: str) -> str:
    """User/system content: a string, or a list of ``text`` parts (HF's multimodal message shape) joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConversationError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ConversationError(f"{where}: part {j} has unknown type {kind!r} (user and system parts must be 'text')")
        if not isinstance(part.get("text"), str):
            raise ConversationError(f"{where}: part {j} text must be a string, got {type(part.get('text')).__name__}")
        texts.append(part["text"])
    return "".join(texts)


def _parts(content, where: str) -> list[dict]:
    """Assistant content as a list of parts; consecutive text parts joined (as jinja concatenates them)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ConversationError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ConversationError(f"{where}: part {j} has unknown type {kind!r} (expected one of {PART_TYPES})")
        if not isinstance(part.get("text"), str):
            raise ConversationError(f"{where}: part {j} text must be a string, got {type(part.get('text')).__name__}")
        if part["type"] == "text" and parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": parts[-1]["text"] + part["text"]}
        else:
            parts.append({"type": part["type"], "text": part["text"]})
    return parts


def normalize_conversation(messages) -> list[dict]:
    """Validate a conversation and bring it to the renderer's canonical form.

    Accepts a list of ``{"role", "content"}`` dicts, or a dict with a ``messages`` list. A leading
    system message is merged into the first user message as ``system + "\\n\\n" + user``
    (nanochat/tokenizer.py ``render_conversation``). User and system content is a string or a list
    of ``{"type": "text", "text"}`` parts (joined). Assistant content becomes a list of
    ``{"type", "text"}`` parts (types ``text``, ``python``, ``python_output``); consecutive text parts
    are joined. Extra message keys (``name``, ``tool_calls``...) are ignored.

    Returns:
        list of ``{"role": "user", "content": str}`` / ``{"role": "assistant", "content": [parts]}``,
        strictly alternating, starting with user.

    Raises:
        ConversationError: not a list of messages or empty; unknown role; roles not alternating;
            first non-system message not from the user; system message not first or not followed by
            a user message; no assistant message; content None or not a string / list of parts;
            unknown part type; part text not a string. The message says which message and why.
    """
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list):
        raise ConversationError(f"expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ConversationError("empty conversation (no messages)")
    out: list[dict] = []
    system = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ConversationError(f"message {i}: expected a dict with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise ConversationError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if content is None:
            raise ConversationError(f"message {i} ({role}): content is None")
        if role == "system":
            if i != 0:
                raise ConversationError(f"message {i}: a system message is only allowed first")
            system = _text_parts(content, "message 0 (system)")
            continue
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role != expected:
            if not out:
                raise ConversationError(f"message {i}: the first non-system message must be from the user, got {role}")
            raise ConversationError(f"message {i}: roles must alternate user/assistant, expected {expected}, got {role}")
        if role == "user":
            content = _text_parts(content, f"message {i} (user)")
            if system is not None:
                content, system = system + "\n\n" + content, None
            out.append({"role": "user", "content": content})
        else:
            out.append({"role": "assistant", "content": _parts(content, f"message {i} (assistant)")})
    if system is not None:
        raise ConversationError("a system message must be followed by a user message")
    if not any(m["role"] == "assistant" for m in out):
        raise ConversationError("no assistant message (nothing to train on)")
    return out


def parse_calculator_annotations(answer: str) -> list[dict]:
    """Turn a GSM8K answer with ``<<expr=result>>`` annotations into assistant parts.

    ``"48/2 = <<48/2=24>>24 clips"`` -> text ``"48/2 = "``, python ``"48/2"``, python_output ``"24"``,
    text ``"24 clips"`` (nanochat/tasks/gsm8k.py). The final ``#### N`` line stays in the text.
    """
    parts = []
    for piece in re.split(r"(<<[^>]*>>)", answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, _, result = piece[2:-2].rpartition("=")
            if not _:
                expr, result = result, ""
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


# Version of the token layout ChatRenderer produces; bump it whenever rendering changes the ids or masks of
# any conversation: prepared data caches (nanosft/data/prepare.py) are keyed by it.
CHAT_FORMAT_VERSION = 1


@dataclass
class RenderStats:
    """Counters of one renderer: conversations rendered and truncated, tokens dropped by truncation.

    ``by_source`` maps a dataset label (``sources=`` of ``render_batch``) to its own
    ``{"conversations", "truncated", "tokens_dropped"}``.
    """

    conversations: int = 0
    truncated: int = 0
    tokens_dropped: int = 0
    by_source: dict = field(default_factory=dict)


# nanochat/tokenizer.py render_conversation(max_tokens=2048), as render_for_completion calls it
COMPLETION_MAX_TOKENS = 2048


class ChatRenderer:
    """Render conversations to ``(input_ids, assistant_mask)`` in the nanochat format.

    Text pieces are encoded ordinarily (nanochat's ``encode_ordinary``): special-token strings typed in
    a message are plain text. Encoding uses tiktoken where it is provably the same BPE
    (``nanosft.format.tokenizer.tiktoken_encoding``: the nanochat tokenizer, saved or not), else the
    tokenizer's own Rust backend with ``encode_special_tokens=True``; ids are identical either way.

    Args:
        tokenizer: an HF fast tokenizer holding the 9 nanochat special tokens.
        max_tokens: truncate each rendered conversation to this many tokens (nanochat: 2048);
            None keeps everything. Truncations are counted in ``self.stats`` and logged by ``log_stats``.
        backend: "auto" (tiktoken when exact, else tokenizers), "tiktoken" (raise if not exact) or
            "tokenizers".

    Raises:
        ValueError: the tokenizer lacks a nanochat special token; ``backend="tiktoken"`` on a tokenizer
            that tiktoken cannot reproduce; an unknown backend.
    """

    def __init__(self, tokenizer, max_tokens: int | None = None, backend: str = "auto"):
        if backend not in ("auto", "tiktoken", "tokenizers"):
            raise ValueError(f"backend must be 'auto', 'tiktoken' or 'tokenizers', got {backend!r}")
        self.tokenizer = tokenizer
        self.ids = special_token_ids(tokenizer)
        self.max_tokens = max_tokens
        self.stats = RenderStats()
        self._encoder = None
        self._tiktoken = cached_tiktoken_encoding(tokenizer) if backend != "tokenizers" else None
        if backend == "tiktoken" and self._tiktoken is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a tiktoken-style BPE; use backend='auto'")
        self.backend = "tiktoken" if self._tiktoken is not None else "tokenizers"
        if self._tiktoken is not None:
            self._separator = {TIKTOKEN_SEPARATOR}
            self._separator_id = self._tiktoken.encode_single_token(TIKTOKEN_SEPARATOR)
        s = self.ids
        self._special = (s[BOS], s[USER_START], s[USER_END], s[ASSISTANT_START], s[ASSISTANT_END],
                         s[PYTHON_START], s[PYTHON_END], s[OUTPUT_START], s[OUTPUT_END])

    @property
    def encoder(self):
        """The tokenizer's Rust backend that never parses special tokens (``ordinary_encoder``), built on first use."""
        if self._encoder is None:
            self._encoder = ordinary_encoder(self.tokenizer)
        return self._encoder

    def encode_ordinary(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special-token strings encoded as plain text (tiktoken's ``encode_ordinary``)."""
        if not texts:
            return []
        if self._tiktoken is None:
            return [e.ids for e in self.encoder.encode_batch(texts, add_special_tokens=False)]
        enc = self._tiktoken
        joined = TIKTOKEN_SEPARATOR.join(texts)
        if len(texts) < 4 or joined.count(TIKTOKEN_SEPARATOR) != len(texts) - 1:  # a text holds the separator
            return [enc.encode_ordinary(t) for t in texts]
        # One call for all texts: tiktoken encodes each stretch between two separators on its own (the same
        # ids as separate calls), and skips ~6 us of call overhead per text (-30% on the bench mix). One
        # thread: tiktoken's batch threadpool was slower on few cores (bench/render.py).
        flat = enc.encode(joined, allowed_special=self._separator, disallowed_special=())
        sep = self._separator_id
        out = []
        start = 0
        index = flat.index
        for _ in range(len(texts) - 1):
            end = index(sep, start)
            out.append(flat[start:end])
            start = end + 1
        out.append(flat[start:])
        return out

    def _stitch(self, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        """Render normalized conversations, untruncated: one encode for all their texts, then stitch."""
        texts: list[str] = []
        for conv in conversations:
            for m in conv:
                if m["role"] == "user":
                    texts.append(m["content"])
                else:
                    texts.extend(p["text"] for p in m["content"])
        encoded = self.encode_ordinary(texts)
        bos, us, ue, ast, aend, ps, pe, os_, oe = self._special
        out = []
        k = 0
        for conv in conversations:
            ids = [bos]
            mask = [0]
            for m in conv:
                if m["role"] == "user":
                    piece = encoded[k]
                    k += 1
                    ids.append(us)
                    ids += piece
                    ids.append(ue)
                    mask += [0] * (len(piece) + 2)
                    continue
                ids.append(ast)
                mask.append(0)
                for part in m["content"]:
                    piece = encoded[k]
                    k += 1
                    kind = part["type"]
                    if kind == "text":
                        ids += piece
                        mask += [1] * len(piece)
                    elif kind == "python":
                        ids.append(ps)
                        ids += piece
                        ids.append(pe)
                        mask += [1] * (len(piece) + 2)
                    else:
                        ids.append(os_)
                        ids += piece
                        ids.append(oe)
                        mask += [0] * (len(piece) + 2)
                ids.append(aend)
                mask.append(1)
            out.append((ids, mask))
        return out

    def render_batch(self, conversations: list, normalized: bool = False,
                     sources: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
        """Render many conversations with one encode of all their text pieces.

        Args:
            conversations: raw conversations (see ``normalize_conversation``), or normalized ones
                with ``normalized=True`` (skips validation).
            sources: optional dataset label per conversation, for per-source truncation counts.

        Returns:
            one ``(input_ids, assistant_mask)`` pair of equal-length ``list[int]`` per conversation,
            at most ``max_tokens`` long; mask values are 0/1 (1 = the token is a training target).

        Raises:
            ConversationError: from ``normalize_conversation``.
        """
        convs = conversations if normalized else [normalize_conversation(c) for c in conversations]
        out = self._stitch(convs)
        if sources is None:
            return [self._truncate(ids, mask) for ids, mask in out]
        return [self._truncate(ids, mask, src) for (ids, mask), src in zip(out, sources, strict=True)]

    def _truncate(self, ids, mask, source=None):
        st = self.stats
        st.conversations += 1
        per = None
        if source is not None:
            per = st.by_source.setdefault(source, {"conversations": 0, "truncated": 0, "tokens_dropped": 0})
            per["conversations"] += 1
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            dropped = len(ids) - self.max_tokens
            st.truncated += 1
            st.tokens_dropped += dropped
            if per is not None:
                per["truncated"] += 1
                per["tokens_dropped"] += dropped
            ids, mask = ids[: self.max_tokens], mask[: self.max_tokens]
        return ids, mask

    def render(self, conversation) -> tuple[list[int], list[int]]:
        """Render one conversation: ``(input_ids, assistant_mask)``, see ``render_batch``."""
        return self.render_batch([conversation])[0]

    def render_for_completion(self, conversation, max_tokens: int | None = COMPLETION_MAX_TOKENS) -> list[int]:
        """Prompt ids for generation: drop a final assistant message, truncate, append ``<|assistant_start|>``.

        Mirrors nanochat/tokenizer.py ``render_for_completion``: the conversation without its last
        assistant message is rendered by ``render_conversation``, which keeps its first ``max_tokens``
        (2048) ids, and ``<|assistant_start|>`` is appended after that cut, so a long prompt yields
        ``max_tokens + 1`` ids. The conversation must end with a user message once a final assistant
        message is dropped. The renderer's own ``max_tokens`` (training) does not apply here.

        Args:
            conversation: a list of messages, or ``{"messages": [...]}``.
            max_tokens: keep the first this many prompt ids before ``<|assistant_start|>``; None keeps all.

        Returns:
            ``list[int]`` of at most ``max_tokens + 1`` ids, ending in the ``<|assistant_start|>`` id.

        Raises:
            ConversationError: the conversation is malformed.
        """
        msgs = conversation["messages"] if isinstance(conversation, dict) else conversation
        if not isinstance(msgs, list):
            raise ConversationError(f"expected a list of messages, got {type(msgs).__name__}")
        msgs = list(msgs)
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        # Validate with a placeholder answer, then render the prompt part only.
        conv = normalize_conversation(msgs + [{"role": "assistant", "content": ""}])[:-1]
        ids = self._stitch([conv])[0][0]
        if max_tokens is not None:
            ids = ids[:max_tokens]
        ids.append(self.ids[ASSISTANT_START])
        return ids

    def log_stats(self, name: str = "") -> None:
        """Log how many conversations were truncated (per source when known) and how many tokens that dropped."""
        st = self.stats
        prefix = f"{name}: " if name else ""
        if not st.truncated:
            logger.info("%s%d conversations rendered, none truncated (max_tokens=%s)", prefix, st.conversations,
                        self.max_tokens)
            return
        logger.warning(
            "%s%d of %d conversations truncated to max_tokens=%d (%d tokens dropped); raise `max_length` "
            "to keep them whole",
            prefix, st.truncated, st.conversations, self.max_tokens, st.tokens_dropped,
        )
        for src, per in sorted(st.by_source.items()):
            if per["truncated"]:
                logger.warning("%s  %s: %d of %d truncated (%d tokens dropped)", prefix, src, per["truncated"],
                               per["conversations"], per["tokens_dropped"])
