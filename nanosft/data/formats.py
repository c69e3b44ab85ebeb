"""Bring your own data: the conversation formats and file types users already have, as nanochat messages.

One registry entry per format (``FORMATS``), each a converter from one source row to a list of
``{"role", "content"}`` messages, plus the default names of the fields it reads (overridable per dataset):

- ``messages`` (default): ``{"messages": [{"role", "content"}, ...]}`` or a bare list; nanochat's own shape,
  content a string or parts (``text``, ``python``, ``python_output``).
- ``sharegpt`` (ShareGPT / FastChat): ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}``;
  ``from`` values human/user, gpt/assistant/model and system map to our roles, an optional top-level
  ``system`` field becomes the system message.
- ``alpaca``: ``{"instruction", "input", "output", "system"?}``; the user turn is ``instruction + "\\n\\n" +
  input`` when ``input`` is non-empty, else ``instruction`` alone (Stanford Alpaca's two prompt shapes).
- ``openai`` (chat-completions / fine-tuning JSONL): ``{"messages": [...]}`` with string content or ``text``
  parts, ``developer`` read as ``system``. Tool or function calls (``tool_calls``, ``function_call``, role
  ``tool``/``function``) are refused: they are JSON calls, while nanochat's tool is python code written as
  assistant ``python`` / ``python_output`` parts (nanochat/tokenizer.py), which such a row may already use.

A system message (the row's own, or a dataset's ``system_prompt``) is merged into the first user turn by
``nanosft.format.template.normalize_conversation``, as nanochat does.

Files (``read_files``): ``.jsonl`` and ``.json`` (an array) are read with the standard ``json`` module, which
knows the 1-based line of a bad JSON line and keeps each row exactly as written; ``.parquet`` and ``.csv`` go
through ``datasets``' file loaders (CSV cells are read as strings, empty cells as ``""``). A path may be a
glob or a list of paths; every row remembers its file and 1-based line (JSONL) or row (other types) for
error messages. Formats convert lazily: only the rows kept by ``max_rows`` are converted.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import datasets

from ..format.template import ConversationError
from .tasks import DataSourceError, JsonlLines, LazyRows, Rows, read_json_array, require_file

ROLES = ("system", "user", "assistant")
FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")


def _json_field(value, name: str):
    """A list stored as JSON text (a CSV cell, a string column) is decoded; anything else is returned as is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConversationError(f"field `{name}` is a string but not valid JSON ({e.msg})") from None
    return value


def _message_list(row, fields: dict, fmt: str):
    if not isinstance(row, dict):
        return row  # a bare list of messages (or garbage that normalize_conversation names)
    msgs = row.get(fields["messages"])
    if msgs is None:
        raise ConversationError(f"no `{fields['messages']}` field in the row (keys: {', '.join(map(str, row))}); "
                                f"set `format:` or `messages_field:` (format {fmt})")
    return _json_field(msgs, fields["messages"])


def _turns(row, fields: dict, roles: dict, fmt: str) -> list:
    """``messages`` / ``sharegpt``: a list of turns with a role field and a content field."""
    msgs = _message_list(row, fields, fmt)
    if fmt == "messages" and fields["role"] == "role" and fields["content"] == "content" and not roles:
        return msgs  # nanochat's shape: normalize_conversation validates it
    if not isinstance(msgs, list):
        raise ConversationError(f"`{fields['messages']}` must be a list of turns, got {type(msgs).__name__}")
    out = []
    system = row.get(fields["system"]) if isinstance(row, dict) and "system" in fields else None
    if system:
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(msgs):
        if not isinstance(turn, dict):
            raise ConversationError(f"message {i}: expected a dict with `{fields['role']}` and `{fields['content']}`, "
                                    f"got {type(turn).__name__}")
        role = turn.get(fields["role"])
        ours = roles.get(role, role if role in ROLES else None)
        if ours is None:
            raise ConversationError(f"message {i}: unknown {fmt} role {role!r} in `{fields['role']}` (known: "
                                    f"{', '.join(sorted(set(roles) | set(ROLES)))}); map it with `role_map:`")
        out.append({"role": ours, "content": turn.get(fields["content"])})
    return out


