"""Datasets as tasks, one module each (nanochat/tasks/): training conversations and eval problems.

Every loader reads from a local ``data_dir`` when one is given (the layout of the embedded copy,
``nanosft/resources/data/README.md``) and from the Hugging Face Hub otherwise, so the same YAML works
offline and online.
A missing local file raises ``DataSourceError`` naming the path and how to obtain the data.
"""

from __future__ import annotations

import json
import os


class DataSourceError(FileNotFoundError):
    """A dataset could not be found or read; the message names the path/dataset and how to get it."""


def require_file(path: str, how_to_get: str) -> str:
    """Return ``path`` if it is a file, else raise ``DataSourceError`` that says how to obtain it."""
    if not os.path.isfile(path):
        raise DataSourceError(f"data file not found: {path}. {how_to_get}")
    return path


def read_jsonl(path: str) -> list:
    """Read a JSON-lines file; a bad line raises ``DataSourceError`` naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataSourceError(f"{path}, line {lineno}: invalid JSON ({e.msg})") from None
    return rows


def load_hub(repo_id: str, *args, split: str, **kwargs):
    """``datasets.load_dataset`` with an error that says how to work offline."""
    import datasets

    try:
        return datasets.load_dataset(repo_id, *args, split=split, **kwargs)
    except Exception as e:  # network, auth, missing split: all end the same way for the user
        raise DataSourceError(
            f"could not load {repo_id!r} (split {split!r}) from the Hugging Face Hub: {type(e).__name__}: {e}. "
            "Offline, set `data_dir:` in the config to a folder with local copies (layout: "
            "nanosft/resources/data/README.md; pkg://nanosft/resources/data is the small embedded copy)."
        ) from e
