"""Optimizer step time and optimizer-state memory: MuonAdamW vs AdamW, d12 and d20 shapes, one process.

    python bench/muon.py [--depths 12 20] [--layers 2] [--repeats 3]

To run in a few minutes on CPU it times ``--layers`` (2) transformer blocks (nanochat shapes:
q/k/v/o d x d, fc1 4d x d, fc2 d x 4d) plus the 65,536 x d embedding and lm_head, with fixed
random gradients, and projects the full depth as embeddings + depth x one block (both measured
separately). Both optimizers come from ``nanosft.optim.muon.build_optimizer`` with the same groups.
"Muon bf16" runs the orthogonalization matmuls in bf16 (nanochat's GPU setting).
"""

import argparse
import time

import torch
from torch import nn

from nanosft.optim.muon import build_optimizer

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


def state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def bench_part(make_model, d: int, repeats: int, variants: dict) -> dict:
    """{variant: (min ms of optimizer.step(), optimizer-state bytes)} for one parameter set.

    One model + optimizer per variant, same fixed gradients, one warm-up step each, then the
    variants are timed in turn (interleaved) so a noisy neighbour hits all of them alike;
    the minimum over repeats is the least disturbed measurement.
    """
    opts = {}
    for name, kw in variants.items():
        model = make_model()
        torch.manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opts[name] = build_optimizer(model, d_model=d, momentum_warmup_steps=0, **kw)
        opts[name].step()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: (min(times[name]), state_bytes(opts[name])) for name in variants}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 20])
    parser.add_argument("--layers", type=int, default=2, help="blocks timed together")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {"AdamW": dict(optimizer="adamw"), "Muon fp32": dict(optimizer="muon"),
                "Muon bf16": dict(optimizer="muon", compute_dtype=torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timed: {args.layers} blocks, and "
          f"embedding + lm_head (vocab {VOCAB}); full depth = embeddings + depth x one block")
    header = (f"{'model':6} {'optimizer':10} {'block ms':>9} {'emb ms':>8} {'full-depth ms':>14} "
              f"{'x AdamW':>8} {'state MB (full)':>16}")
    print(header)
    print("-" * len(header))
    for depth in args.depths:
        d = DEPTH_TO_DIM[depth]
        blocks = bench_part(lambda: Blocks(d, args.layers, 0), d, args.repeats, variants)
        emb = bench_part(lambda: Blocks(d, 0, VOCAB), d, args.repeats, variants)
        full = {name: emb[name][0] + depth * blocks[name][0] / args.layers for name in variants}
        for name in variants:
            mem = emb[name][1] + depth * blocks[name][1] / args.layers
            print(f"d{depth:<5} {name:10} {blocks[name][0] / args.layers:9.0f} {emb[name][0]:8.0f} "
                  f"{full[name]:14.0f} {full[name] / full['AdamW']:8.2f} {mem / 2**20:16.0f}", flush=True)


if __name__ == "__main__":
    main()
