"""Run under `accelerate launch --multi_gpu --num_processes 2`: ChatCORE and bits per byte share the work.

Checks, on every rank: each rank evaluated a disjoint share (sizes sum to the total), the gathered
totals equal a single-process evaluation of all problems, and both ranks return identical results.
Then ``BitsPerByteCallback`` runs 3 of 5 validation batches on rank 0 and 2 on rank 1, and its value
equals every batch evaluated on every rank. Prints CHATCORE_DISTRIBUTED_OK and BPB_DISTRIBUTED_OK once per rank.
"""

import json
import os

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import NanoChatConfig, NanoChatForCausalLM

from nanosft.eval import chatcore
from nanosft.format.tokenizer import build_nanochat_tokenizer

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "nanosft", "resources", "data")  # embedded


def main():
    state = PartialState(cpu=True)  # CPU-only: gloo (MULTI_CPU)
    assert state.num_processes == 2, state
    tokenizer = build_nanochat_tokenizer(f"{DATA}/nanochat_tokenizer")
    torch.manual_seed(0)  # the same weights on both ranks
    cfg = NanoChatConfig(
        vocab_size=65536,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=None,
        initializer_range=1.0,
    )
    model = NanoChatForCausalLM(cfg).eval()
    problems = {
        "ARC-Easy": chatcore.load_problems("ARC-Easy", data_dir=DATA, max_problems=7),
        "SpellingBee": chatcore.load_problems("SpellingBee", data_dir=DATA, max_problems=3),
    }
    # spy on how many problems this rank evaluates
    seen = []
    original = chatcore.evaluate_task

    def spy(model, tokenizer, task, probs, **kwargs):
        seen.append((task, len(probs)))
        return original(model, tokenizer, task, probs, **kwargs)

    chatcore.evaluate_task = spy
    res = chatcore.run_chatcore(model, tokenizer, list(problems), problems=problems, max_new_tokens=4, batch_size=4)
    chatcore.evaluate_task = original
    # reference: this process alone on every problem
    ref = {
        n: sum(chatcore.evaluate_task(model, tokenizer, n, p, max_new_tokens=4, batch_size=4))
        for n, p in problems.items()
    }
    shares = gather_object([seen])
    for task, total in (("ARC-Easy", 7), ("SpellingBee", 3)):
        assert sum(n for share in shares for t, n in share if t == task) == total, shares
    assert {n: r["correct"] for n, r in res["tasks"].items()} == ref, (res, ref)
    everyone = gather_object([json.dumps(res, sort_keys=True)])
    assert everyone[0] == everyone[1], everyone
    print(
        "CHATCORE_DISTRIBUTED_OK", state.process_index, json.dumps({n: r["correct"] for n, r in res["tasks"].items()})
    )
    check_bpb(model, tokenizer, state)
    # leave together: a rank that exits while the other still holds the gloo group aborts it (SIGABRT)
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()


def check_bpb(model, tokenizer, state):
    from nanosft.eval import callbacks

    g = torch.Generator().manual_seed(1)  # the same batches on both ranks
    batches = []
    for _ in range(5):
        ids = torch.randint(100, 60000, (2, 16), generator=g)
        labels = torch.where(torch.rand(2, 16, generator=g) < 0.6, torch.roll(ids, -1, 1), torch.full_like(ids, -100))
        batches.append({"input_ids": ids, "labels": labels})
    tb = callbacks.token_bytes(tokenizer)
    # reference: every rank evaluates every batch; the all-reduce doubles nats and bytes alike
    ref = callbacks.evaluate_bpb(model, batches, tb)
    seen = []
    original = callbacks.evaluate_bpb

    def spy(model, batches, *args):
        batches = list(batches)
        seen.append(len(batches))
        return original(model, batches, *args)

    callbacks.evaluate_bpb = spy
    got = callbacks.BitsPerByteCallback(batches, token_bytes=tb, every=1).compute(None, None, model=model)["val_bpb"]
    callbacks.evaluate_bpb = original
    assert seen == [3 - state.process_index], seen  # rank 0: batches 0, 2, 4; rank 1: batches 1, 3
    assert abs(got - ref) < 1e-9 * ref, (got, ref)
    print("BPB_DISTRIBUTED_OK", state.process_index, got)


if __name__ == "__main__":
    main()
