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
from array import array

import datasets

from ...errors import DataSourceError, option

__all__ = ["DataSourceError", "InvalidLine", "JsonlLines", "LazyRows", "Rows", "load_hub", "position", "read_jsonl",
           "require_file"]


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


def read_json_array(path: str) -> list:
    """The rows of a ``.json`` file holding one JSON array (a byte-order mark is accepted).

    Raises:
        DataSourceError: invalid JSON (names the line) or not an array."""
    with open(path, encoding="utf-8-sig") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataSourceError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise DataSourceError(f"{path}: a .json file must hold a JSON array of rows, got {type(rows).__name__} "
                              "(one row per line is a .jsonl file)")
    return rows


_BLANK = object()  # a blank line of a JSON-lines file (skipped)


def _parse_jsonl_line(raw: bytes, lineno: int):
    """``(row, None)`` for a JSON line, ``(_BLANK, None)`` for a blank one, ``(None, reason)`` for a bad one."""
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        if not line.strip():
            return _BLANK, None
        return json.loads(line), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start + 1})"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg}, column {e.colno})"


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
            row, reason = _parse_jsonl_line(raw, lineno)
            if row is _BLANK:
                continue
            if reason is not None:
                if not keep_invalid:
                    raise DataSourceError(f"{reason}, {path}, line {lineno}; fix or remove the line") from None
                row = InvalidLine(reason)
            rows.append(row)
            lines.append(lineno)
    return Rows(rows, source=path, unit="line", numbers=lines)


class JsonlLines:
    """The rows of a JSON-lines file, parsed when indexed: in memory only the byte offset and line number of
    each non-blank line (16 bytes a row), so a large file is read in memory bounded by one row.

    ``lines[j]`` is what ``read_jsonl(path, keep_invalid=True)[j]`` holds (the parsed row, or an
    ``InvalidLine`` with the same reason); ``numbers`` are the 1-based line numbers. The file must not
    change while it is read.
    """

    def __init__(self, path: str):
        self.path = path
        self.offsets, self.numbers = array("q"), array("q")
        pos = 0
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    blank = not raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
                except UnicodeDecodeError:
                    blank = False  # a row: InvalidLine when read
                if not blank:
                    self.offsets.append(pos)
                    self.numbers.append(lineno)
                pos += len(raw)
        self._file = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, j: int):
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open while the rows are read)
        self._file.seek(self.offsets[j])
        row, reason = _parse_jsonl_line(self._file.readline(), self.numbers[j])
        return InvalidLine(reason) if reason is not None else row

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()


class LazyRows(Rows):
    """``Rows`` whose parts are sequences indexed on demand (``JsonlLines``, or lists), never copied into
    one list. Supports ``len``, integer indexing and iteration; positions as ``Rows``."""

    def __init__(self):
        super().__init__()
        self._parts: list = []
        self._starts: list[int] = []
        self._len = 0

    def add(self, rows, source: str, unit: str, numbers=None) -> None:
        self.segments.append((self._len, source, unit, numbers))
        self._parts.append(rows)
        self._starts.append(self._len)
        self._len += len(rows)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if not isinstance(i, int) or not 0 <= i < self._len:
            raise IndexError(f"LazyRows index {i!r} (of {self._len} rows; integer indices only)")
        k = bisect.bisect_right(self._starts, i) - 1
        return self._parts[k][i - self._starts[k]]

    def __iter__(self):
        return (self[i] for i in range(self._len))


def load_hub(repo_id: str, *args, split: str, **kwargs):
    """``datasets.load_dataset`` with an error that says how to work offline."""
    try:
        return datasets.load_dataset(repo_id, *args, split=split, **kwargs)
    except Exception as e:  # network, auth, missing split: all end the same way for the user
        raise DataSourceError(
            f"could not load Hub dataset {repo_id!r} (split {split!r}): {type(e).__name__}: {e}; "
            f"offline, set {option('data_dir')} to a folder with local copies (layout: "
            "nanosft/resources/data/README.md; pkg://nanosft/resources/data is the small embedded copy)"
        ) from e
