"""Store files replaced whole: the TinyDB snapshot and its packed cache."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: Every store file: it holds device tokens and node secrets.
FILE_MODE = 0o600


def replace_file(path: Path, fill: Callable[[IO[Any]], None], *, temp_prefix: str,
                 binary: bool = False) -> None:
    """Replace ``path`` (mode 0600) with what ``fill`` writes to the handle it is given
    (UTF-8 text, or bytes when ``binary``): a temporary file beside it, fsynced, then
    renamed over it. On any failure ``path`` is left as it was and the temporary file
    removed. (The caller fsyncs the folder when the rename itself must last.)"""
    fd, temp = tempfile.mkstemp(prefix=temp_prefix, dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with (os.fdopen(fd, "wb") if binary
              else os.fdopen(fd, "w", encoding="utf-8")) as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
