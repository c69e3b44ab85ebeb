"""2-process check of Muon under DeepSpeed ZeRO-1/2/3 on CPU (gloo). Run by tests/test_muon.py:

    deepspeed --num_gpus 2 tests/distributed/muon_ds_check.py [--stages 1 2 3]

For each stage: a tiny NanoChat, ``prepare_deepspeed_muon`` (nanochat groups, use_muon tags,
gradient_clipping 0, ZeRO-3 reduce_scatter off), 5 steps with each rank on half the batch.
Checks, per step: the loss (mean over ranks) equals a 1-process run of the same optimizer on
the whole batch within 1e-4; DeepSpeed's muon_update ran on the matrices (calls counted); and
the 5-step losses differ from an all-AdamW run (Muon changed the trajectory).
Prints MUON_DS_OK on rank 0 when everything holds.
"""

import argparse
import sys

import deepspeed
import deepspeed.runtime.zero.muon.original_muon as original_muon
import torch
import torch.distributed as dist
from transformers import NanoChatConfig, NanoChatForCausalLM

from nanosft.optim.muon import prepare_deepspeed_muon

STEPS, TOL = 5, 1e-4
CALLS = {"muon_update": 0}
_muon_update = original_muon.muon_update


def counting_muon_update(*args, **kwargs):
    CALLS["muon_update"] += 1
    return _muon_update(*args, **kwargs)


original_muon.muon_update = counting_muon_update  # ZeRO imports it at call time


def make_model():
    torch.manual_seed(0)
    return NanoChatForCausalLM(NanoChatConfig(
        vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=None))


def batches():
    g = torch.Generator().manual_seed(123)
    return [torch.randint(0, 512, (4, 16), generator=g) for _ in range(STEPS)]


def reference_losses(all_adamw: bool = False) -> list[float]:
    """One process, whole batch, no ZeRO: MuonWithAuxAdam runs Muon in its own step."""
    model = make_model()
    opt, _ = prepare_deepspeed_muon(model, {})
    if all_adamw:
        for g in opt.param_groups:
            g["use_muon"] = False
            g.setdefault("betas", (0.8, 0.95))
            g.setdefault("eps", 1e-10)
    losses = []
    for x in batches():
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def zero_losses(stage: int, rank: int, world: int) -> list[float]:
    model = make_model()
    config = {"train_micro_batch_size_per_gpu": 4 // world, "gradient_accumulation_steps": 1,
              "train_batch_size": 4, "zero_optimization": {"stage": stage}, "gradient_clipping": "auto"}
    opt, config = prepare_deepspeed_muon(model, config)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    losses = []
    for x in batches():
        xs = x.chunk(world)[rank]
        loss = engine(input_ids=xs, labels=xs).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    calls0 = CALLS["muon_update"]
    ref = reference_losses()
    ref_calls = CALLS["muon_update"] - calls0
    adamw = reference_losses(all_adamw=True)
    ok = ref_calls == STEPS * 12 and max(abs(a - b) for a, b in zip(ref, adamw)) > 1e-3
    for stage in args.stages:
        before = CALLS["muon_update"]
        got = zero_losses(stage, rank, world)
        calls = CALLS["muon_update"] - before
        worst = max(abs(a - b) for a, b in zip(got, ref))
        vs_adamw = max(abs(a - b) for a, b in zip(got, adamw))
        if rank == 0:
            print(f"ZeRO-{stage}: losses {[round(v, 5) for v in got]}; max |diff| vs 1 process {worst:.1e}; "
                  f"vs all-AdamW {vs_adamw:.1e}; muon_update calls on rank 0: {calls}", flush=True)
        ok &= worst < TOL and calls > 0 and vs_adamw > 1e-3
    flag = torch.tensor([float(ok)])
    dist.all_reduce(flag)
    if flag.item() < world:
        sys.exit(1)
    if rank == 0:
        print("MUON_DS_OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()  # a clean teardown: a rank exiting with the group alive can abort (SIGABRT)


if __name__ == "__main__":
    main()
