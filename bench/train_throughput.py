"""Training throughput on CPU: nanosft vs stock TRL SFTTrainer (no packing) vs TRL bfd packing.

    python bench/train_throughput.py [--steps 8] [--batch-size 8] [--max-length 512]

Same model (a fresh 36.7M-parameter NanoChat: 4 layers x 256, vocab 65,536, the size hf-integration.md
measured), same rendered data (GSM8K + identity + SpellingBee, assistant-only masks), same optimizer
(AdamW, one LR) and the same number of optimizer steps, run one after the other in this process. Prints
supervised tokens/s (tokens whose label is not ignored) of each and the ratios. The first step of each
run is a warm-up and is not timed. Goal (issue 4): nanosft >= 1.3x stock TRL and >= 1.0x TRL bfd.
CPU timings on a shared machine vary 10-25% run to run: read the ratios, and rerun.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    args = p.parse_args()

    import datasets
    import torch
    from transformers import NanoChatConfig, NanoChatForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from nanosft.training.config import NanoSFTConfig
    from nanosft.data.mixture import DatasetSpec, load_mixture, render_dataset
    from nanosft.data.packing import pack_dataset
    from nanosft.format.template import ChatRenderer
    from nanosft.format.tokenizer import build_nanochat_tokenizer
    from nanosft.training.trainer import NanoSFTTrainer

    datasets.disable_progress_bars()
    T, B = args.max_length, args.batch_size
    tok = build_nanochat_tokenizer(os.path.join(args.data_dir, "nanochat_tokenizer"))
    specs = [DatasetSpec.from_dict(d) for d in ({"name": "gsm8k", "max_rows": 2000}, {"name": "identity"},
                                                  {"name": "spellingbee", "size": 1000})]
    convs, sources = load_mixture(specs, args.data_dir)
    rendered = render_dataset(ChatRenderer(tok, max_tokens=T + 1), convs, sources)
    # TRL takes it as pre-tokenized: its labels come from `assistant_masks` (trl sft_trainer build_labels)
    plain = rendered.remove_columns("source")

    def model():
        torch.manual_seed(0)
        cfg = NanoChatConfig(vocab_size=65536, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=T + 1, pad_token_id=None)
        return NanoChatForCausalLM(cfg)

    class Clock(TrainerCallback):
        """Times optimizer steps 2..N and counts their supervised tokens (from the collator's labels)."""

        def __init__(self):
            self.t0 = None
            self.t1 = None
            self.supervised = []

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == 1:
                self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.t1 = time.perf_counter()

    def counting(collate, clock, shifted):
        def wrapped(rows):
            batch = collate(rows)
            labels = batch["labels"] if shifted else batch["labels"][..., 1:]
            clock.supervised.append(int((labels != -100).sum()))
            return batch

        return wrapped

    common = dict(per_device_train_batch_size=B, max_steps=args.steps, learning_rate=1e-3, report_to="none",
                  save_strategy="no", logging_steps=1000, bf16=False, use_cpu=True, gradient_checkpointing=False,
                  dataloader_num_workers=0, disable_tqdm=True, seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        runs = {
            "nanosft best-fit": lambda: NanoSFTTrainer(
                model=model(), processing_class=tok, train_dataset=pack_dataset(rendered, T),
                args=NanoSFTConfig(output_dir=out, model_config={}, max_length=T, optimizer="adamw",
                                   embedding_lr=1e-3, unembedding_lr=1e-3, matrix_lr=1e-3, scalar_lr=1e-3,
                                   init_lr_frac=1.0, warmdown_ratio=0.0, **common)),
            "TRL no packing": lambda: SFTTrainer(
                model=model(), processing_class=tok, train_dataset=plain,
                args=SFTConfig(output_dir=out, max_length=T, assistant_only_loss=False, packing=False, **common)),
            "TRL bfd": lambda: SFTTrainer(
                model=model(), processing_class=tok, train_dataset=plain,
                args=SFTConfig(output_dir=out, max_length=T, assistant_only_loss=False, packing=True,
                               packing_strategy="bfd", **common)),
        }
        for name, make in runs.items():
            trainer = make()
            clock = Clock()
            trainer.add_callback(clock)
            trainer.data_collator = counting(trainer.data_collator, clock, shifted=name.startswith("nanosft"))
            trainer.train()
            steps = args.steps - 1
            sup = sum(clock.supervised[1:args.steps])
            dt = clock.t1 - clock.t0
            results[name] = sup / dt
            print(f"{name:<18} {steps} timed steps {dt:6.1f} s  supervised tokens {sup:6d}  "
                  f"{sup / dt:8.1f} supervised tokens/s", flush=True)
    base = results["nanosft best-fit"]
    print(f"nanosft / TRL no packing = {base / results['TRL no packing']:.2f}x (goal >= 1.3x)")
    print(f"nanosft / TRL bfd        = {base / results['TRL bfd']:.2f}x (goal >= 1.0x)")


if __name__ == "__main__":
    main()