def _openai(row, fields: dict, roles: dict, fmt: str) -> list:
    """``openai``: chat-completions messages; tool and function calls refused (see the module docstring)."""
    msgs = _message_list(row, fields, fmt)
    if not isinstance(msgs, list):
        raise ConversationError(f"`{fields['messages']}` must be a list of messages, got {type(msgs).__name__}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue  # normalize_conversation names it
        role = m.get(fields["role"])
        call = ("role " + repr(role) if role in ("tool", "function") else
                "tool_calls" if m.get("tool_calls") else "function_call" if m.get("function_call") else None)
        if call:
            raise ConversationError(
                f"message {i} has {call}: OpenAI tool/function calls are JSON, but nanochat's tool is python code; "
                "write the call as assistant parts {type: python} and {type: python_output}, or drop the row"
            )
    return _turns(msgs, fields, roles, "openai")


def _alpaca(row, fields: dict, roles: dict, fmt: str) -> list:
    """``alpaca``: one user turn (instruction, then input after a blank line) and one assistant turn."""
    if not isinstance(row, dict):
        raise ConversationError(f"an alpaca row is a mapping with `{fields['instruction']}` and `{fields['output']}`, "
                                f"got {type(row).__name__}")
    values = {}
    for key in ("instruction", "input", "output", "system"):
        v = row.get(fields[key])
        if v is not None and not isinstance(v, str):
            raise ConversationError(f"`{fields[key]}` must be a string, got {type(v).__name__}")
        values[key] = v or ""
    for key in ("instruction", "output"):
        if not values[key]:
            raise ConversationError(f"`{fields[key]}` is missing or empty")
    user = values["instruction"] + ("\n\n" + values["input"] if values["input"] else "")
    out = [{"role": "system", "content": values["system"]}] if values["system"] else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": values["output"]}]


@dataclass(frozen=True)
class Format:
    """One conversation format: the converter, the default field names it reads, its default role names.

    ``convert(row, fields, roles, name)`` returns the row as a list of ``{"role", "content"}`` messages (not
    yet validated: ``normalize_conversation`` does that) or raises ``ConversationError`` with the reason.
    """

    convert: Callable
    fields: dict
    roles: dict
    example: str  # one row, as shown in the README


FORMATS: dict[str, Format] = {
    "messages": Format(_turns, {"messages": "messages", "role": "role", "content": "content"}, {},
                       '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}'),
    "sharegpt": Format(_turns, {"messages": "conversations", "role": "from", "content": "value", "system": "system"},
                       {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                        "model": "assistant", "system": "system"},
                       '{"id": "a1", "conversations": [{"from": "human", "value": "Hi"}, '
                       '{"from": "gpt", "value": "Hello!"}]}'),
    "alpaca": Format(_alpaca, {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
                     {}, '{"instruction": "Translate to French.", "input": "cat", "output": "chat"}'),
    "openai": Format(_openai, {"messages": "messages", "role": "role", "content": "content"}, {"developer": "system"},
                     '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": '
                     '[{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Hello!"}]}'),
}

# Dataset keys that rename a field of the format (the format's ``fields`` key they override).
FIELD_KEYS = {"messages_field": "messages", "role_field": "role", "content_field": "content"}


def converter(fmt: str = "messages", field_names: dict | None = None, role_map: dict | None = None,
              system_prompt: str | None = None) -> Callable[[object], list]:
    """A function from one source row to a list of ``{"role", "content"}`` messages.

    Args:
        fmt: a key of ``FORMATS``.
        field_names: overrides of the format's field names, e.g. ``{"messages": "dialog", "role": "speaker"}``.
        role_map: source role -> ``system`` / ``user`` / ``assistant``, merged over the format's own.
        system_prompt: prepended as a system message to every conversation that has none.

    Raises:
        ValueError: unknown format, a field the format does not read, or a role mapped to an unknown role
            (the converter itself raises ``ConversationError`` per row).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    unknown = sorted(set(field_names or {}) - set(spec.fields))
    if unknown:
        raise ValueError(f"format {fmt} has no field(s) {unknown} to rename (it reads {sorted(spec.fields)})")
    bad = {k: v for k, v in (role_map or {}).items() if v not in ROLES}
    if bad:
        raise ValueError(f"role_map: {bad} maps to unknown role(s); map to one of {list(ROLES)}")
    fields = {**spec.fields, **(field_names or {})}
    roles = {**spec.roles, **(role_map or {})}
    convert = spec.convert

    def to_messages(row) -> list:
        msgs = convert(row, fields, roles, fmt)
        if system_prompt and isinstance(msgs, list):
            first = msgs[0] if msgs else None
            if not (isinstance(first, dict) and first.get("role") == "system"):
                msgs = [{"role": "system", "content": system_prompt}, *msgs]
        return msgs

    return to_messages


def expand_paths(path: str | list[str]) -> list[str]:
    """Files named by ``path``: one file, a glob (sorted matches), or a list of either.

    Raises:
        DataSourceError: a file is missing, a glob matches nothing, or a file type is not one of ``FILE_TYPES``.
    """
    files = []
    for p in [path] if isinstance(path, str) else path:
        if glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise DataSourceError(f"no file matches {p}. Check the `path:` of this dataset in the config.")
            files += found
        else:
            files.append(require_file(p, "Check the `path:` of this dataset in the config."))
    for f in files:
        if not f.endswith(FILE_TYPES):
            raise DataSourceError(f"{f}: unknown file type; `path:` takes {', '.join(FILE_TYPES)} files")
    return files


def _read_table(path: str) -> list:
    """Parquet or CSV rows through ``datasets``' packaged loaders; CSV cells as strings, empty ones as ""."""
    kwargs = {}
    if path.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise DataSourceError(f"{path}: empty CSV file (expected a header row)")
        kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                  "keep_default_na": False}
    try:
        ds = datasets.load_dataset(path.rsplit(".", 1)[1], data_files=path, split="train", **kwargs)
    except Exception as e:  # pyarrow/pandas parse errors: name the file
        raise DataSourceError(f"{path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return ds.to_list()


def read_files(path: str | list[str]) -> Rows:
    """All rows of the files named by ``path`` (see ``expand_paths``), in file order.

    Returns:
        ``Rows`` (``LazyRows``: JSON-lines files are parsed row by row when indexed, ``JsonlLines``): raw
        rows (dicts, or lists for bare JSONL message lists), each with its file and 1-based
        line (JSONL) or row (JSON array, Parquet, CSV data row) for ``Rows.where``. A JSONL line that is
        not JSON is an ``InvalidLine`` row (``load_mixture`` rejects it, or skips it with ``skip_invalid``).

    Raises:
        DataSourceError: missing file, no match, unknown type, an invalid JSON array (file and line), an
            unreadable table.
    """
    rows = LazyRows()
    for f in expand_paths(path):
        if f.endswith(".jsonl"):
            part = JsonlLines(f)  # parsed when read; bad lines: InvalidLine rows, rejected or skipped later
            rows.add(part, f, "line", part.numbers)
        elif f.endswith(".json"):
            rows.add(read_json_array(f), f, "row")
        else:
            rows.add(_read_table(f), f, "row")
    return rows
