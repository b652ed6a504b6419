"""Finding and opening DICOM files, with errors that name the file and the reason."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from sct_node.errors import CorruptFileError, NoDicomInputError, NotDicomError

__all__ = ["find_files", "open_dataset"]

#: Files that are routinely found next to DICOM series and are not instances.
_IGNORED_NAMES = frozenset({"DICOMDIR", "Thumbs.db", "desktop.ini", "LOCKFILE", "VERSION"})

#: Media Storage Directory SOP Class (a DICOMDIR); never an image.
_MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"

#: Bytes kept in memory per element when a dataset is opened; larger values
#: (Pixel Data) are read only when the pixels are needed.
_DEFER_SIZE_BYTES = 4096


def find_files(inputs: Iterable[Path | str]) -> list[Path]:
    """List the candidate DICOM files under folders and in file lists.

    Folders are searched recursively. Hidden files (``.name``) and the usual
    non-instance companions (``DICOMDIR``, ``Thumbs.db``) are skipped; every
    other file is a candidate and must be DICOM.

    Parameters
    ----------
    inputs : iterable of path
        Folders and/or files.

    Returns
    -------
    list of pathlib.Path
        Sorted, de-duplicated file paths.

    Raises
    ------
    NoDicomInputError
        If an input does not exist or no candidate file is found.
    """
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for candidate in path.rglob("*"):
                if candidate.is_file() and not _ignored(candidate.relative_to(path)):
                    found.add(candidate)
        elif path.is_file():
            found.add(path)
        else:
            raise NoDicomInputError(f"input {path} does not exist", path)
    if not found:
        names = ", ".join(str(Path(i)) for i in inputs)
        raise NoDicomInputError(f"no files found in {names}")
    return sorted(found)


def _ignored(relative: Path) -> bool:
    return relative.name in _IGNORED_NAMES or any(part.startswith(".") for part in relative.parts)


def open_dataset(path: Path) -> pydicom.Dataset:
    """Open a DICOM file, deferring the reading of large values (Pixel Data).

    Accepts Part 10 files and, as pydicom does with ``force``, raw data sets
    without a preamble only when they start like a DICOM data set.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    pydicom.Dataset
        The data set; Pixel Data (if any) is read on first access.

    Raises
    ------
    NotDicomError
        If the file is not DICOM or is a DICOMDIR.
    CorruptFileError
        If the file is DICOM but cannot be parsed (e.g. truncated header).
    """
    dataset: pydicom.Dataset  # a FileDataset, or a raw data set without preamble
    try:
        dataset = pydicom.dcmread(path, defer_size=_DEFER_SIZE_BYTES)
    except InvalidDicomError:
        dataset = _read_raw_dataset(path)
    except (OSError, EOFError) as error:
        raise CorruptFileError(f"{path}: cannot be read as DICOM ({_reason(error)})", path) from error
    except Exception as error:  # pydicom raises many types on malformed files
        raise CorruptFileError(f"{path}: malformed DICOM ({_reason(error)})", path) from error
    if dataset.file_meta.get("MediaStorageSOPClassUID", None) == _MEDIA_DIRECTORY_STORAGE:
        raise NotDicomError(f"{path}: is a DICOMDIR, not an image instance", path)
    if "SOPClassUID" not in dataset:
        raise NotDicomError(f"{path}: DICOM data set without SOP Class UID (0008,0016)", path)
    return dataset


def _read_raw_dataset(path: Path) -> pydicom.Dataset:
    """Read a file without preamble, refusing anything that does not look like DICOM."""
    with open(path, "rb") as stream:
        head = stream.read(8)
    # A raw data set starts with a group 0x0002 or 0x0008 element tag (either endianness).
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        raise NotDicomError(f"{path}: not a DICOM file (no DICM prefix and no DICOM data set)", path)
    try:
        return pydicom.dcmread(path, force=True, defer_size=_DEFER_SIZE_BYTES)
    except Exception as error:
        raise NotDicomError(f"{path}: not a DICOM file ({_reason(error)})", path) from error


def _reason(error: BaseException) -> str:
    """First line of an exception message, for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
