"""Files written the way a reader never sees half of one, with the permissions an ordinary new file gets."""

from __future__ import annotations

import json
import os
import tempfile


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open()`` gives a new file (``mkstemp`` always gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def follow_umask(folder: str, suffix: str) -> None:
    """Give the files of ``folder`` ending in ``suffix`` the mode ``umask_mode()`` (e.g. ``*.safetensors``,
    which safetensors 0.8 writes with mode 0600 whatever the umask)."""
    mode = umask_mode()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(suffix) and os.path.isfile(path):
            os.chmod(path, mode)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and ``os.replace``, so a
    reader never sees half a file; the temp file is removed on any error. The file gets the permissions
    of an ordinary new file (0666 less the umask), not ``mkstemp``'s 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    """``write_text_atomic`` of ``obj`` as indented JSON (``default=str``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))
