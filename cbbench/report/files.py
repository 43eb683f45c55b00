"""Report files are written whole or not at all: to a temporary file beside the target, then renamed.

A full disk or a kill leaves the previous report (or nothing), never a truncated
markdown or a 0-byte PNG, and a directory in a report's place is a clear error.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from cbbench.errors import OutputError


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to produce the file, then move it onto ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: a directory is in its place; move it aside (or choose another "
                          "--results), then run 'cbbench report' (the results are in the store)")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain open() would give, not mkstemp's owner-only 0600
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{exc.strerror or exc}"
        raise OutputError(f"cannot write {path}: {why}. The results are in the store: fix that, then run "
                          f"'cbbench report --results {path.parent}' to write the report again") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
