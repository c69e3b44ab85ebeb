"""SFT throughput, MFU and peak memory of the current nanochat GPT on one GPU (sdpa vs flash attention).

    python bench/gpu.py                      # d20 shape, bf16, B = 8/16/32, T = 2048 (needs a GPU)
    python bench/gpu.py --tiny               # CPU smoke run: depth 2, d_model 128, T 256, B = 2/4

Model: ``NanoChatGPTForCausalLM`` with nanochat's d20 shape (depth 20, d_model 1280, 10 heads of 128, window
SSSL, vocab 32,768), random weights in bf16. Each step is what ``NanoSFTTrainer`` does: packed rows of random
"conversations" (document attention: positions restart per conversation), logits only at the supervised
positions (a boolean ``logits_to_keep``, ~58% of tokens as in nanochat's SFT mix), cross entropy, backward,
one MuonAdamW step. Prints per attention implementation and batch size: supervised tokens/s, MFU (training
FLOPs per token from ``NanoChatGPTForCausalLM.estimate_flops_per_token`` x tokens/s / the GPU's dense bf16
peak) and peak memory; then the max |logit| difference of flash (or sdpa on CPU) against eager in bf16.
The first ``--warmup`` steps are not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# dense bf16 peak FLOP/s by device name substring (NVIDIA datasheets: H100/H200 SXM 989 TFLOP/s, A100 312)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
SUPERVISED_FRACTION = 0.58  # share of SFT tokens that are assistant tokens in nanochat's mix (README)


def make_model(tiny: bool):
    import torch

    from nanosft.models.nanochat_gpt import NanoChatGPTConfig, NanoChatGPTForCausalLM

    if tiny:
        config = NanoChatGPTConfig(vocab_size=2048, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=256)
    else:  # nanochat d20: d_model = 64 * depth, head_dim 128
        config = NanoChatGPTConfig(vocab_size=32768, hidden_size=1280, num_hidden_layers=20, num_attention_heads=10,
                                   max_position_embeddings=2048)
    torch.manual_seed(0)
    return NanoChatGPTForCausalLM(config)


def batch(B: int, T: int, vocab: int, device, seed: int):
    """Packed rows: input_ids/position_ids [B, T], labels [B, T] (-100 off the supervised positions)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    pos = torch.empty(B, T, dtype=torch.long)
    for b in range(B):
        t = 0
        while t < T:
            n = min(int(torch.randint(T // 8, T // 2, (1,), generator=g)), T - t)
            pos[b, t:t + n] = torch.arange(n)
            t += n
    labels = torch.where(torch.rand(B, T, generator=g) < SUPERVISED_FRACTION, ids.roll(-1, 1), -100)
    return ids.to(device), pos.to(device), labels.to(device)


def train_step(model, optimizer, ids, pos, labels):
    import torch.nn.functional as F

    if "flash" in model.config._attn_implementation:  # as NanoSFTTrainer: one [1, B*T] row, packing from positions
        ids, pos, labels = ids.reshape(1, -1), pos.reshape(1, -1), labels.reshape(1, -1)
    keep = labels != -100
    logits = model(input_ids=ids, position_ids=pos, logits_to_keep=keep, use_cache=False).logits
    loss = F.cross_entropy(logits, labels[keep])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke shape (depth 2, d_model 128, T 256)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 8 16 32 (tiny: 2 4)")
    p.add_argument("--seq-len", type=int, default=None, help="T (default 2048; tiny 256)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    import torch

    from nanosft.optim.muon import build_optimizer

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    T = args.seq_len or (256 if args.tiny else 2048)
    sizes = args.batch_sizes or ([2, 4] if args.tiny else [8, 16, 32])
    impls = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        print("flash_attn not installed: flash attention skipped")
    if not cuda:
        impls = [i for i in impls if i == "sdpa"]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    base = make_model(args.tiny)
    flops = base.estimate_flops_per_token(T)
    print(f"device {name}; model {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params, "
          f"{flops / 1e9:.2f} GFLOP/token (training) at T={T}; bf16")
    print(f"{'attention':<18} {'B':>3} {'sup tok/s':>12} {'MFU':>7} {'peak GB':>8} {'loss':>7}")
    for impl in impls:
        for B in sizes:
            model = make_model(args.tiny).to(device=device, dtype=dtype)
            model.set_attn_implementation(impl)
            model.train()
            optimizer = build_optimizer(model)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                data = [batch(B, T, model.config.vocab_size, device, s) for s in range(args.warmup + args.steps)]
                for ids, pos, labels in data[:args.warmup]:
                    train_step(model, optimizer, ids, pos, labels)
                if cuda:
                    torch.cuda.synchronize()
                t0, sup = time.perf_counter(), 0
                for ids, pos, labels in data[args.warmup:]:
                    loss = train_step(model, optimizer, ids, pos, labels)
                    sup += int((labels != -100).sum())
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                print(f"{impl:<18} {B:>3} {'OOM':>12}")
                continue
            tokens = args.steps * B * T
            mfu = f"{100 * flops * tokens / dt / peak:6.1f}%" if peak else "    n/a"
            mem = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
            print(f"{impl:<18} {B:>3} {sup / dt:>12,.0f} {mfu:>7} {mem:>8.1f} {loss.item():>7.3f}")
            del model, optimizer
    # logits of the same weights and rows, bf16: each fast path against eager
    ref = base.to(device=device, dtype=dtype).eval()
    ids, pos, _ = batch(2, T, ref.config.vocab_size, device, 99)
    with torch.no_grad():
        ref.set_attn_implementation("eager")
        eager = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
        for impl in impls:
            ref.set_attn_implementation(impl)
            diff = (ref(input_ids=ids, position_ids=pos, use_cache=False).logits - eager).abs().max().item()
            print(f"max |logit({impl}) - logit(eager)| in bf16: {diff:.4f} (logits within +-15)")


if __name__ == "__main__":
    main()
