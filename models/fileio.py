"""File-system helpers shared by the models package (which never imports ``sct_node``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["fsync_directory", "write_atomic", "write_volume_atomic"]


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


def write_volume_atomic(volume, path: Path, compress: bool = True) -> None:
    """Write a :class:`models.volume.Volume` as an image file (``.mha``, ``.nii.gz``: SimpleITK picks the writer
    from the name) so that ``path`` is either absent or complete, and fsync its folder.

    Raises OSError or RuntimeError (SimpleITK); the temporary file is removed.
    """
    import SimpleITK as sitk

    path = Path(path)
    # The temporary name keeps the extension because SimpleITK picks the writer from it.
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.tmp.{path.name}")
    try:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_directory(path.parent)
