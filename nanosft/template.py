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

Training uses ``ChatRenderer``: it collects every text piece of a batch of conversations and encodes
them in one ``encode_batch`` call of the Rust tokenizer, ordinarily (a typed ``<|bos|>`` is text, never
the control token), then stitches ids and mask. ``bench/render.py`` measures it against TRL's jinja +
``return_assistant_tokens_mask`` path on 10,000 real conversations.

``CHAT_TEMPLATE`` is the same format in jinja with ``{% generation %}`` markers. It ships in every
checkpoint so ``apply_chat_template`` works for serving and for TRL's ``assistant_only_loss``; for any
conversation whose text holds no special-token strings it yields the same ids and mask as the renderer
(a property test pins that). Consecutive text parts of one assistant message are joined before
encoding, as jinja does.
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
    USER_END,
    USER_START,
    ordinary_encoder,
    special_token_ids,
)

logger = logging.getLogger(__name__)

PART_TYPES = ("text", "python", "python_output")

# One line, no whitespace control needed: every character is emitted on purpose.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{{- '" + BOS + "' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '" + USER_START + "' + ns.system + message['content'] + '" + USER_END + "' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT_START + "' -}}"
    "{%- if message['content'] is string -%}"
    "{% generation %}{{ message['content'] + '" + ASSISTANT_END + "' }}{% endgeneration %}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}"
    "{% generation %}{{ part['text'] }}{% endgeneration %}"
    "{%- elif part['type'] == 'python' -%}"
    "{% generation %}{{ '" + PYTHON_START + "' + part['text'] + '" + PYTHON_END + "' }}{% endgeneration %}"
    "{%- elif part['type'] == 'python_output' -%}"
    "{{- '" + OUTPUT_START + "' + part['text'] + '" + OUTPUT_END + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{% generation %}{{ '" + ASSISTANT_END + "' }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT_START + "' -}}{%- endif -%}"
)


class ConversationError(ValueError):
    """A conversation that does not follow the nanochat format; the message says why."""


