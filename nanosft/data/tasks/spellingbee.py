"""SpellingBee and SimpleSpelling: synthetic letter-counting tasks built from a word list.

Ported from nanochat/tasks/spellingbee.py. Example ``i`` of a split is drawn from ``random.Random(seed)``
with ``seed = i`` for train and ``i + 10_000_000`` for test, so train and test never share a draw
stream. The assistant spells the word letter by letter, counts with a running tally, double-checks
with a python tool call ``'<word>'.count('<letter>')`` and ends with ``#### <count>``: small models
cannot count letters through BPE tokens, but can learn this procedure.

Word list: ``<data_dir>/words/words_alpha.txt`` (370,098 words, dwyl/english-words); online it is
downloaded from that repository.
"""

from __future__ import annotations

import os
import random
import urllib.request

from ...errors import option
from . import DataSourceError, require_file
from .gsm8k import extract_answer

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
TEST_SEED_OFFSET = 10_000_000
SIZE = 256  # nanochat/scripts/chat_eval.py: SpellingBee(size=256, split="test")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# nanochat/tasks/spellingbee.py USER_MSG_TEMPLATES (a subset in several languages).
USER_TEMPLATES = [
    "How many {letter} are in the word {word}",
    "How many {letter} are in {word}",
    "Count the number of {letter} in {word}",
    "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}",
    "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}",
    "Count how many {letter} appear in {word}",
    "Tell me the number of {letter} in {word}",
    "How many occurrences of {letter} are in {word}",
    "Find the count of {letter} in {word}",
    "Can you count the {letter} letters in {word}",
    "How many {letter}s are in {word}",
    "¿Cuántas {letter} hay en {word}",
    "¿Cuántas veces aparece {letter} en {word}",
    "{word}中有多少个{letter}",
    "{word}里有几个{letter}",
    "{word}에 {letter}가 몇 개 있나요",
    "Combien de {letter} dans {word}",
    "Combien de fois la lettre {letter} apparaît dans {word}",
    "Wie viele {letter} sind in {word}",
    "Wie oft kommt {letter} in {word} vor",
    "{word}に{letter}は何個ありますか",
]
QUOTES = ["", "'", '"']


def load_words(data_dir: str | None = None) -> list[str]:
    """The word list, one lowercase word per line."""
    if data_dir is None:
        try:
            with urllib.request.urlopen(WORDS_URL, timeout=60) as f:
                text = f.read().decode("utf-8")
        except OSError as e:
            raise DataSourceError(f"could not download {WORDS_URL}: {e}; offline, set {option('data_dir')}") from e
    else:
        path = require_file(os.path.join(data_dir, "words", "words_alpha.txt"), f"Download it from {WORDS_URL}.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    words = [w.strip() for w in text.splitlines() if w.strip()]
    if not words:
        raise DataSourceError("the SpellingBee word list is empty")
    return words


def _seed(index: int, split: str) -> int:
    return index + (TEST_SEED_OFFSET if split == "test" else 0)


def spelling_bee_conversation(words: list[str], index: int, split: str = "train") -> list[dict]:
    """Example ``index`` of SpellingBee: how many <letter> are in <word>, answered step by step.

    Returns:
        ``[user, assistant]`` where the assistant content is a list of parts (text, python
        ``'<word>'.count('<letter>')``, python_output, text ending in ``#### <count>``).
    """
    rng = random.Random(_seed(index, split))
    word = rng.choice(words)
    letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)
    count = word.count(letter)
    template = rng.choice(USER_TEMPLATES)
    if rng.random() < 0.3:
        template = template.lower()
    lq, wq = rng.choice(QUOTES), rng.choice(QUOTES)
    user = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
    if rng.random() < 0.5:
        user += "?"
    manual = (
        f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.\n\n"
        f"First spell the word out:\n{word}:{','.join(word)}\n\nThen count the occurrences of '{letter}':\n"
    )
    running = 0
    for i, ch in enumerate(word, 1):
        if ch == letter:
            running += 1
            manual += f"{i}:{ch} hit! count={running}\n"
        else:
            manual += f"{i}:{ch}\n"
    manual += f"\nThis gives us {running}."
    parts = [
        {"type": "text", "text": manual + "\n\nLet me double check this using Python:\n\n"},
        {"type": "python", "text": f"'{word}'.count('{letter}')"},
        {"type": "python_output", "text": str(count)},
        {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
    ]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": parts}]


def simple_spelling_conversation(words: list[str], index: int, split: str = "train") -> list[dict]:
    """Example ``index`` of SimpleSpelling: "spell <word>" answered with comma-separated letters."""
    rng = random.Random(_seed(index, split) + 1)  # a different stream than SpellingBee's
    word = rng.choice(words)
    return [{"role": "user", "content": f"Spell the word: {word}"}, {"role": "assistant", "content": ",".join(word)}]


def load_conversations(
    split: str = "train", data_dir: str | None = None, size: int = 1000, kind: str = "spellingbee"
) -> list:
    """``size`` synthetic conversations of ``kind`` ("spellingbee" or "simplespelling")."""
    words = load_words(data_dir)
    make = {"spellingbee": spelling_bee_conversation, "simplespelling": simple_spelling_conversation}[kind]
    return [make(words, i, split) for i in range(size)]


def load_problems(split: str = "test", data_dir: str | None = None, size: int = SIZE) -> list[dict]:
    """Examples 0..size-1 of SpellingBee as problems ``{"messages", "reference"}`` (the ``#### N`` count)."""
    words = load_words(data_dir)
    problems = []
    for i in range(size):
        conv = spelling_bee_conversation(words, i, split)
        problems.append({"messages": conv, "reference": extract_answer(conv[-1]["content"][-1]["text"])})
    return problems
