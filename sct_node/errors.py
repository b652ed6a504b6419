"""The exceptions of the ``sct_node`` package.

Every error that bad input can cause is a subclass of :class:`SctNodeError`
with a message that says what was wrong, where (file, slice, attribute) and
what was expected. Messages never contain patient names, IDs or birth dates:
files are named by path and instances by SOP Instance UID.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import SctError


class SctNodeError(SctError):
    """Base class of every error ``sct_node`` raises on bad input or a failed operation."""


class ConfigError(SctNodeError):
    """A configuration value or command-line argument is invalid."""


class OutputError(SctNodeError):
    """An output could not be written."""


class InputError(SctNodeError):
    """Input data was refused. ``path`` names the offending file when there is one."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class NoDicomInputError(InputError):
    """The input holds no DICOM image instances at all."""


class NotDicomError(InputError):
    """A file is not a DICOM Part 10 file (nor a raw DICOM data set)."""


class CorruptFileError(InputError):
    """A DICOM file is truncated or cannot be parsed or decoded."""


class MissingPixelDataError(InputError):
    """An image instance has no Pixel Data."""


class UnsupportedInstanceError(InputError):
    """An instance's SOP Class, photometric interpretation or transfer syntax is not supported."""


class MixedSeriesError(InputError):
    """Instances of more than one series were given where one was expected."""


class MixedOrientationError(InputError):
    """Slices of one series do not share one Image Orientation (Patient)."""


class InconsistentGeometryError(InputError):
    """Slices differ in size or pixel spacing, or do not stack along their normal."""


class NonUniformSpacingError(InputError):
    """The distance between neighbouring slices is not constant."""


class MissingSliceError(NonUniformSpacingError):
    """A gap between neighbouring slices is a multiple of the slice spacing."""


class DuplicatePositionError(InputError):
    """Two different images lie at the same slice position."""


class MultiVolumeError(InputError):
    """A series holds several volumes (echoes, time points) and no selection rule was given."""


class TooFewSlicesError(InputError):
    """A series has too few slices to form a volume."""