def _parts(content, where: str) -> list[dict]:
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
    (nanochat/tokenizer.py). Assistant content becomes a list of ``{"type", "text"}`` parts
    (types ``text``, ``python``, ``python_output``); consecutive text parts are joined.

    Returns:
        list of ``{"role": "user", "content": str}`` / ``{"role": "assistant", "content": [parts]}``,
        strictly alternating, starting with user.

    Raises:
        ConversationError: empty conversation; unknown role; roles not alternating; first non-system
            message not from the user; no assistant message; content None or not a string / list of
            parts; unknown part type. The message says which message and why.
    """
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list) or not messages:
        raise ConversationError("empty conversation (expected a non-empty list of messages)")
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
            if not isinstance(content, str):
                raise ConversationError(f"message 0 (system): content must be a string, got {type(content).__name__}")
            system = content
            continue
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role != expected:
            if not out:
                raise ConversationError(f"message {i}: the first non-system message must be from the user, got {role}")
            raise ConversationError(f"message {i}: roles must alternate user/assistant, expected {expected}, got {role}")
        if role == "user":
            if not isinstance(content, str):
                raise ConversationError(f"message {i} (user): content must be a string, got {type(content).__name__}")
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


@dataclass
class RenderStats:
    """Counters of one renderer: conversations rendered and truncated, tokens dropped by truncation."""

    conversations: int = 0
    truncated: int = 0
    tokens_dropped: int = 0
    by_source: dict = field(default_factory=dict)


class ChatRenderer:
    """Render conversations to ``(input_ids, assistant_mask)`` in the nanochat format.

    Args:
        tokenizer: an HF fast tokenizer holding the 9 nanochat special tokens.
        max_tokens: truncate each rendered conversation to this many tokens (nanochat: 2048);
            None keeps everything. Truncations are counted in ``self.stats`` and logged.

    Raises:
        ValueError: the tokenizer lacks a nanochat special token.
    """

    def __init__(self, tokenizer, max_tokens: int | None = None):
        self.ids = special_token_ids(tokenizer)
        self.encoder = ordinary_encoder(tokenizer)
        self.max_tokens = max_tokens
        self.stats = RenderStats()

    def _plan(self, conv: list[dict], texts: list[str]) -> list:
        """Flatten one normalized conversation into (special id | text index, mask) steps."""
        s = self.ids
        plan = [(s[BOS], 0)]
        for m in conv:
            if m["role"] == "user":
                texts.append(m["content"])
                plan += [(s[USER_START], 0), (len(texts) - 1, -1), (s[USER_END], 0)]
                continue
            plan.append((s[ASSISTANT_START], 0))
            for part in m["content"]:
                texts.append(part["text"])
                ref = (len(texts) - 1, -1)
                if part["type"] == "text":
                    plan.append((len(texts) - 1, -2))
                elif part["type"] == "python":
                    plan += [(s[PYTHON_START], 1), (len(texts) - 1, -2), (s[PYTHON_END], 1)]
                else:
                    plan += [(s[OUTPUT_START], 0), ref, (s[OUTPUT_END], 0)]
            plan.append((s[ASSISTANT_END], 1))
        return plan

    def render_batch(self, conversations: list, normalized: bool = False) -> list[tuple[list[int], list[int]]]:
        """Render many conversations with one batched encode.

        Args:
            conversations: raw conversations (see ``normalize_conversation``), or normalized ones
                with ``normalized=True``.

        Returns:
            one ``(input_ids, assistant_mask)`` pair of equal-length ``list[int]`` per conversation;
            mask values are 0/1.

        Raises:
            ConversationError: from ``normalize_conversation``.
        """
        texts: list[str] = []
        plans = [self._plan(c if normalized else normalize_conversation(c), texts) for c in conversations]
        encoded = [e.ids for e in self.encoder.encode_batch(texts, add_special_tokens=False)] if texts else []
        out = []
        for plan in plans:
            ids: list[int] = []
            mask: list[int] = []
            for value, m in plan:
                if m >= 0:
                    ids.append(value)
                    mask.append(m)
                else:
                    piece = encoded[value]
                    ids += piece
                    mask += [1 if m == -2 else 0] * len(piece)
            out.append(self._truncate(ids, mask))
        return out

    def _truncate(self, ids, mask):
        self.stats.conversations += 1
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            self.stats.truncated += 1
            self.stats.tokens_dropped += len(ids) - self.max_tokens
            ids, mask = ids[: self.max_tokens], mask[: self.max_tokens]
        return ids, mask

    def render(self, conversation) -> tuple[list[int], list[int]]:
        """Render one conversation: ``(input_ids, assistant_mask)``, see ``render_batch``."""
        return self.render_batch([conversation])[0]

    def render_for_completion(self, conversation) -> list[int]:
        """Prompt ids for generation: drop a final assistant message, append ``<|assistant_start|>``.

        The conversation must end with a user message once the last assistant message is dropped
        (nanochat/tokenizer.py ``render_for_completion``). Not truncated.

        Raises:
            ConversationError: the conversation is malformed.
        """
        msgs = conversation["messages"] if isinstance(conversation, dict) else conversation
        msgs = list(msgs)
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        # Validate with a placeholder answer, then render the prompt part only.
        conv = normalize_conversation(msgs + [{"role": "assistant", "content": ""}])[:-1]
        texts: list[str] = []
        plan = self._plan(conv, texts)
        encoded = [e.ids for e in self.encoder.encode_batch(texts, add_special_tokens=False)] if texts else []
        ids = []
        for value, m in plan:
            ids.extend([value] if m >= 0 else encoded[value])
        ids.append(self.ids[ASSISTANT_START])
        return ids

    def log_stats(self, name: str = "") -> None:
        """Log how many conversations were truncated and how many tokens that dropped."""
        st = self.stats
        if st.truncated:
            logger.warning(
                "%s%d of %d conversations truncated to max_tokens=%d (%d tokens dropped); raise `max_seq_length` "
                "to keep them whole",
                f"{name}: " if name else "",
                st.truncated,
                st.conversations,
                self.max_tokens,
                st.tokens_dropped,
            )
