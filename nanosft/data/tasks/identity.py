"""nanochat's identity conversations: who the model is (962 multi-turn synthetic chats).

Local: ``<data_dir>/identity/identity_conversations.jsonl`` (each line a list of ``{role, content}``);
online the same file is downloaded from nanochat's public bucket (nanochat/scripts/chat_sft.py).
"""

from __future__ import annotations

import json
import os
import urllib.request

from ...errors import option
from . import DataSourceError, read_jsonl, require_file

URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"


def load_conversations(split: str = "train", data_dir: str | None = None, path: str | None = None) -> list:
    """All identity conversations (there is only one split). ``path`` overrides the file location.

    A local file comes back as ``Rows`` (1-based line numbers for errors); a line that is not JSON is an
    ``InvalidLine``, which the mixture rejects, or skips with ``skip_invalid``."""
    if path is None and data_dir is not None:
        path = os.path.join(data_dir, "identity", "identity_conversations.jsonl")
    if path is None:
        try:
            with urllib.request.urlopen(URL, timeout=60) as f:
                return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
        except OSError as e:
            raise DataSourceError(f"could not download {URL}: {e}; offline, set {option('data_dir')}") from e
    require_file(path, f"download it from {URL}")
    return read_jsonl(path, keep_invalid=True)  # invalid lines: rejected (or skipped) by load_mixture
