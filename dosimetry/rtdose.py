"""Read an RT Dose object into a dose :class:`~models.volume.Volume` in Gy.

RT Dose is a multi-frame image: frame *k* lies at Image Position (Patient)
plus Grid Frame Offset Vector[k] along the normal (PS3.3 C.8.8.3.2: offsets
are relative to the first frame's position when the first value is 0,
otherwise they are absolute positions along the normal — both forms occur in
the wild). Stored values times Dose Grid Scaling give the dose in Gy.

References
----------
DICOM PS3.3 C.8.8.3 (RT Dose Module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from dosimetry.errors import DosimetryError
from models.errors import GeometryError
from models.volume import Volume

__all__ = ["DoseGrid", "RtDoseError", "read_rt_dose"]

RT_DOSE_STORAGE = pydicom.uid.RTDoseStorage  # the number is written once, in pydicom's registry


class RtDoseError(DosimetryError):
    """An RT Dose object cannot be read as a dose grid."""


@dataclass(frozen=True)
class DoseGrid:
    """A dose distribution with where it came from."""

    dose_gy: Volume
    frame_of_reference_uid: str | None
    summation_type: str
    referenced_plan_uid: str | None


def read_rt_dose(source: Path | pydicom.Dataset, *, allow_relative: bool = False) -> DoseGrid:
    """Read an RT Dose file.

    Parameters
    ----------
    allow_relative : bool
        Accept Dose Units RELATIVE (enough for gamma in % of the maximum); the values are then not Gy.

    Raises
    ------
    RtDoseError
        Not an RT Dose, relative dose units, missing geometry, uneven frame spacing.
    """
    dataset = pydicom.dcmread(source) if not isinstance(source, pydicom.Dataset) else source
    where = str(source) if not isinstance(source, pydicom.Dataset) else "RT Dose"
    if str(dataset.get("SOPClassUID", "")) != RT_DOSE_STORAGE:
        raise RtDoseError(f"{where}: not an RT Dose (SOP Class {dataset.get('SOPClassUID', 'none')})")
    if str(dataset.get("DoseUnits", "GY")).upper() != "GY" and not allow_relative:
        raise RtDoseError(f"{where}: Dose Units {dataset.DoseUnits}; only absolute dose in GY is supported")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "DoseGridScaling"):
        if dataset.get(keyword, None) in (None, ""):
            raise RtDoseError(f"{where}: {keyword} is missing")
    pixels = dataset.pixel_array.astype(np.float64) * float(dataset.DoseGridScaling)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    frames = pixels.shape[0]
    cosines = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
    row, column = cosines[:3], cosines[3:]
    normal = np.cross(row, column)
    origin = np.asarray(dataset.ImagePositionPatient, dtype=np.float64)
    if frames > 1:
        offsets = np.asarray(dataset.get("GridFrameOffsetVector", []), dtype=np.float64)
        if offsets.shape != (frames,):
            raise RtDoseError(f"{where}: Grid Frame Offset Vector has {offsets.size} values for {frames} frames")
        if offsets[0] != 0:  # absolute positions along the normal: make them relative to the first frame
            offsets = offsets - float(origin @ normal)
        order = np.argsort(offsets)  # frames may run against the normal; the volume's slices follow it
        pixels, offsets = pixels[order], offsets[order]
        origin = origin + normal * offsets[0]
        steps = np.diff(offsets)
        if steps[0] <= 0 or np.any(np.abs(steps - steps[0]) > 1e-3 * steps[0]):
            raise RtDoseError(f"{where}: frames are not evenly spaced ({steps.min():.3f}..{steps.max():.3f} mm)")
        slice_spacing = float(steps[0])
    else:
        slice_spacing = float(dataset.get("SliceThickness", None) or 1.0)
    spacing = (float(dataset.PixelSpacing[1]), float(dataset.PixelSpacing[0]), slice_spacing)
    direction = np.column_stack([row, column, normal])
    referenced = dataset.get("ReferencedRTPlanSequence", None)
    plan_uid = str(referenced[0].ReferencedSOPInstanceUID) if referenced else None
    try:
        volume = Volume(pixels.astype(np.float32), spacing, tuple(origin), direction)
    except GeometryError as error:  # the file's geometry, not a model's: an RT Dose error
        raise RtDoseError(f"{where}: the dose grid's geometry is not usable ({error})") from None
    return DoseGrid(volume, str(dataset.get("FrameOfReferenceUID", "")) or None,
                    str(dataset.get("DoseSummationType", "")), plan_uid)
