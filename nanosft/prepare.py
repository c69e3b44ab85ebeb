"""``python -m nanosft.prepare --config X``: build a config's data cache before a launch (``data/prepare.py``)."""

from __future__ import annotations

import logging
import sys

from .data.prepare import prepare_from_config
from .errors import run_cli
from .models.pretrained import load_tokenizer
from .training.config import build_config, config_arg_parser, read_config_dict


def main(argv=None) -> int:
    """``python -m nanosft.prepare --config X [--set k=v ...]``: build (or find) the data cache of a config.

    Under ``accelerate launch`` the local main process of each node builds first; the others then load.
    Prints one line per process: rank, split, ``hit``/``built``, fingerprint, rows, cache folder.
    """
    parser = config_arg_parser("python -m nanosft.prepare", main.__doc__.split("\n")[0], "configs/d20.yaml, ...")
    args = parser.parse_args(argv)

    cfg = build_config(dict(read_config_dict(args.config, args.overrides)), args.config)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if cfg.process_index == 0 else logging.WARNING)
    tokenizer = load_tokenizer(cfg)
    with cfg.main_process_first(desc="prepare the data"):
        train, evaluation = prepare_from_config(cfg, tokenizer)
    for split, prep in (("train", train), ("eval", evaluation)):
        if prep is not None:
            print(f"rank {cfg.process_index}: {split} {prep.status} {prep.fingerprint} rows={len(prep.rows)} "
                  f"fill={prep.packing['fill']:.4f} {prep.path}" + (f" ({prep.reason})" if prep.reason else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
