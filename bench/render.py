"""Chat rendering speed: nanosft's direct renderer vs TRL's jinja + assistant-mask tokenization.

    python bench/render.py [--data-dir ../shared/data] [--n 10000] [--repeats 2]

Both sides get the same ``--n`` real conversations (GSM8K train with calculator tool calls, nanochat
identity, GPTeacher codegen/roleplay/toolformer, SpellingBee), in one process, one after the other:

- direct: ``ChatRenderer.render_batch`` (validation + normalization + one batched Rust encode per
  1,000 conversations + stitching), as ``nanosft.data.mixture.render_dataset`` calls it for training.
- TRL: what ``SFTTrainer._prepare_dataset`` does per example for a conversational dataset with
  ``assistant_only_loss=True``: ``trl.data_utils._tokenize`` -> ``tokenizer.apply_chat_template(messages,
  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)`` with the same chat template
  (``nanosft.format.tokenizer.CHAT_TEMPLATE``), without the ``datasets.map`` overhead around it.

It checks that both give the same ids (and masks) on every conversation, then prints conversations/s
for each and the ratio (goal: direct >= 3x TRL). Measured here (2 shared cores, one thread each):
direct 9,808 conv/s, TRL 2,433 conv/s, 4.0x (tokenizers backend: 1.2x). Timings are the best of ``--repeats`` rounds, the
paths interleaved within each round (this machine's load drifts). A third row times the renderer
with the ``tokenizers`` backend instead of tiktoken, to show where the speed comes from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One thread everywhere (set TOKENIZERS_PARALLELISM=true to let encode_batch use Rayon threads).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from nanosft.data.mixture import DatasetSpec
from nanosft.format.template import ChatRenderer
from nanosft.format.tokenizer import build_nanochat_tokenizer

# Shares of the mix; GPTeacher subsets and identity are capped by their size.
MIX = [
    {"name": "gsm8k", "max_rows": 5000},
    {"name": "identity", "max_rows": 962},
    {"name": "gpteacher", "subset": "codegen", "max_rows": 1000},
    {"name": "gpteacher", "subset": "roleplay", "max_rows": 500},
    {"name": "gpteacher", "subset": "toolformer", "max_rows": 1038},
    {"name": "spellingbee", "size": 1500},
]


def load_conversations(data_dir: str, n: int) -> list:
    """``n`` raw conversations of the mix, in a fixed interleaved order (no shuffle needed for timing)."""
    convs = []
    for d in MIX:
        convs += DatasetSpec.from_dict(d).load(data_dir)
    convs = convs[:n]
    if len(convs) < n:
        raise SystemExit(f"only {len(convs)} conversations available, asked for {n}")
    return convs


def trl_tokenize_fn():
    """The per-example call TRL 1.16's SFTTrainer makes (``trl.data_utils._tokenize``), or its equivalent."""
    try:
        from trl.data_utils import _tokenize
    except ImportError:  # other TRL versions: the same call, spelled out
        def _tokenize(tok, messages, **kw):
            return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return _tokenize


def time_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over ``repeats`` rounds, run round-robin so load drifts hit all alike."""
    best = {k: float("inf") for k in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def main(argv=None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.path.join(here, "..", "shared", "data"))
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1000, help="conversations per render_batch call (data.py: 1000)")
    args = p.parse_args(argv)

    tok = build_nanochat_tokenizer(os.path.join(args.data_dir, "nanochat_tokenizer"))
    convs = load_conversations(args.data_dir, args.n)
    renderer = ChatRenderer(tok)
    tokenize = trl_tokenize_fn()

    hf_renderer = ChatRenderer(tok, backend="tokenizers")

    def direct(r=renderer):
        out = []
        for i in range(0, len(convs), args.chunk):
            out += r.render_batch(convs[i : i + args.chunk])
        return out

    def trl():
        return [tokenize(tok, c, return_assistant_tokens_mask=True, chat_template=None, tools=None) for c in convs]

    names = {
        "direct": f"direct  ChatRenderer ({renderer.backend})",
        "direct_hf": "direct  ChatRenderer (tokenizers backend)",
        "trl": "TRL     jinja + return_assistant_tokens_mask",
    }
    times, outs = time_interleaved({"direct": direct, "direct_hf": lambda: direct(hf_renderer), "trl": trl},
                                   args.repeats)
    ours, theirs = outs["direct"], outs["trl"]
    same_ids = sum(a[0] == b["input_ids"] for a, b in zip(ours, theirs))
    same_mask = sum(a[1] == b["assistant_masks"] for a, b in zip(ours, theirs))
    same_backends = sum(a == b for a, b in zip(ours, outs["direct_hf"]))
    tokens = sum(len(a[0]) for a in ours)
    supervised = sum(sum(a[1]) for a in ours)

    print(f"{len(convs)} conversations, {tokens} tokens ({100 * supervised / tokens:.1f}% supervised), "
          f"best of {args.repeats} interleaved rounds, 1 process, 1 thread for tiktoken, "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")
    print(f"direct vs TRL: identical input_ids {same_ids}/{len(convs)}, identical assistant masks "
          f"{same_mask}/{len(convs)}; tiktoken vs tokenizers backend identical {same_backends}/{len(convs)}")
    print(f"{'path':<46} {'seconds':>8} {'conv/s':>9} {'tokens/s':>10}")
    for key, label in names.items():
        t = times[key]
        print(f"{label:<46} {t:8.2f} {len(convs) / t:9.0f} {tokens / t:10.0f}")
    print(f"speedup direct / TRL: {times['trl'] / times['direct']:.1f}x "
          f"(tokenizers backend: {times['trl'] / times['direct_hf']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
