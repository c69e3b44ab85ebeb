"""``python -m nanosft.report <run_dir>``: rebuild a run's ``report.md`` and plots (``report.py``)."""

from __future__ import annotations

import argparse
import os

from .report import write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanosft.report", description=__doc__)
    p.add_argument("run_dir", help="a run's output_dir (holds metrics.json / checkpoint-*/trainer_state.json)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        p.error(f"not a folder: {args.run_dir}")
    print(write_report(args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
