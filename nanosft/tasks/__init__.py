"""Datasets as tasks, one module each (nanochat/tasks/): training conversations and eval problems.

Every loader reads from a local ``data_dir`` when one is given (the layout of the embedded copy,
``nanosft/resources/data/README.md``) and from the Hugging Face Hub otherwise, so the same YAML works
offline and online.
A missing local file raises ``DataSourceError`` naming the path and how to obtain the data.

Positions in messages: a file's rows are named by their 1-based line number, a Hub dataset's by its
0-based row index, said so (``Rows``, ``position``).
"""

from __future__ import annotations

import bisect
import json
import os

from ..errors import DataSourceError, option

__all__ = ["DataSourceError", "InvalidLine", "Rows", "load_hub", "position", "read_jsonl", "require_file"]


class Rows(list):
    """A dataset's raw rows (a list) that know where each came from, so that errors can point at it.

    ``segments`` holds ``(first_index, source, unit, numbers)`` per file or Hub dataset: ``unit`` is ``"line"``
    (a JSON-lines file, ``numbers[j]`` the 1-based line of its j-th row), ``"row"`` (a JSON array, Parquet or
    CSV file: 1-based data row) or ``"row index"`` (a Hub dataset: 0-based index). ``numbers`` None means
    the j-th row is row j + 1 (or index j for ``"row index"``).
    """

    def __init__(self, rows=(), source: str = "", unit: str = "row index", numbers: list | None = None):
        super().__init__()
        self.segments: list[tuple[int, str, str, list | None]] = []
        if rows or source:
            self.add(rows, source, unit, numbers)

    def add(self, rows, source: str, unit: str, numbers: list | None = None) -> None:
        """Append ``rows`` read from ``source`` (see the class docstring for ``unit`` and ``numbers``)."""
        self.segments.append((len(self), source, unit, numbers))
        self.extend(rows)

    def locate(self, i: int) -> tuple[str, str]:
        """``(source, "line 3")``: the source of row ``i`` and its position within that source."""
        k = bisect.bisect_right([s[0] for s in self.segments], i) - 1
        start, source, unit, numbers = self.segments[k]
        j = i - start
        n = numbers[j] if numbers is not None else (j if unit == "row index" else j + 1)
        return source, f"{unit} {n}"

    def where(self, i: int) -> str:
        """Where row ``i`` comes from: ``"data/a.jsonl, line 3"`` or ``"Hub dataset org/x, row index 7"``."""
        return ", ".join(p for p in self.locate(i) if p)


def position(rows, i: int) -> str:
    """Where row ``i`` of ``rows`` is: a 1-based line or row of a file, a Hub row index (said so), or a row
    index of an in-memory list."""
    return rows.where(i) if isinstance(rows, Rows) and rows.segments else f"row index {i}"


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
        ``Rows`` of one segment: ``source=path``, unit ``"line"`` (1-based line numbers).

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
    return Rows(rows, source=path, unit="line", numbers=lines)


def load_hub(repo_id: str, *args, split: str, **kwargs):
    """``datasets.load_dataset`` with an error that says how to work offline."""
    import datasets

    try:
        return datasets.load_dataset(repo_id, *args, split=split, **kwargs)
    except Exception as e:  # network, auth, missing split: all end the same way for the user
        raise DataSourceError(
            f"could not load Hub dataset {repo_id!r} (split {split!r}): {type(e).__name__}: {e}; "
            f"offline, set {option('data_dir')} to a folder with local copies (layout: "
            "nanosft/resources/data/README.md; pkg://nanosft/resources/data is the small embedded copy)"
        ) from e
