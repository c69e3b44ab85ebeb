"""LoRA (nanosft/models/lora.py, nanosft/merge.py): only adapter weights train; the merged model is the PEFT model."""

import json
import logging

import pytest
import torch

from nanosft.training.config import NanoSFTConfig
from nanosft.data.mixture import DatasetSpec, load_mixture, render_dataset
from nanosft.models.lora import adapter_optimizer, build_lora_config
from nanosft.data.packing import pack_dataset
from nanosft.format.template import ChatRenderer
from nanosft.models.pretrained import load_model
from nanosft.training.trainer import NanoSFTTrainer

T = 64
PEFT = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
ADAPTER_MARKERS = ("lora_", "trainable_tokens", "modules_to_save")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, nanochat_tokenizer, data_dir):
    """A 2-step LoRA run on a saved tiny NanoChat whose vocabulary lacks the 9 nanochat tokens (like SmolLM2)."""
    from transformers import NanoChatConfig, NanoChatForCausalLM

    tmp = tmp_path_factory.mktemp("lora")
    base = tmp / "base"
    torch.manual_seed(0)
    NanoChatForCausalLM(NanoChatConfig(vocab_size=65527, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=256, pad_token_id=None)
                        ).save_pretrained(base)
    convs, sources = load_mixture([DatasetSpec.from_dict({"name": "spellingbee", "size": 16})], data_dir)
    rows = pack_dataset(render_dataset(ChatRenderer(nanochat_tokenizer, max_tokens=T + 1), convs, sources), T)
    cfg = NanoSFTConfig(output_dir=str(tmp / "run"), model_name_or_path=str(base), max_length=T,
                        per_device_train_batch_size=2, max_steps=2, optimizer="muon", peft=dict(PEFT),
                        optimizer_kwargs={"adamw_matrix_lr": 0.05, "embedding_lr": 0.05}, report_to="none",
                        save_strategy="no", max_grad_norm=0.0, use_cpu=True, disable_tqdm=True, seed=0)
    model = load_model(cfg, nanochat_tokenizer)  # resizes 65527 -> 65536: the special tokens are new rows
    # the three lines of nanosft.train.main's PEFT block
    peft_config = build_lora_config(cfg.peft, model, model.nanosft_new_token_ids)
    cfg.optimizer = adapter_optimizer(cfg.optimizer)
    trainer = NanoSFTTrainer(model=model, args=cfg, train_dataset=rows,
                             processing_class=nanochat_tokenizer, peft_config=peft_config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return {"tmp": tmp, "base": base, "trainer": trainer, "before": before, "after": after, "rows": rows,
            "peft_config": peft_config, "cfg": cfg}


def test_new_token_rows_train_through_trainable_tokens_and_an_untied_head_is_saved(lora_run):
    pc = lora_run["peft_config"]
    assert pc.trainable_token_indices == {"embed_tokens": list(range(65527, 65536))}
    assert "lm_head" in pc.modules_to_save  # NanoChat's head is untied: its new rows must train too
    assert lora_run["cfg"].optimizer == "adamw"  # `optimizer: muon` trains adapters with AdamW


def test_only_adapter_parameters_change(lora_run):
    before, after = lora_run["before"], lora_run["after"]
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "nothing trained"
    assert all(any(m in n for m in ADAPTER_MARKERS) for n in changed), sorted(changed)
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed)
    frozen = [n for n in before if not any(m in n for m in ADAPTER_MARKERS)]
    assert len(frozen) > 10 and all(torch.equal(before[n], after[n]) for n in frozen)


def test_lm_head_is_refused_as_a_lora_target(lora_run):
    with pytest.raises(ValueError, match="modules_to_save"):
        build_lora_config({**PEFT, "target_modules": ["q_proj", "lm_head"]}, lora_run["trainer"].model)
    with pytest.raises(ValueError, match="unknown LoraConfig key"):
        build_lora_config({**PEFT, "rank": 4}, lora_run["trainer"].model)


def test_muon_with_lora_warns_and_uses_adamw(caplog):
    with caplog.at_level(logging.WARNING, logger="nanosft.models.lora"):
        assert adapter_optimizer("muon") == "adamw"
    assert "AdamW" in caplog.text


def test_merge_cli_gives_a_plain_model_with_the_peft_logits(lora_run):
    from transformers import AutoModelForCausalLM

    from nanosft import merge
    from nanosft.format.tokenizer import ASSISTANT_END

    trainer, tmp = lora_run["trainer"], lora_run["tmp"]
    run_dir, merged_dir = tmp / "run", tmp / "merged"
    trainer.save_model(str(run_dir))
    trainer.processing_class.save_pretrained(str(run_dir))
    (run_dir / "run_config.json").write_text(json.dumps({"config": {"model_name_or_path": str(lora_run["base"])}}))
    assert (run_dir / "adapter_config.json").is_file()

    assert merge.main([str(run_dir), str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "chat_template.jinja").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not any("lora" in k or "modules_to_save" in k for k in merged.state_dict())
    assert merged.generation_config.eos_token_id == trainer.processing_class.convert_tokens_to_ids(ASSISTANT_END)

    ids = torch.tensor([lora_run["rows"][0]["input_ids"][:T]])
    assert (ids >= 65527).any()  # the new special tokens are in the input
    peft_model = trainer.model.eval()
    with torch.no_grad():
        want = peft_model(input_ids=ids, use_cache=False).logits
        got = merged.eval()(input_ids=ids, use_cache=False).logits
    assert (got - want).abs().max().item() < 1e-5


def test_merge_refuses_a_folder_without_an_adapter(tmp_path):
    from nanosft.merge import merge_adapter

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_adapter(str(tmp_path), str(tmp_path / "out"))
