"""Data preparation at scale: time and peak RSS of the prepared-data cache against TRL's own preparation.

    python bench/data_scale.py [--sizes 25000,100000,400000] [--max-length 2048] [--trl-max 100000]

Synthetic conversations (one user turn, one assistant turn of random dictionary words, ~406 tokens each
with the nanochat tokenizer) are written to a JSON-lines file; each size is then measured in fresh
processes (one at a time, OMP_NUM_THREADS=1, one render process):

- ``prepare``: the first preparation (``nanosft.data.prepare.prepare_rows``: load, render, pack, write the cache);
- ``hit``: a second start that hits the cache, from process start (imports included) to the end of the first
  optimizer step of ``NanoSFTTrainer`` on a tiny 2-layer model (B=1, rows of T); a hit verifies the CRC-32 of
  the cache file, timed again afterwards next to a BLAKE2b of the same file;
- ``rank``: a non-main rank: ``prepare_rows`` finds the cache and memory-maps it, then collates 1,000
  random rows (what its dataloader reads first);
- ``trl``: TRL's own path on the same file: ``load_dataset("json")`` then ``SFTTrainer.__init__`` with
  ``packing=True, packing_strategy="bfd", assistant_only_loss=True`` (tokenization through the chat template,
  then packing), skipped above ``--trl-max`` conversations.

Peak RSS is ``ru_maxrss`` of the measured process: it counts the pages of memory-mapped files that were read
(page cache, one copy per node whatever the number of ranks, reclaimable); "anon" is the peak anonymous
(private) RSS, sampled every 50 ms.
Printed at the end: the slope of peak RSS over tokens (bytes per token, least squares) for each step.
Goals (issue 13, at 400K conversations): prepare <= 3 GiB, rank <= 1 GiB, flat in size; hit <= 15 s to
the first step; prepare >= 2x faster than TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

T0 = time.perf_counter()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATA = os.environ.get("NANOSFT_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
TOKENIZER = os.path.join(DATA, "nanochat_tokenizer")
TINY = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class AnonPeak:
    """Peak anonymous (private) RSS, sampled every 50 ms from /proc/self/status (Linux).

    RSS also counts the pages of memory-mapped files that were read (``RssFile``): page cache, shared by
    all the processes that map the same file and reclaimable; ``RssAnon`` is the process's own memory.
    """

    def __init__(self):
        import threading

        self.peak = 0
        threading.Thread(target=self._run, daemon=True).start()

    def sample(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self):
        while True:
            self.peak = max(self.peak, self.sample())
            time.sleep(0.05)


def write_conversations(path: str, n: int) -> None:
    """``n`` synthetic conversations, deterministic in ``n`` and the word list."""
    with open(os.path.join(DATA, "words", "words_alpha.txt"), encoding="utf-8") as f:
        words = f.read().split()
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            q = " ".join(rng.choices(words, k=rng.randint(20, 60)))
            a = " ".join(rng.choices(words, k=rng.randint(60, 160)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
            f.write("\n")


def child(mode: str, path: str, cache: str, T: int) -> dict:
    import datasets

    datasets.disable_progress_bars()
    from nanosft.data.mixture import DatasetSpec
    from nanosft.data.prepare import prepare_rows
    from nanosft.format.tokenizer import build_nanochat_tokenizer

    tok = build_nanochat_tokenizer(TOKENIZER)
    spec = [DatasetSpec.from_dict({"name": "jsonl", "path": path})]
    if mode in ("prepare", "rank"):
        t = time.perf_counter()
        prep = prepare_rows(spec, None, tok, max_length=T, cache_dir=cache, packing_strategy="bfd")
        out = {"seconds": time.perf_counter() - t, "status": prep.status, "rows": len(prep.rows),
               "tokens": prep.packing["real_tokens"], "fill": prep.packing["fill"],
               "cache_bytes": os.path.getsize(os.path.join(prep.path, "rows.arrow"))}
        if mode == "rank":
            from nanosft.data.packing import PackedCollator

            collate = PackedCollator(T, pad_token_id=0)
            rng = random.Random(0)
            for _ in range(1000):
                collate([prep.rows[rng.randrange(len(prep.rows))]])
        return out
    if mode == "hit":
        import torch
        from transformers import NanoChatConfig, NanoChatForCausalLM

        from nanosft.training.config import NanoSFTConfig
        from nanosft.training.trainer import NanoSFTTrainer

        t = time.perf_counter()
        t_imports = t - T0
        prep = prepare_rows(spec, None, tok, max_length=T, cache_dir=cache, packing_strategy="bfd")
        t_prep = time.perf_counter() - t
        torch.manual_seed(0)
        model = NanoChatForCausalLM(NanoChatConfig(vocab_size=len(tok), pad_token_id=None, max_position_embeddings=T,
                                                   **TINY))
        args = NanoSFTConfig(output_dir=os.path.join(cache, "_run"), model_config=TINY, max_steps=1, bf16=False,
                             per_device_train_batch_size=1, max_length=T, optimizer="adamw", report_to="none",
                             save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True)
        trainer = NanoSFTTrainer(model=model, args=args, train_dataset=prep.rows, processing_class=tok)
        trainer.train()
        out = {"seconds": time.perf_counter() - T0, "prepare_seconds": t_prep, "imports_seconds": t_imports,
               "status": prep.status}
        import hashlib

        from nanosft.data.prepare import crc32_file

        rows = os.path.join(prep.path, "rows.arrow")  # the hit's own checksum (inside prepare_rows), and BLAKE2b's
        t = time.perf_counter()
        crc32_file(rows)
        out["crc32_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        h = hashlib.blake2b()
        with open(rows, "rb") as f:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
        out["blake2b_seconds"] = time.perf_counter() - t
        return out
    if mode == "trl":
        import torch
        from transformers import NanoChatConfig, NanoChatForCausalLM
        from trl import SFTConfig, SFTTrainer

        torch.manual_seed(0)
        model = NanoChatForCausalLM(NanoChatConfig(vocab_size=len(tok), pad_token_id=None, max_position_embeddings=T,
                                                   **TINY))
        t = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=os.path.join(cache, "_hf"))
        args = SFTConfig(output_dir=os.path.join(cache, "_trl"), max_length=T, packing=True, packing_strategy="bfd",
                         assistant_only_loss=True, bf16=False, report_to="none", use_cpu=True, dataset_num_proc=None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        ds = trainer.train_dataset
        return {"seconds": time.perf_counter() - t, "rows": len(ds)}
    raise ValueError(mode)


def run_child(mode, path, cache, T) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": REPO, "TORCH_COMPILE_DISABLE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--path", path, "--cache", cache,
                           "--max-length", str(T)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(xs, ys) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="25000,100000,400000")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--trl-max", type=int, default=100000)
    p.add_argument("--child")
    p.add_argument("--path")
    p.add_argument("--cache")
    args = p.parse_args()
    if args.child:
        anon = AnonPeak()
        out = child(args.child, args.path, args.cache, args.max_length)
        out["peak_rss_gib"] = peak_rss_gib()
        out["peak_anon_gib"] = max(anon.peak, anon.sample()) / 2**30
        print(json.dumps(out))
        return
    T = args.max_length
    results = {}
    print(f"{'convs':>7} {'tokens':>11} {'step':<8} {'seconds':>8} {'peak RSS GiB':>12} {'anon GiB':>8}  notes",
          flush=True)
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            path, cache = os.path.join(tmp, "convs.jsonl"), os.path.join(tmp, "cache")
            write_conversations(path, n)
            r = {"prepare": run_child("prepare", path, cache, T)}
            assert r["prepare"]["status"] == "built"
            r["hit"] = run_child("hit", path, cache, T)
            r["rank"] = run_child("rank", path, cache, T)
            assert r["hit"]["status"] == r["rank"]["status"] == "hit"
            if n <= args.trl_max:
                r["trl"] = run_child("trl", path, cache, T)
        tokens = r["prepare"]["tokens"]
        results[n] = (tokens, r)
        for step, m in r.items():
            note = {"prepare": f"{r['prepare']['rows']} rows, fill {100 * r['prepare']['fill']:.2f}%, "
                               f"cache {r['prepare']['cache_bytes'] / tokens:.2f} bytes/token",
                    "hit": f"process start -> first step done; imports+tokenizer {r['hit']['imports_seconds']:.1f} s, "
                           f"prepare_rows {r['hit']['prepare_seconds']:.2f} s (CRC-32 check "
                           f"{r['hit']['crc32_seconds']:.2f} s; BLAKE2b would take {r['hit']['blake2b_seconds']:.2f} s)",
                    "rank": "prepare_rows (hit, memory-map) + 1,000 rows collated",
                    "trl": f"load_dataset + SFTTrainer init, {m.get('rows', 0)} rows"}[step]
            print(f"{n:>7} {tokens:>11,} {step:<8} {m['seconds']:>8.1f} {m['peak_rss_gib']:>12.2f} "
                  f"{m['peak_anon_gib']:>8.2f}  {note}", flush=True)
        if "trl" in r:
            print(f"{n:>7} prepare is {r['trl']['seconds'] / r['prepare']['seconds']:.1f}x faster than TRL", flush=True)
    if len(results) >= 2:
        xs = [t for t, _ in results.values()]
        for step in ("prepare", "hit", "rank"):
            ys = [r[step]["peak_rss_gib"] * 2**30 for _, r in results.values()]
            anon = [r[step]["peak_anon_gib"] * 2**30 for _, r in results.values()]
            print(f"peak RSS slope, {step}: {slope(xs, ys):.1f} bytes/token (anonymous: {slope(xs, anon):.1f})")
        trl = [(t, r["trl"]["peak_rss_gib"] * 2**30) for t, r in results.values() if "trl" in r]
        if len(trl) >= 2:
            print(f"peak RSS slope, trl: {slope([t for t, _ in trl], [y for _, y in trl]):.1f} bytes/token")


if __name__ == "__main__":
    main()
