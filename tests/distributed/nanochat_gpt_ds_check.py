"""2-process check of DeepSpeed ZeRO-2 (CPU, gloo) with the current nanochat GPT. Run by tests/test_nanochat_gpt.py:

    deepspeed --num_gpus 2 tests/distributed/nanochat_gpt_ds_check.py

A tiny random ``NanoChatGPTForCausalLM``. One process, no DeepSpeed: nanosft's own ``build_optimizer``
(MuonAdamW) gives each parameter name an optimizer kind (Muon or AdamW) and group. Two processes under ZeRO-2: after
``deepspeed.initialize`` and one training step, every parameter (found by name through ZeRO's
``bit16_groups``) must sit in a group of the same kind and name, and carry the same ``use_muon`` tag; wte,
value_embeds and the smear gate must be AdamW and every block matrix (ve_gate included) Muon.
Prints NANOCHAT_GPT_DS_OK on rank 0 when everything holds.
"""

import sys

import deepspeed
import torch
import torch.distributed as dist

from nanosft.models.nanochat_gpt import NanoChatGPTConfig, NanoChatGPTForCausalLM
from nanosft.optim.muon import build_optimizer, prepare_deepspeed_muon


def make_model():
    torch.manual_seed(0)
    return NanoChatGPTForCausalLM(NanoChatGPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, max_position_embeddings=64))


def kinds(groups, names_of) -> dict[str, tuple[str, bool]]:
    """parameter name -> (group name, use_muon) for ``groups`` of lists of params."""
    return {names_of[id(p)]: (g["name"], bool(g["use_muon"])) for g, ps in groups for p in ps}


def main():
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    opt = build_optimizer(model)
    names_of = {id(p): n for n, p in model.named_parameters()}
    single = {names_of[id(p)]: (g["name"], g["kind"] == "muon") for g in opt.param_groups for p in g["params"]}

    model = make_model()
    names_of = {id(p): n for n, p in model.named_parameters()}
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2 * world,
              "zero_optimization": {"stage": 2}, "gradient_clipping": "auto"}
    opt, config = prepare_deepspeed_muon(model, config)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(rank))
    loss = engine(input_ids=x, labels=x).loss
    engine.backward(loss)
    engine.step()
    zero = engine.optimizer
    zeroed = kinds(list(zip(zero.optimizer.param_groups, zero.bit16_groups)), names_of)
    tags = {n: bool(getattr(p, "use_muon", None)) for n, p in model.named_parameters()}
    ok = zeroed == single and all(tags[n] == single[n][1] for n in single) and torch.isfinite(loss).item()
    must_adamw = [n for n in single if any(k in n for k in ("embed_tokens", "value_embeds", "smear", "lambda",
                                                             "lm_head"))]
    must_muon = [n for n in single if ".layers." in n]
    ok &= all(not zeroed[n][1] for n in must_adamw) and all(zeroed[n][1] for n in must_muon)
    ok &= any("ve_gate" in n for n in must_muon) and len(zeroed) == len(list(model.parameters()))
    if rank == 0:
        for n in sorted(single):
            print(f"{n}: 1 process {single[n]}, ZeRO-2 rank 0 {zeroed.get(n)}", flush=True)
    flag = torch.tensor([float(ok)])
    dist.all_reduce(flag)
    if flag.item() < world:
        sys.exit(1)
    if rank == 0:
        print("NANOCHAT_GPT_DS_OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()  # a clean teardown: a rank exiting with the group alive can abort (SIGABRT)


if __name__ == "__main__":
    main()
