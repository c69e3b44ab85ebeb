"""Best-fit packing: the plan, the collator's tensors, document masking, resume and loss normalization."""

import datasets
import pytest
import torch

from nanosft.data.packing import PackedCollator, pack_best_fit, pack_best_fit_decreasing, pack_dataset


def test_best_fit_takes_the_longest_conversation_that_fits():
    # capacity 10: row 1 takes 8 (longest), then 2 (largest that fits the 2 left);
    # row 2 takes 7 then 3; row 3 takes 5.
    assert pack_best_fit([5, 3, 8, 2, 7], capacity=10) == [[2, 3], [4, 1], [0]]


def test_best_fit_with_a_small_buffer_only_sees_buffered_conversations():
    # buffer 2: sees {5, 3} -> 5, refill {3, 8}: 3 fits (8 does not) -> row [0, 1] with 2 left;
    # {8, 2}: 2 fits -> [0, 1, 3]; then {8, 7} -> [2], [4]
    assert pack_best_fit([5, 3, 8, 2, 7], capacity=10, buffer_size=2) == [[0, 1, 3], [2], [4]]


def test_equal_lengths_are_taken_in_stream_order():
    assert pack_best_fit([4, 4, 4], capacity=8) == [[0, 1], [2]]


def test_every_conversation_is_packed_exactly_once_and_rows_never_overflow():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 129, (2000,), generator=g).tolist()
    rows = pack_best_fit(lengths, capacity=129)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(2000))
    assert all(sum(lengths[i] for i in r) <= 129 for r in rows)
    fill = sum(lengths) / (len(rows) * 129)
    assert fill > 0.97, fill


def test_a_conversation_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="conversation 1 has 12 tokens; rows hold 1..10"):
        pack_best_fit([3, 12], capacity=10)


@pytest.mark.parametrize("pack", [pack_best_fit, pack_best_fit_decreasing])
@pytest.mark.parametrize("lengths, bad", [([3, 12], "conversation 1 has 12"), ([3, 4, 0], "conversation 2 has 0")])
def test_both_packers_refuse_empty_and_too_long_conversations(pack, lengths, bad):
    with pytest.raises(ValueError, match=f"{bad} tokens; rows hold 1..10"):
        pack(lengths, capacity=10)


def _rendered(convs):
    return datasets.Dataset.from_dict({"input_ids": [c[0] for c in convs], "assistant_masks": [c[1] for c in convs],
                                       "source": ["x"] * len(convs)})


BOS = 99


def test_collator_builds_shifted_targets_positions_and_padding_by_hand():
    # two conversations (BOS first), T = 8 -> rows of 9 slots
    a = ([BOS, 1, 2, 3], [0, 0, 1, 1])
    b = ([BOS, 4, 5], [0, 1, 1])
    rows = pack_dataset(_rendered([a, b]), max_length=8)
    assert rows["input_ids"] == [[BOS, 1, 2, 3, BOS, 4, 5]] and rows["seq_lengths"] == [[4, 3]]
    batch = PackedCollator(8, pad_token_id=BOS)(list(rows))
    assert batch["input_ids"].tolist() == [[BOS, 1, 2, 3, BOS, 4, 5, BOS]]
    # targets = row[1:]; masked where the target's mask is 0 (the next BOS and padding)
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 4, 5, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert batch["real_tokens"].item() == 7
    causal = PackedCollator(8, pad_token_id=BOS, attention="causal")(list(rows))
    assert causal["position_ids"].tolist() == [list(range(8))]
    assert torch.equal(causal["labels"], batch["labels"])


def test_flattened_batch_carries_cu_seqlens_for_flash_attention():
    rows = [{"input_ids": [BOS, 1, 2], "assistant_masks": [0, 1, 1], "seq_lengths": [3]},
            {"input_ids": [BOS, 3, BOS, 4, 5], "assistant_masks": [0, 1, 0, 1, 1], "seq_lengths": [2, 3]}]
    batch = PackedCollator(4, pad_token_id=BOS, flatten=True)(rows)
    assert batch["input_ids"].shape == (1, 8)
    # row 1: doc 3 + padding 2 (cut to 1 input); row 2: docs 2 and 3 (cut to 2 inputs)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4, 6, 8]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 0, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_document_attention_makes_a_packed_row_equal_each_conversation_alone(tiny_nanochat, attn):
    torch.manual_seed(0)
    model = tiny_nanochat(vocab_size=256, max_pos=64)
    model.config._attn_implementation = attn
    model.eval()
    docs = [[BOS] + torch.randint(0, 90, (n - 1,)).tolist() for n in (11, 7, 13)]
    rows = [{"input_ids": sum(docs, []), "assistant_masks": [1] * 31, "seq_lengths": [11, 7, 13]}]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([d]), use_cache=False).logits[0] for d in docs]
        expected = torch.cat(alone)[:-1]  # the last slot of the row has no input position (T = 30)
        batch = PackedCollator(30, pad_token_id=BOS)(rows)
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        causal = PackedCollator(30, pad_token_id=BOS, attention="causal")(rows)
        leaky = model(input_ids=causal["input_ids"], position_ids=causal["position_ids"], use_cache=False).logits[0]
    assert (packed - expected).abs().max().item() < 1e-4
    # nanochat's causal mode lets the second and third conversations see the first
    assert (leaky[11:] - expected[11:]).abs().max().item() > 1e-3  # 10x the equality tolerance
    assert (leaky[:11] - expected[:11]).abs().max().item() < 1e-4


def test_real_mix_packs_without_dropping_tokens(nanochat_tokenizer, data_dir):
    from nanosft.data.mixture import DatasetSpec, load_mixture, render_dataset
    from nanosft.format.template import ChatRenderer

    specs = [DatasetSpec.from_dict(d) for d in ({"name": "gsm8k", "max_rows": 400},
                                                  {"name": "spellingbee", "size": 200})]
    convs, sources = load_mixture(specs, data_dir)
    rendered = render_dataset(ChatRenderer(nanochat_tokenizer, max_tokens=513), convs, sources)
    rows = pack_dataset(rendered, max_length=512)
    assert sum(len(r) for r in rows["input_ids"]) == sum(len(r) for r in rendered["input_ids"])
    assert sum(map(sum, rows["assistant_masks"])) == sum(map(sum, rendered["assistant_masks"]))
    assert all(r[0] == nanochat_tokenizer.convert_tokens_to_ids("<|bos|>") for r in rows["input_ids"])
    assert sum(len(r) for r in rows["input_ids"]) / (len(rows) * 513) > 0.95
