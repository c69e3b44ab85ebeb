"""Optimizer step time and optimizer-state memory: MuonAdamW vs AdamW, d12 and d20 shapes, one process.

    python bench/muon.py [--depths 12 20] [--layers 2] [--repeats 3]

To run in a few minutes on CPU it times ``--layers`` transformer blocks (nanochat shapes:
q/k/v/o d x d, fc1 4d x d, fc2 d x 4d) plus the 65,536 x d embedding and lm_head, with fixed
random gradients, and projects the full depth as embeddings + depth x one block (both measured
separately). Both optimizers come from ``nanosft.muon.build_optimizer`` with the same groups.
"Muon bf16" runs the orthogonalization matmuls in bf16 (nanochat's GPU setting).
"""

import argparse
import statistics
import time

import torch
from torch import nn

from nanosft.muon import build_optimizer

VOCAB = 65536
DEPTH_TO_DIM = {12: 768, 20: 1280}  # nanochat: d_model = 64 * depth


class Blocks(nn.Module):
    """Parameter layout of NanoChat (embed_tokens, layers.N.{q,k,v,o}_proj / fc1 / fc2, lm_head)."""

    def __init__(self, d: int, layers: int, vocab: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d) if vocab else None
        self.layers = nn.ModuleList(nn.ModuleDict({
            "q_proj": nn.Linear(d, d, bias=False), "k_proj": nn.Linear(d, d, bias=False),
            "v_proj": nn.Linear(d, d, bias=False), "o_proj": nn.Linear(d, d, bias=False),
            "fc1": nn.Linear(d, 4 * d, bias=False), "fc2": nn.Linear(4 * d, d, bias=False),
        }) for _ in range(layers))
        self.lm_head = nn.Linear(d, vocab, bias=False) if vocab else None

    def get_output_embeddings(self):
        return self.lm_head


def time_step(model: nn.Module, d: int, repeats: int, **kwargs) -> tuple[float, int]:
    """Median ms of optimizer.step() after one warm-up step, and optimizer-state bytes."""
    opt = build_optimizer(model, d_model=d, momentum_warmup_steps=0, **kwargs)
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t))
    return statistics.median(times), state_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 20])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {"AdamW": dict(optimizer="adamw"), "Muon fp32": dict(optimizer="muon"),
                "Muon bf16": dict(optimizer="muon", compute_dtype=torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"timed: {args.layers} blocks + embeddings (vocab {VOCAB}); full depth projected")
    header = f"{'model':6} {'optimizer':10} {'step ms (timed)':>16} {'block ms':>9} {'emb ms':>8} " \
             f"{'full-depth ms':>14} {'x AdamW':>8} {'state MB (full)':>16}"
    print(header)
    print("-" * len(header))
    for depth in args.depths:
        d = DEPTH_TO_DIM[depth]
        rows = {}
        for name, kw in variants.items():
            timed, _ = time_step(Blocks(d, args.layers, VOCAB), d, args.repeats, **kw)
            block_ms, block_bytes = time_step(Blocks(d, 1, 0), d, args.repeats, **kw)
            emb_ms, emb_bytes = time_step(Blocks(d, 0, VOCAB), d, args.repeats, **kw)
            rows[name] = (timed, block_ms, emb_ms, emb_ms + depth * block_ms, emb_bytes + depth * block_bytes)
        for name, (timed, block_ms, emb_ms, full_ms, full_bytes) in rows.items():
            ratio = full_ms / rows["AdamW"][3]
            print(f"d{depth:<5} {name:10} {timed:16.0f} {block_ms:9.0f} {emb_ms:8.0f} {full_ms:14.0f} "
                  f"{ratio:8.2f} {full_bytes / 2**20:16.0f}")


if __name__ == "__main__":
    main()
