"""ChatCORE of the base model before SFT, scored exactly as the run will score the final model.

    python -m nanosft.baseline --config configs/smollm2-135m.yaml [--set key=value ...]

Loads the tokenizer and model the way ``nanosft.train`` does (nanochat special tokens added, embeddings
resized with mean init, GGUF dequantized), then runs ``chatcore.run_chatcore`` with the config's
``chatcore_tasks``, caps (``chatcore_max_categorical`` / ``chatcore_max_generative``) and
``chatcore_max_new_tokens`` - the settings ``ChatCoreCallback`` uses during training - so the same
seeded problem subsets are scored before and after. Writes ``<output_dir>/chatcore_base.json`` (the
``nanosft.eval`` format), which ``nanosft.report`` shows as "before" and as step 0 of ``chatcore.png``.

Why a separate command rather than an evaluation at step 0 inside the run: ``ChatCoreCallback`` evaluates
at steps > 0 only, and ``nanosft.eval`` takes one cap for all tasks. Cost: one extra model load (slowest
for a GGUF, which is dequantized) plus one ChatCORE pass.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .errors import run_cli
from .eval.chatcore import format_table, run_chatcore
from .files import write_json_atomic
from .models.pretrained import check_model_source, load_model, load_tokenizer
from .training.config import load_config


def main(argv=None) -> dict:
    """Run the CLI; returns the results dict (also written to ``<output_dir>/chatcore_base.json``)."""
    p = argparse.ArgumentParser(prog="python -m nanosft.baseline", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the run's YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, as for nanosft.train")
    p.add_argument("--output", default=None, help="JSON path (default: <output_dir>/chatcore_base.json)")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    cfg = load_config(args.config, args.overrides)
    if cfg.model_config is None:
        check_model_source(cfg.model_name_or_path, "model_name_or_path")  # before the tokenizer and model load
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    t0 = time.time()
    results = run_chatcore(model, tokenizer, cfg.chatcore_tasks, data_dir=cfg.data_dir,
                           max_categorical=cfg.chatcore_max_categorical, max_generative=cfg.chatcore_max_generative,
                           max_new_tokens=cfg.chatcore_max_new_tokens, progress=True)
    results["model"] = cfg.model_name_or_path or "model_config"
    results["settings"] = {k: getattr(cfg, k) for k in ("chatcore_tasks", "chatcore_max_categorical",
                                                        "chatcore_max_generative", "chatcore_max_new_tokens")}
    results["seconds"] = round(time.time() - t0, 2)
    print(format_table(results))
    os.makedirs(cfg.output_dir, exist_ok=True)
    write_json_atomic(args.output or os.path.join(cfg.output_dir, "chatcore_base.json"), results)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
