"""Token count of configs/d20.yaml's training mixture, for sizing the prepared-data cache and its memory.

    python bench/d20_mixture.py [--data-dir ../shared/data] [--sample 2000] [--rss-bytes-per-token 3.2]

Local sources are rendered (a seeded sample of ``--sample`` conversations each, scaled to the full count).
SmolTalk and MMLU auxiliary_train are not in the offline data: their tokens are estimated from the byte
sizes their Hub dataset cards publish (``dataset_info.splits[].num_bytes``; HuggingFaceTB/smol-smoltalk
train: 1,811,694,118 bytes / 460,341 rows; cais/mmlu auxiliary_train: 161,000,625 bytes / 99,842 rows)
times the tokens per byte of rendered text measured here (GPTeacher: English chat; local MMLU test:
the same multiple-choice rendering). Prints tokens per source, the total, the cache size on disk (5 bytes
per token: int32 id + int8 mask) and the preparing process's peak memory predicted from a measured slope.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMOLTALK_BYTES, SMOLTALK_ROWS = 1_811_694_118, 460_341
MMLU_AUX_BYTES, MMLU_AUX_ROWS = 161_000_625, 99_842
MMLU_TEST_HUB_BYTES, MMLU_TEST_HUB_ROWS = 6_967_453, 14_042


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--rss-bytes-per-token", type=float, default=None,
                   help="measured peak-RSS slope of the preparing process (bench/data_scale.py)")
    p.add_argument("--rss-base-gib", type=float, default=0.5)
    args = p.parse_args()

    from nanosft.data.mixture import DatasetSpec
    from nanosft.format.template import ChatRenderer
    from nanosft.format.tokenizer import build_nanochat_tokenizer

    tok = build_nanochat_tokenizer(os.path.join(args.data_dir, "nanochat_tokenizer"))
    renderer = ChatRenderer(tok)

    def mean_tokens(spec: dict) -> tuple[float, float, int]:
        """(mean rendered tokens, rendered tokens per byte of message text, rows in one epoch)."""
        s = DatasetSpec.from_dict(spec)
        convs = s.load(args.data_dir)
        sample = random.Random(0).sample(convs, min(args.sample, len(convs)))
        out = renderer.render_batch(sample)
        tokens = sum(len(x) for x, _ in out)
        text = sum(len(json.dumps(c, ensure_ascii=False).encode()) for c in sample)
        return tokens / len(sample), tokens / text, len(convs)

    rows = []
    for spec, epochs in (({"name": "gsm8k"}, 4), ({"name": "identity"}, 2),
                         ({"name": "spellingbee", "size": 80000}, 1), ({"name": "simplespelling", "size": 200000}, 1)):
        m, _, n = mean_tokens(spec)
        rows.append((spec["name"], n * epochs, m, "rendered sample"))
    _, tpb, _ = mean_tokens({"name": "gpteacher", "subset": "roleplay"})
    rows.append(("smoltalk (estimated)", SMOLTALK_ROWS, SMOLTALK_BYTES / SMOLTALK_ROWS * tpb,
                 f"card bytes x {tpb:.3f} tokens/byte (GPTeacher)"))
    m_test, _, _ = mean_tokens({"name": "mmlu", "split": "test"})
    extra = (MMLU_AUX_BYTES / MMLU_AUX_ROWS - MMLU_TEST_HUB_BYTES / MMLU_TEST_HUB_ROWS) * tpb
    rows.append(("mmlu auxiliary_train x3 (est.)", 3 * MMLU_AUX_ROWS, m_test + extra,
                 f"local test mean {m_test:.0f} + extra card bytes/row x tokens/byte"))
    total_convs = sum(r[1] for r in rows)
    total = sum(r[1] * r[2] for r in rows)
    print(f"{'source':<32} {'conversations':>13} {'mean tok':>9} {'tokens':>14}  how")
    for name, n, m, how in rows:
        print(f"{name:<32} {n:>13,} {m:>9.1f} {n * m:>14,.0f}  {how}")
    print(f"{'total':<32} {total_convs:>13,} {total / total_convs:>9.1f} {total:>14,.0f}")
    print(f"cache on disk: {5 * total / 2**30:.2f} GiB (int32 ids + int8 masks, + row offsets)")
    if args.rss_bytes_per_token is not None:
        rss = args.rss_base_gib + args.rss_bytes_per_token * total / 2**30
        print(f"preparing process peak RSS ~ {args.rss_base_gib} GiB + {args.rss_bytes_per_token} B/token x "
              f"{total / 1e6:.0f}M tokens = {rss:.2f} GiB")


if __name__ == "__main__":
    main()
