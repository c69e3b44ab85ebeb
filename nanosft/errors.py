"""User errors: one type, one line, exit code 2.

A *user error* is something the person running nanosft can fix: a config key or type, a missing file or
folder, an invalid row or JSON line, an unknown dataset, an unreachable Hub dataset or model. Every such
error derives from ``UserError``; its message says what is wrong, where (key, file and 1-based line, Hub
row index) and what to do. The command-line entry points (``python -m nanosft.train``, ``.eval``,
``.chat``) run through ``run_cli``, which prints ``error: <message>`` on one line of stderr and exits with
status 2 (the status ``argparse`` uses for a bad command line), with no traceback unless
``NANOSFT_DEBUG=1``. Any other exception is an internal error and keeps its traceback.

Under ``accelerate launch`` the worker prints the same line and exits 2, but accelerate then raises its
own ``CalledProcessError`` (one process) or torch's ``ChildFailedError`` (several) with a traceback of
the launcher. ``python -m nanosft.launch`` is ``accelerate launch`` with the same flags that exits 2
quietly when the workers did (``nanosft/launch.py``).

Errors are also ordinary Python exceptions for library users: ``ConfigError`` is a ``ValueError``,
``DataSourceError`` and ``MissingPathError`` are ``FileNotFoundError``s, ``DataValidationError`` is a
``ValueError``.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

EXIT_USER_ERROR = 2  # argparse's status for a bad command line; the launcher (nanosft/launch.py) relays it
DEBUG_ENV = "NANOSFT_DEBUG"


class UserError(Exception):
    """An error the user can fix; printed as one line ``error: <what>, <where>, <what to do>``, exit 2."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type or an invalid value; the message names the key."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by the user (config file, model folder, checkpoint) does not exist."""


class DataSourceError(UserError, FileNotFoundError):
    """A dataset could not be found or read; the message names the path/dataset and how to get it."""


class DataValidationError(UserError, ValueError):
    """A row of a dataset is not a valid conversation; the message names dataset, position and reason."""


# How each front end spells an option in "what to do" hints: the config's YAML key by default;
# a command line that has its own flags (nanosft.eval) registers them with ``use_cli_options``.
_OPTION_NAMES: dict[str, str] = {}


def option(key: str) -> str:
    """How to name the setting ``key`` in a message: ``"`data_dir:` in the config"`` or ``--data-dir``."""
    return _OPTION_NAMES.get(key, f"`{key}:` in the config")


def use_cli_options(names: dict[str, str]) -> None:
    """Make ``option(key)`` name command-line flags, e.g. ``{"data_dir": "--data-dir"}`` (one CLI per process)."""
    _OPTION_NAMES.clear()
    _OPTION_NAMES.update(names)


def one_line(message: str) -> str:
    """``message`` with its line breaks (YAML parser errors, nested exceptions) folded into spaces."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def format_user_error(err: BaseException) -> str:
    """The line printed for a user error: ``error: <message on one line>``."""
    return f"error: {one_line(err)}"


def _prints_errors() -> bool:
    """Only the first process of a node prints (every rank of a launch meets the same user error)."""
    return os.environ.get("LOCAL_RANK", "0") in ("", "0") or os.environ.get(DEBUG_ENV) == "1"


def run_cli(main, argv=None) -> int:
    """Run a CLI ``main(argv)``; a ``UserError`` becomes one line on stderr and exit status 2.

    Returns:
        ``main``'s return value (0 when it returns None or a non-int), or ``EXIT_USER_ERROR``.
    """
    try:
        result = main(argv)
    except UserError as e:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        if _prints_errors():
            print(format_user_error(e), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) else 0
