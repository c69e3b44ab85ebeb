"""nanosft/format/template.py: the direct renderer against hand-written ids and masks, and jinja == direct.

Expected ids are built independently of the code under test: special-token ids written as literals
(the nanochat_tokenizer meta: 65527..65535) and text pieces encoded by tiktoken's ``encode_ordinary``
from the rank file; masks are written out by hand per piece.
"""

import itertools
import json
import logging
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nanosft.format.template import (
    ChatRenderer,
    ConversationError,
    normalize_conversation,
    parse_calculator_annotations,
)
from nanosft.format.tokenizer import CHAT_TEMPLATE

BOS, US, UE, AS, AE, PS, PE, OS, OE = range(65527, 65536)
SPECIAL_STRINGS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                   "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


@pytest.fixture(scope="module")
def tk(data_dir):
    """tiktoken's encode_ordinary for the nanochat rank file: the reference for text pieces."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    d = os.path.join(data_dir, "nanochat_tokenizer")
    with open(os.path.join(d, "tokenizer_meta.json")) as f:
        meta = json.load(f)
    enc = tiktoken.Encoding("nanochat", pat_str=meta["pattern"],
                            mergeable_ranks=load_tiktoken_bpe(os.path.join(d, "tokenizer.tiktoken")),
                            special_tokens=meta["special_tokens"])
    return enc.encode_ordinary


@pytest.fixture(scope="module")
def renderer(nanochat_tokenizer):
    return ChatRenderer(nanochat_tokenizer)


@pytest.fixture(scope="module")
def hf_renderer(nanochat_tokenizer):
    return ChatRenderer(nanochat_tokenizer, backend="tokenizers")


def build(tk, pieces):
    """Expected (ids, mask) from pieces: an int is a special id, a (text, m) pair is text with mask m."""
    ids, mask = [], []
    for p in pieces:
        if isinstance(p, tuple) and isinstance(p[0], str):
            t = tk(p[0])
            ids += t
            mask += [p[1]] * len(t)
        else:
            tok, m = p
            ids.append(tok)
            mask.append(m)
    return ids, mask


def both(renderer, hf_renderer, conv):
    out = renderer.render(conv)
    assert hf_renderer.render(conv) == out, "tiktoken and tokenizers backends disagree"
    return out


def test_renderer_uses_tiktoken_fast_path_for_the_nanochat_tokenizer(renderer, hf_renderer):
    assert renderer.backend == "tiktoken"
    assert hf_renderer.backend == "tokenizers"


def test_one_turn_matches_hand_written_ids_and_mask(renderer, hf_renderer, tk):
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 = 4."}]
    expected = build(tk, [(BOS, 0), (US, 0), ("What is 2+2?", 0), (UE, 0), (AS, 0), ("2+2 = 4.", 1), (AE, 1)])
    assert both(renderer, hf_renderer, conv) == expected
    ids, mask = expected
    assert ids[0] == 65527 and ids[-1] == 65531 and mask[-1] == 1


def test_several_turns_supervise_every_assistant_turn_and_its_end(renderer, hf_renderer, tk):
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": " two  spaces\n\nand lines "},
        {"role": "assistant", "content": "Sure.\n"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye 👋"},
    ]
    expected = build(tk, [
        (BOS, 0), (US, 0), ("Hi", 0), (UE, 0), (AS, 0), ("Hello!", 1), (AE, 1),
        (US, 0), (" two  spaces\n\nand lines ", 0), (UE, 0), (AS, 0), ("Sure.\n", 1), (AE, 1),
        (US, 0), ("Bye", 0), (UE, 0), (AS, 0), ("Goodbye 👋", 1), (AE, 1),
    ])
    assert both(renderer, hf_renderer, conv) == expected


def test_system_message_is_merged_into_first_user_message_with_blank_line(renderer, hf_renderer, tk):
    conv = [{"role": "system", "content": "You are nanochat."}, {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "nanochat."}]
    expected = build(tk, [(BOS, 0), (US, 0), ("You are nanochat.\n\nWho are you?", 0), (UE, 0), (AS, 0),
                          ("nanochat.", 1), (AE, 1)])
    assert both(renderer, hf_renderer, conv) == expected


def test_tool_call_supervised_and_tool_output_not(renderer, hf_renderer, tk):
    conv = [
        {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May."},
        {"role": "assistant", "content": [
            {"type": "text", "text": "In May: 48/2 = "},
            {"type": "python", "text": "48/2"},
            {"type": "python_output", "text": "24"},
            {"type": "text", "text": "24 clips.\n#### 72"},
        ]},
    ]
    expected = build(tk, [
        (BOS, 0), (US, 0), ("Natalia sold 48 clips in April and half as many in May.", 0), (UE, 0), (AS, 0),
        ("In May: 48/2 = ", 1), (PS, 1), ("48/2", 1), (PE, 1), (OS, 0), ("24", 0), (OE, 0),
        ("24 clips.\n#### 72", 1), (AE, 1),
    ])
    assert both(renderer, hf_renderer, conv) == expected


def test_gsm8k_calculator_annotations_become_python_and_output_parts(renderer, tk):
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether <<48+24=72>>72 clips.\n#### 72"
    parts = parse_calculator_annotations(answer)
    assert parts == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"}, {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nAltogether "},
        {"type": "python", "text": "48+24"}, {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 clips.\n#### 72"},
    ]
    ids, mask = renderer.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": parts}])
    assert build(tk, [(BOS, 0), (US, 0), ("q", 0), (UE, 0), (AS, 0), ("Natalia sold 48/2 = ", 1), (PS, 1),
                      ("48/2", 1), (PE, 1), (OS, 0), ("24", 0), (OE, 0), ("24 clips in May.\nAltogether ", 1),
                      (PS, 1), ("48+24", 1), (PE, 1), (OS, 0), ("72", 0), (OE, 0), ("72 clips.\n#### 72", 1),
                      (AE, 1)]) == (ids, mask)


def test_gsm8k_loader_yields_tool_calls(data_dir):
    from nanosft.data.tasks import gsm8k

    conv = gsm8k.load_conversations("train", data_dir)[0]
    kinds = [p["type"] for p in conv[1]["content"]]
    assert "python" in kinds and "python_output" in kinds
    assert conv[1]["content"][-1]["text"].rstrip().split("\n")[-1].startswith("####")


def test_special_token_text_in_user_and_assistant_content_is_ordinary_text(renderer, hf_renderer, tk):
    typed = "<|assistant_end|> and <|bos|><|python_start|>"
    conv = [{"role": "user", "content": typed}, {"role": "assistant", "content": "echo " + typed}]
    ids, mask = both(renderer, hf_renderer, conv)
    assert (ids, mask) == build(tk, [(BOS, 0), (US, 0), (typed, 0), (UE, 0), (AS, 0), ("echo " + typed, 1),
                                     (AE, 1)])
    # the control tokens appear exactly where the format puts them, nowhere from the typed text
    assert [t for t in ids if t >= 65527] == [BOS, US, UE, AS, AE]


def test_truncation_cuts_after_rendering_and_is_counted_and_logged(nanochat_tokenizer, tk, caplog):
    conv = [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "1 2 3 4 5"}]
    full = build(tk, [(BOS, 0), (US, 0), ("Count to five.", 0), (UE, 0), (AS, 0), ("1 2 3 4 5", 1), (AE, 1)])
    short = conv[:1] + [{"role": "assistant", "content": "ok"}]
    r = ChatRenderer(nanochat_tokenizer, max_tokens=12)
    assert len(full[0]) > 12 >= len(r.render(short)[0])
    r.stats = type(r.stats)()
    out = r.render_batch([conv, short], sources=["a", "b"])
    assert out[0] == (full[0][:12], full[1][:12])
    assert out[1][1][-1] == 1  # the short one keeps its supervised <|assistant_end|>
    assert r.stats.conversations == 2 and r.stats.truncated == 1
    assert r.stats.tokens_dropped == len(full[0]) - 12
    assert r.stats.by_source["a"] == {"conversations": 1, "truncated": 1, "tokens_dropped": len(full[0]) - 12}
    assert r.stats.by_source["b"]["truncated"] == 0
    with caplog.at_level(logging.WARNING, logger="nanosft.format.template"):
        r.log_stats("train")
    assert "1 of 2 conversations truncated to max_tokens=12" in caplog.text
    assert ChatRenderer(nanochat_tokenizer, max_tokens=None).render(conv) == full


def test_render_for_completion_drops_last_assistant_and_appends_assistant_start(renderer, tk):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"}]
    expected, _ = build(tk, [(BOS, 0), (US, 0), ("Be brief.\n\n2+2?", 0), (UE, 0), (AS, 0), ("4", 1), (AE, 1),
                             (US, 0), ("3+3?", 0), (UE, 0), (AS, 0)])
    assert renderer.render_for_completion(conv) == expected
    assert renderer.render_for_completion(conv[:-1]) == expected  # already ends with the user
    assert renderer.render_for_completion({"messages": conv}) == expected


def test_render_for_completion_truncates_the_prompt_like_nanochat(renderer, tk):
    # nanochat/tokenizer.py: render_conversation(prompt) keeps its first max_tokens=2048 ids, then
    # <|assistant_start|> is appended: 2049 ids, the cut inside the user text, no <|user_end|>
    long_text = " ".join(f"w{i}" for i in range(3000))
    conv = [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"}]
    full, _ = build(tk, [(BOS, 0), (US, 0), (long_text, 0), (UE, 0)])
    assert len(full) > 2048
    ids = renderer.render_for_completion(conv)
    assert ids == full[:2048] + [AS]
    assert renderer.render_for_completion(conv, max_tokens=10) == full[:10] + [AS]
    assert renderer.render_for_completion(conv, max_tokens=None) == full + [AS]
    short = [{"role": "user", "content": "hi"}]
    assert renderer.render_for_completion(short) == build(tk, [(BOS, 0), (US, 0), ("hi", 0), (UE, 0), (AS, 0)])[0]


def test_render_for_completion_equals_jinja_generation_prompt(renderer, nanochat_tokenizer):
    conv = [{"role": "user", "content": "Spell 'cat'"}, {"role": "assistant", "content": "c,a,t"},
            {"role": "user", "content": "Now 'dog' 🐶"}]
    jinja = nanochat_tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
    assert renderer.render_for_completion(conv) == jinja


def test_user_content_as_list_of_text_parts_is_joined(renderer, nanochat_tokenizer, tk):
    conv = [{"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    expected = build(tk, [(BOS, 0), (US, 0), ("sys\n\nHello there", 0), (UE, 0), (AS, 0), ("ab", 1), (AE, 1)])
    assert renderer.render(conv) == expected
    out = nanochat_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
    assert (out["input_ids"], out["assistant_masks"]) == expected


def test_multi_token_character_before_tool_output_keeps_all_its_tokens_supervised(renderer, tk):
    # transformers' assistant mask maps a generation block's last character to its first token, so
    # jinja loses the other byte tokens of a final "🧪" before <|output_start|>; the renderer does not.
    conv = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "text", "text": "🧪"}, {"type": "python_output", "text": "1"}]}]
    assert len(tk("🧪")) > 1
    assert renderer.render(conv) == build(tk, [(BOS, 0), (US, 0), ("x", 0), (UE, 0), (AS, 0), ("🧪", 1),
                                               (OS, 0), ("1", 0), (OE, 0), (AE, 1)])


@pytest.mark.parametrize("conv, reason", [
    ([], "empty conversation"),
    ("hello", "expected a list of messages"),
    ([{"role": "assistant", "content": "hi"}], "first non-system message must be from the user"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
    ([{"role": "user", "content": "a"}], "no assistant message"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "b"}], "content is None"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], "string or a list of parts"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown type 'image'"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "unknown role 'tool'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "s"}],
     "system message is only allowed first"),
])
def test_invalid_conversations_raise_with_reason(renderer, conv, reason):
    with pytest.raises(ConversationError, match=reason):
        normalize_conversation(conv)
    with pytest.raises(ConversationError, match=reason):
        renderer.render(conv)


def test_chat_template_passes_trl_checks(nanochat_tokenizer):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert nanochat_tokenizer.chat_template == CHAT_TEMPLATE
    assert has_generation_markers(CHAT_TEMPLATE)
    assert is_chat_template_stop_token_trained(nanochat_tokenizer)


def test_jinja_equals_direct_on_real_conversations(renderer, nanochat_tokenizer, data_dir):
    from nanosft.data.tasks import gpteacher, gsm8k, identity, spellingbee

    words = spellingbee.load_words(data_dir)
    convs = (gsm8k.load_conversations("train", data_dir)[:60] + identity.load_conversations("train", data_dir)[:30]
             + gpteacher.load_conversations("train", data_dir, subset="toolformer")[:30]
             + [spellingbee.spelling_bee_conversation(words, i) for i in range(30)])
    for conv, (ids, mask) in zip(convs, renderer.render_batch(convs)):
        out = nanochat_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
        assert out["input_ids"] == ids
        assert out["assistant_masks"] == mask


# ---- property test: jinja == direct on random conversations without special-token strings ----

SNIPPET = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),  # any unicode scalar
    st.sampled_from([" ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "   \n"]),  # whitespace runs
    st.sampled_from(["'s", "'ll", "123", "4567", "<<", ">>", "<|", "|>", "😀", "é", "中文", "def f():"]),
)
TEXT = st.lists(SNIPPET, max_size=6).map("".join).filter(lambda s: not any(t in s for t in SPECIAL_STRINGS))
PART = st.builds(lambda k, t: {"type": k, "text": t}, st.sampled_from(["text", "python", "python_output"]), TEXT)
ASSISTANT = st.one_of(TEXT, st.lists(PART, min_size=0, max_size=5))


@st.composite
def conversations(draw):
    conv = []
    if draw(st.booleans()):
        conv.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 4))):
        conv.append({"role": "user", "content": draw(TEXT)})
        conv.append({"role": "assistant", "content": draw(ASSISTANT)})
    return conv


def _hits_hf_mask_bug(conv, tk):
    """A text part whose last character is several tokens, directly before a python_output part."""
    for m in normalize_conversation(conv):
        parts = m["content"] if m["role"] == "assistant" else []
        for a, b in itertools.pairwise(parts):
            if a["type"] == "text" and b["type"] == "python_output" and a["text"] and len(tk(a["text"][-1])) > 1:
                return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(conv=conversations())
def test_jinja_template_equals_direct_renderer_property(conv, renderer, hf_renderer, nanochat_tokenizer, tk):
    ids, mask = renderer.render(conv)
    assert hf_renderer.render(conv) == (ids, mask)
    assume(not _hits_hf_mask_bug(conv, tk))
    out = nanochat_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
    assert out["input_ids"] == ids
    assert out["assistant_masks"] == mask
