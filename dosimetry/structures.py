"""Read an RT Structure Set into boolean masks on any image grid.

Each contour is a closed polygon on one image plane. A voxel belongs to a
structure when its centre lies inside the polygons of its slice, combined
with the even-odd rule (so inner contours are holes), which is how planning
systems interpret nested contours. Contours are mapped into the target grid's
continuous index space first, so the grid may differ from the one the
structures were drawn on in origin and spacing; it must share their
orientation (contours must lie on the grid's slice planes, within half a
slice).

rt-utils is not used here: it rounds contour vertices to whole pixels (which
costs up to a boundary pixel ring) and has had row/column mix-ups on
non-square images (its issues 88 and 92).

References
----------
DICOM PS3.3 C.8.8.5 (Structure Set), C.8.8.6 (ROI Contour); C.8.8.6.3
(contours with holes: "inner" contours of the same ROI).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath

from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["StructureError", "StructureMask", "read_structures"]

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


class StructureError(DosimetryError):
    """An RT Structure Set cannot be used on the given image."""


@dataclass(frozen=True)
class StructureMask:
    """One ROI rasterised on a grid.

    Attributes
    ----------
    name : str
        ROI Name.
    number : int
        ROI Number.
    interpreted_type : str
        RT ROI Interpreted Type (EXTERNAL, PTV, ORGAN, ...), "" when absent.
    mask : numpy.ndarray
        Boolean (z, y, x) mask on the target grid.
    """

    name: str
    number: int
    interpreted_type: str
    mask: np.ndarray

    @property
    def volume_cc(self) -> float:
        """Number of voxels; multiply by the voxel volume for cc (see :func:`volume_cc`)."""
        return float(self.mask.sum())


def read_structures(source: Path | pydicom.Dataset, grid: Volume, *, frame_of_reference_uid: str | None = None,
                    referenced_series_uid: str | Collection[str] | None = None, names: list[str] | None = None,
                    allow_empty: bool = False) -> list[StructureMask]:
    """Rasterise the ROIs of an RT Structure Set on ``grid``.

    Parameters
    ----------
    source : path or pydicom.Dataset
        The RT Structure Set.
    grid : Volume
        Target grid (only its geometry is used).
    frame_of_reference_uid : str or None
        When given, the structure set must be in this Frame of Reference.
    referenced_series_uid : str, collection of str, or None
        When given, the structure set must reference this image series (or one of these).
    names : list of str or None
        ROIs to read (by name); None reads all.
    allow_empty : bool
        Return ROIs with no voxel on the grid instead of raising.

    Returns
    -------
    list of StructureMask
        In the order of the Structure Set ROI Sequence.

    Raises
    ------
    StructureError
        Not an RT Structure Set, another frame of reference or series, contours off the grid's planes,
        a requested name missing, or an empty structure.
    """
    dataset = pydicom.dcmread(source) if not isinstance(source, pydicom.Dataset) else source
    where = str(source) if not isinstance(source, pydicom.Dataset) else "RT Structure Set"
    if str(dataset.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise StructureError(f"{where}: not an RT Structure Set (SOP Class {dataset.get('SOPClassUID', 'none')})")
    frames = [str(item.FrameOfReferenceUID) for item in dataset.get("ReferencedFrameOfReferenceSequence", [])]
    if frame_of_reference_uid is not None and frame_of_reference_uid not in frames:
        raise StructureError(f"{where}: structures are in frame of reference {', '.join(frames) or '(none)'}, "
                             f"not the image's {frame_of_reference_uid}")
    if referenced_series_uid is not None:
        series = {str(s.SeriesInstanceUID) for f in dataset.get("ReferencedFrameOfReferenceSequence", [])
                  for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])}
        accepted = {referenced_series_uid} if isinstance(referenced_series_uid, str) else set(referenced_series_uid)
        if not series & accepted:
            raise StructureError(f"{where}: structures were drawn on series {', '.join(sorted(series)) or '(none)'}, "
                                 f"not on {' or '.join(sorted(accepted))}")
    contours_of = {int(item.ReferencedROINumber): item for item in dataset.get("ROIContourSequence", [])}
    types = {int(item.ReferencedROINumber): str(item.get("RTROIInterpretedType", "") or "")
             for item in dataset.get("RTROIObservationsSequence", [])}
    rois = [(int(item.ROINumber), str(item.ROIName)) for item in dataset.get("StructureSetROISequence", [])]
    if names is not None:
        missing = sorted(set(names) - {name for _, name in rois})
        if missing:
            raise StructureError(f"{where}: no ROI named {', '.join(missing)} (found {', '.join(n for _, n in rois)})")
        rois = [(number, name) for number, name in rois if name in names]
    result = []
    for number, name in rois:
        mask = _rasterise(contours_of.get(number), grid, f"{where}: ROI {name!r}")
        if not mask.any() and not allow_empty:
            raise StructureError(f"{where}: ROI {name!r} has no voxel on the image grid (empty or outside it)")
        result.append(StructureMask(name, number, types.get(number, ""), mask))
    return result


def _rasterise(contours: pydicom.Dataset | None, grid: Volume, where: str) -> np.ndarray:
    nz, ny, nx = grid.shape
    mask = np.zeros(grid.shape, dtype=bool)
    if contours is None:
        return mask
    rows, columns = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([columns.ravel(), rows.ravel()]).astype(np.float64)
    for contour in contours.get("ContourSequence", []):
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
        if kind == "POINT":
            continue
        if kind not in ("CLOSED_PLANAR", "OPEN_PLANAR", "OPEN_NONPLANAR"):
            raise StructureError(f"{where}: unsupported contour type {kind}")
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        index = grid.patient_to_index(points)
        k = float(np.median(index[:, 2]))
        if np.abs(index[:, 2] - k).max() > 0.5:
            raise StructureError(f"{where}: a contour is not parallel to the image slices (oblique or "
                                 f"non-planar relative to the grid)")
        slice_index = int(np.floor(k + 0.5))
        if not 0 <= slice_index < nz or kind != "CLOSED_PLANAR" or len(points) < 3:
            continue
        inside = PolygonPath(index[:, :2]).contains_points(centres).reshape(ny, nx)
        mask[slice_index] ^= inside
    return mask


def voxel_volume_cc(grid: Volume) -> float:
    """Volume of one voxel in cm³."""
    return float(np.prod(grid.spacing_mm)) / 1000.0
