"""nanochat base checkpoint -> Hugging Face checkpoint, lossless (``nanosft.models.convert``)."""

from __future__ import annotations

import argparse
import logging
import sys

from .models.convert import UnsupportedCheckpointError, convert_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanosft.convert", description=__doc__)
    p.add_argument("ckpt_dir", help="nanochat checkpoint folder (model_<step>.pt, meta_<step>.json)")
    p.add_argument("out_dir", help="output folder for the HF checkpoint")
    p.add_argument("--step", type=int, default=None, help="step to convert (default: the latest)")
    p.add_argument("--tokenizer-dir", default=None, help="nanochat tokenizer folder (default: searched)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights dtype (default: the checkpoint's)")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        convert_checkpoint(args.ckpt_dir, args.out_dir, args.step, args.tokenizer_dir, args.dtype)
    except (UnsupportedCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
