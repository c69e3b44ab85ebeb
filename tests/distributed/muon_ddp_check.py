"""2-process check of MuonAdamW's distributed step (gloo, CPU). Run by tests/test_muon.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/muon_ddp_check.py

3 steps, every rank on its own half of the batch, the model wrapped in torch DDP (gradients all-reduced
by DDP, as under accelerate). Each rank orthogonalizes its share of the matrices and all-gathers. Every rank
compares its parameters with a single-process run on the whole batch: max |diff| < 1e-5.
Prints MUON_DDP_OK on rank 0 when everything holds.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import NanoChatConfig, NanoChatForCausalLM

from nanosft.optim.muon import build_optimizer

STEPS, TOL = 3, 1e-5


def make_model():
    torch.manual_seed(0)
    return NanoChatForCausalLM(NanoChatConfig(
        vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=None))


def batches():
    g = torch.Generator().manual_seed(123)
    return [torch.randint(0, 512, (4, 16), generator=g) for _ in range(STEPS)]


def run(mode: str, rank: int, world: int) -> float:
    data = batches()
    ref = make_model()
    ref_opt = build_optimizer(ref, shard_orthogonalization=False, momentum_warmup_steps=2)
    model = make_model()
    net = DDP(model)
    opt = build_optimizer(model, momentum_warmup_steps=2)
    worst = 0.0
    for x in data:
        ref(input_ids=x, labels=x).loss.backward()  # whole batch, one process
        ref_opt.step()
        ref_opt.zero_grad()
        xs = x.chunk(world)[rank]  # this rank's half
        net(input_ids=xs, labels=xs).loss.backward()
        opt.step()
        opt.zero_grad()
        for p, q in zip(model.parameters(), ref.parameters()):
            worst = max(worst, (p.detach() - q.detach()).abs().max().item())
    expected = STEPS * 6  # 12 matrices a step, split in two
    assert opt.orthogonalized == expected, (mode, rank, opt.orthogonalized)
    assert ref_opt.orthogonalized == STEPS * 12
    return worst


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, "run with --nproc_per_node 2"
    ok = True
    for mode in ("ddp",):
        worst = run(mode, rank, world)
        print(f"rank {rank} {mode}: max |param diff| vs 1 process after {STEPS} steps = {worst:.2e}", flush=True)
        ok &= worst < TOL
    flags = torch.tensor([float(ok)])
    dist.all_reduce(flags)
    dist.destroy_process_group()
    if flags.item() < world:
        sys.exit(1)
    if rank == 0:
        print("MUON_DDP_OK", flush=True)


if __name__ == "__main__":
    main()
