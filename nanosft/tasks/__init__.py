"""Datasets as tasks, one module each (nanochat/tasks/): training conversations and eval problems.

Every loader reads from a local ``data_dir`` when one is given (the formats of ``../shared/data``,
see its README) and from the Hugging Face Hub otherwise, so the same YAML works offline and online.
A missing local file raises ``DataSourceError`` naming the path and how to obtain the data.

Positions in messages: a file's rows are named by their 1-based line number, a Hub dataset's by its
0-based row index, said so (``Rows``, ``position``).
"""

from __future__ import annotations

import json
import os

from ..errors import DataSourceError, option

__all__ = ["DataSourceError", "InvalidLine", "Rows", "load_hub", "position", "read_jsonl", "require_file"]


class Rows(list):
    """A dataset's raw rows plus where each came from, so that errors can point at it.

    Attributes:
        source: the file path or Hub dataset id the rows were read from.
        lines: for a file, the 1-based line number of each row (blank lines are not rows).
        hub: True for a Hugging Face Hub dataset: rows are named by their 0-based row index.
    """

    def __init__(self, rows=(), source: str = "", lines: list[int] | None = None, hub: bool = False):
        super().__init__(rows)
        self.source, self.lines, self.hub = source, lines, hub

    def position(self, i: int) -> str:
        """Where row ``i`` is: ``"my.jsonl, line 5"``, ``"Hub dataset org/x, row index 4"`` or ``"row index 4"``."""
        return position(self, i)


def position(rows, i: int) -> str:
    """Where row ``i`` of ``rows`` is: a 1-based line of a file, a Hub row index (said so), or a row index."""
    if isinstance(rows, Rows) and rows.lines is not None:
        return f"{rows.source}, line {rows.lines[i]}"
    if isinstance(rows, Rows) and rows.hub:
        return f"Hub dataset {rows.source}, row index {i}"
    return f"row index {i}"


class InvalidLine:
    """Stands in for a line of a JSON-lines file that is not JSON (``read_jsonl(..., keep_invalid=True)``)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidLine({self.reason!r})"


def require_file(path: str, how_to_get: str) -> str:
    """Return ``path`` if it is a file, else raise ``DataSourceError`` that says how to obtain it."""
    if not os.path.isfile(path):
        raise DataSourceError(f"data file not found: {path}; {how_to_get}")
    return path


def read_jsonl(path: str, keep_invalid: bool = False) -> Rows:
    """Read a JSON-lines file (UTF-8; a leading byte-order mark is accepted); blank lines are skipped.

    Args:
        keep_invalid: a line that is not JSON (or not UTF-8) becomes an ``InvalidLine`` holding the reason,
            for the caller to reject or skip; by default it raises.

    Returns:
        ``Rows`` with ``lines`` (1-based line numbers) and ``source=path``.

    Raises:
        DataSourceError: a line is not JSON or not UTF-8 (unless ``keep_invalid``), naming file and line.
    """
    rows, lines = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                if not line.strip():
                    continue
                rows.append(json.loads(line))
            except UnicodeDecodeError as e:
                reason = f"not UTF-8 text (byte {e.start + 1})"
            except json.JSONDecodeError as e:
                reason = f"invalid JSON ({e.msg}, column {e.colno})"
            else:
                lines.append(lineno)
                continue
            if not keep_invalid:
                raise DataSourceError(f"{reason}, {path}, line {lineno}; fix or remove the line") from None
            rows.append(InvalidLine(reason))
            lines.append(lineno)
    return Rows(rows, source=path, lines=lines)


def load_hub(repo_id: str, *args, split: str, **kwargs):
    """``datasets.load_dataset`` with an error that says how to work offline."""
    import datasets

    try:
        return datasets.load_dataset(repo_id, *args, split=split, **kwargs)
    except Exception as e:  # network, auth, missing split: all end the same way for the user
        raise DataSourceError(
            f"could not load Hub dataset {repo_id!r} (split {split!r}): {type(e).__name__}: {e}; "
            f"offline, set {option('data_dir')} to a folder with the local copies"
        ) from e
