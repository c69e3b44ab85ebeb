"""``accelerate launch`` that ends a user error with its one line: ``python -m nanosft.launch [flags] -m ...``.

The workers of ``accelerate launch -m nanosft.train`` print a user error as one line and exit 2
(``nanosft/errors.py``), but the launcher then fails on its own: with one process, accelerate's
``simple_launcher`` raises ``subprocess.CalledProcessError`` (``--quiet`` only turns it into exit 1);
with several, torch's elastic agent logs ``failed (exitcode: 2) local_rank: 0 ...`` and raises
``ChildFailedError`` with a box of per-rank details. Both print a traceback of the launcher after the
line that matters, and the shell sees exit 1.

This module takes the same arguments, parsed by accelerate's own parser (``launch_command_parser``), and
runs accelerate's ``launch_command``. When the workers exited with the user-error status 2 (the first
failure of a multi-process run, as torch reports it), it exits 2 without the launcher's traceback; any
other failure is re-raised as accelerate would (internal errors keep every traceback)::

    python -m nanosft.launch --config_file accelerate_configs/single_gpu.yaml -m nanosft.train --config x.yaml
"""

from __future__ import annotations

import logging
import subprocess
import sys

from accelerate.commands import launch as accelerate_launch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from .errors import EXIT_USER_ERROR


class _DropUserErrorExit(logging.Filter):
    """Drops torch elastic's ``failed (exitcode: 2) ...`` log record: the worker already said why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"(exitcode: {EXIT_USER_ERROR})" not in record.getMessage()


def main(argv=None) -> int:
    """Run ``accelerate launch`` with ``argv``; returns 0, or ``EXIT_USER_ERROR`` when the workers did."""
    args = accelerate_launch.launch_command_parser().parse_args(argv)
    api_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    api_log.addFilter(_DropUserErrorExit())
    api_log.setLevel(logging.ERROR)  # no "Sending process ... closing signal SIGTERM" notices to the other ranks
    try:
        accelerate_launch.launch_command(args)
    except subprocess.CalledProcessError as e:  # one process (accelerate's simple_launcher)
        if e.returncode == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    except ChildFailedError as e:  # several processes (torch.distributed.run)
        if e.get_first_failure()[1].exitcode == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
