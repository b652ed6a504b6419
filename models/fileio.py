"""File-system helpers shared by the models package (which never imports ``sct_node``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["fsync_directory", "write_atomic"]


def fsync_directory(directory: Path) -> None:
    """Persist the renames in ``directory``; silently skipped where a directory cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent or complete: temporary file, fsync, rename.

    Raises OSError (the temporary file is removed); callers turn it into their package's error.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
