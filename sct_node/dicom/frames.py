"""One 2D image of a series, whether a single-frame instance or one frame of a multi-frame one.

Classic images carry their geometry at the top level of the data set; Enhanced
(multi-frame) images carry it in the Shared and Per-frame Functional Groups.
:func:`frames_of` hides the difference so that the series reader sees a flat
list of :class:`Frame` objects.

References
----------
DICOM PS3.3 C.7.6.2 Image Plane Module; C.7.6.16 Multi-frame Functional Groups
Module; C.7.6.16.2.1 Pixel Measures, C.7.6.16.2.3 Plane Position (Patient),
C.7.6.16.2.4 Plane Orientation (Patient), C.7.6.16.2.9 Pixel Value
Transformation, C.8.13.5.9 MR Echo Macro.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pydicom

from sct_node.errors import InconsistentGeometryError, MissingPixelDataError, UnsupportedInstanceError

__all__ = ["Frame", "frames_of"]


@dataclass(frozen=True)
class Frame:
    """Header facts of one 2D image; the pixels are read later.

    Attributes
    ----------
    path : pathlib.Path
        File holding the image.
    frame_index : int or None
        0-based frame index in a multi-frame instance; None for single-frame.
    sop_class_uid, sop_instance_uid, series_instance_uid : str
        Identity of the instance and its series.
    position_mm : numpy.ndarray
        Image Position (Patient) of the first pixel, (x, y, z) mm.
    row_direction, column_direction : numpy.ndarray
        Unit vectors of Image Orientation (Patient): along a row (increasing
        column index) and along a column (increasing row index).
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing) as in Pixel Spacing (0028,0030).
    rows, columns : int
        Image size.
    rescale_slope, rescale_intercept : float
        Modality LUT; identity when the instance has none.
    volume_key : tuple
        (echo time ms, temporal position) — what tells apart volumes that
        share slice positions (multi-echo, dynamic series). ``None`` entries
        mean the attribute is absent.
    """

    path: Path
    frame_index: int | None
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    position_mm: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    rows: int
    columns: int
    rescale_slope: float
    rescale_intercept: float
    volume_key: tuple[float | None, int | None]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, row direction x column direction."""
        return np.cross(self.row_direction, self.column_direction)

    @property
    def frame_number(self) -> int | None:
        """1-based Referenced Frame Number, or None for a single-frame image."""
        return None if self.frame_index is None else self.frame_index + 1

    def describe(self) -> str:
        """Where this image is, for error messages."""
        if self.frame_index is None:
            return str(self.path)
        return f"{self.path} frame {self.frame_index + 1}"


