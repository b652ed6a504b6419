"""The project's one atomic, durable file write and folder sync (here, the lowest package: dosimetry and sct_node use it too)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # for the annotation only: this module imports no numpy at run time
    from models.volume import Volume

__all__ = ["fsync_directory", "write_atomic", "write_volume_atomic"]


def fsync_directory(directory: Path) -> None:
    """Make the renames inside ``directory`` durable (fsync of the folder itself).

    Raises
    ------
    OSError
        If the folder cannot be opened or synced: the rename may not survive a power loss, and a caller that
        promises durability (the Storage SCP acknowledging an instance) must not go on as if it would.
    """
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], object], temporary_dir: Path | None = None,
                 suffix: str = ".tmp") -> None:
    """Write a file so that ``path`` is either absent or complete and durable: the project's one atomic write.

    ``content`` is the bytes, or a function that writes them to a binary stream. They go to a temporary file
    (in ``temporary_dir``, default the target's folder, which must be on the same file system), which is
    fsynced and renamed into place (``os.replace`` is atomic on POSIX). The caller fsyncs the folder
    (:func:`fsync_directory`) when the rename itself must survive power loss.

    Raises
    ------
    OSError
        If any step fails; the temporary file is removed. Callers turn it into their package's error.
    """
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=temporary_dir or Path(path).parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_volume_atomic(volume: Volume, path: Path, compress: bool = True) -> None:
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