class _Instance(TypedDict):
    """The fields of :class:`Frame` that every frame of an instance shares."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    rows: int
    columns: int


def frames_of(dataset: pydicom.Dataset, path: Path) -> list[Frame]:
    """Split an image instance into its frames.

    Parameters
    ----------
    dataset : pydicom.Dataset
        The instance, as opened by :func:`sct_node.dicom.files.open_dataset`.
    path : pathlib.Path
        Its file, for error messages.

    Returns
    -------
    list of Frame
        One entry for a single-frame image, one per frame otherwise.

    Raises
    ------
    MissingPixelDataError
        If the instance has no Pixel Data.
    UnsupportedInstanceError
        If the image is not single-sample greyscale.
    InconsistentGeometryError
        If geometry attributes are missing or malformed.
    """
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise MissingPixelDataError(f"{path}: no Pixel Data (7FE0,0010) in this image instance", path)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedInstanceError(
            f"{path}: expected a greyscale image (1 sample, MONOCHROME1/2); found {samples} samples, {photometric}",
            path,
        )
    common = _Instance(
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(_required(dataset, "SOPInstanceUID", path)),
        series_instance_uid=str(_required(dataset, "SeriesInstanceUID", path)),
        rows=int(_required(dataset, "Rows", path)),
        columns=int(_required(dataset, "Columns", path)),
    )
    if "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset:
        return _enhanced_frames(dataset, path, common)
    row, column = _orientation(_required(dataset, "ImageOrientationPatient", path), path)
    return [
        Frame(
            frame_index=None,
            position_mm=_vector(_required(dataset, "ImagePositionPatient", path), path, "ImagePositionPatient"),
            row_direction=row,
            column_direction=column,
            pixel_spacing_mm=_spacing(_required(dataset, "PixelSpacing", path), path),
            rescale_slope=float(dataset.get("RescaleSlope", 1.0) or 1.0),
            rescale_intercept=float(dataset.get("RescaleIntercept", 0.0) or 0.0),
            volume_key=(_optional_float(dataset, "EchoTime"), _optional_int(dataset, "TemporalPositionIdentifier")),
            **common,
        )
    ]


def _enhanced_frames(dataset: pydicom.Dataset, path: Path, common: _Instance) -> list[Frame]:
    number_of_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    shared = dataset.SharedFunctionalGroupsSequence[0] if dataset.get("SharedFunctionalGroupsSequence") else None
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != number_of_frames:
        raise InconsistentGeometryError(
            f"{path}: Per-frame Functional Groups Sequence has {len(per_frame)} items "
            f"for {number_of_frames} frames",
            path,
        )
    frames: list[Frame] = []
    for index in range(number_of_frames):
        groups = [per_frame[index]] if per_frame else []
        if shared is not None:
            groups.append(shared)  # per-frame values take precedence over shared ones
        where = f"{path} frame {index + 1}"

        def macro(sequence: str, keyword: str, groups: list[pydicom.Dataset] = groups, where: str = where) -> Any:
            for group in groups:
                items = group.get(sequence)
                if items and keyword in items[0]:
                    return items[0][keyword].value
            return None

        position = macro("PlanePositionSequence", "ImagePositionPatient")
        orientation = macro("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = macro("PixelMeasuresSequence", "PixelSpacing")
        for value, name in ((position, "ImagePositionPatient"), (orientation, "ImageOrientationPatient"),
                            (spacing, "PixelSpacing")):
            if value is None:
                raise InconsistentGeometryError(f"{where}: no {name} in the functional groups", path)
        row, column = _orientation(orientation, path)
        slope = macro("PixelValueTransformationSequence", "RescaleSlope")
        intercept = macro("PixelValueTransformationSequence", "RescaleIntercept")
        echo = macro("MREchoSequence", "EffectiveEchoTime")
        temporal = macro("FrameContentSequence", "TemporalPositionIndex")
        frames.append(
            Frame(
                frame_index=index,
                position_mm=_vector(position, path, "ImagePositionPatient"),
                row_direction=row,
                column_direction=column,
                pixel_spacing_mm=_spacing(spacing, path),
                rescale_slope=float(slope) if slope not in (None, "") else 1.0,
                rescale_intercept=float(intercept) if intercept not in (None, "") else 0.0,
                volume_key=(float(echo) if echo not in (None, "") else None,
                            int(temporal) if temporal not in (None, "") else None),
                **common,
            )
        )
    return frames


def _required(dataset: pydicom.Dataset, keyword: str, path: Path) -> Any:
    value = dataset.get(keyword, None)
    if value is None or value == "":
        raise InconsistentGeometryError(f"{path}: required attribute {keyword} is missing or empty", path)
    return value


def _vector(value: Any, path: Path, keyword: str) -> np.ndarray:
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InconsistentGeometryError(f"{path}: {keyword} is not numeric ({value!r})", path) from error
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise InconsistentGeometryError(f"{path}: {keyword} must have 3 finite values; found {list(value)}", path)
    return vector


def _orientation(value: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InconsistentGeometryError(f"{path}: ImageOrientationPatient is not numeric ({value!r})", path) from error
    if cosines.shape != (6,):
        raise InconsistentGeometryError(f"{path}: ImageOrientationPatient must have 6 values; found {len(cosines)}", path)
    row, column = cosines[:3], cosines[3:]
    norms = np.linalg.norm(row), np.linalg.norm(column)
    if min(norms) < 0.9 or max(norms) > 1.1 or abs(float(row @ column)) > 0.01:
        raise InconsistentGeometryError(
            f"{path}: ImageOrientationPatient {cosines.tolist()} is not two orthogonal unit vectors", path
        )
    row = row / norms[0]
    column = column - (column @ row) * row  # remove rounding skew so the direction matrix is orthonormal
    return row, column / np.linalg.norm(column)


def _spacing(value: Any, path: Path) -> tuple[float, float]:
    try:
        spacing = tuple(float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise InconsistentGeometryError(f"{path}: PixelSpacing is not numeric ({value!r})", path) from error
    if len(spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InconsistentGeometryError(f"{path}: PixelSpacing must be two positive numbers; found {list(value)}", path)
    return spacing  # two values: checked above


def _optional_float(dataset: pydicom.Dataset, keyword: str) -> float | None:
    value = dataset.get(keyword, None)
    return float(value) if value not in (None, "") else None


def _optional_int(dataset: pydicom.Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword, None)
    return int(value) if value not in (None, "") else None
