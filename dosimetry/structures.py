"""Read an RT Structure Set into boolean masks on any image grid.

Each contour is a closed polygon on one contour plane. A voxel belongs to a
structure when its centre lies inside the polygons of the contour plane
nearest to its slice, combined with the even-odd rule (so inner contours are
holes, and keyhole contours work as well), which is how planning systems
interpret nested contours. Contours are mapped into the target grid's
continuous index space first, so the grid may differ from the one the
structures were drawn on in origin and spacing; it must share their
orientation (every contour parallel to the grid's slices).

Slices and contour planes need not coincide. Each grid slice takes the
contours of the nearest contour plane when that plane lies within half the
contour-plane spacing (the slab each plane stands for); so a grid coarser
than the contours takes one plane per slice (combining the planes of several
contours on one slice would XOR them into nonsense: 39-48 % of the true
volume), and a grid finer than the contours repeats each plane across its
slab instead of leaving slices empty.

Super-sampling (:meth:`StructureMask.dose_samples` with ``supersample``): a
structure's boundary voxels (those whose centre decision is not shared by all
their in-plane neighbours) are also tested at ``supersample`` x
``supersample`` sub-voxel points against the structure's own polygons, so the
DVH can give each its inside fraction and the dose at the inside points;
interior voxels count whole. It is done on demand, for the structures a DVH
is computed for (not for BODY or bones). This is
what a DVH calculator's in-plane super-sampling does (dicompyler-core's
``interpolation_resolution``), and it matters for small structures on coarse
images, where whole boundary voxels are a large share of the volume.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath

from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["StructureError", "StructureMask", "read_structures"]

RT_STRUCTURE_SET_STORAGE = pydicom.uid.RTStructureSetStorage  # the number is written once, in pydicom's registry


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
    #: The polygons (continuous x, y grid indices) each slice of ``mask`` was rasterised from; None for a mask
    #: made otherwise, which then cannot be super-sampled.
    polygons: dict[int, list[np.ndarray]] | None = field(default=None, repr=False, compare=False)

    @property
    def volume_cc(self) -> float:
        """Number of voxels; multiply by the voxel volume for cc (see :func:`volume_cc`)."""
        return float(self.mask.sum())

    def dose_samples(self, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(points as continuous (x, y, z) grid indices, weights in voxels) at which a DVH reads the dose.

        With ``supersample`` n > 1 and the structure's polygons: the centre of every interior voxel (weight 1)
        and the inside points of an n x n sub-grid of every boundary voxel (weight 1 / n**2, module
        docstring); otherwise every voxel centre of ``mask``.
        """
        if int(supersample) < 1:
            raise StructureError(f"supersample must be a positive integer; found {supersample!r}")
        if supersample == 1 or self.polygons is None or not self.mask.any():
            centres = np.argwhere(self.mask)[:, ::-1].astype(np.float64)
            return centres, np.ones(len(centres))
        boundary, inside = _supersample_boundary(self.polygons, self.mask, int(supersample))
        interior = np.argwhere(self.mask & ~boundary)[:, ::-1].astype(np.float64)
        return (np.concatenate([interior, inside]),
                np.concatenate([np.ones(len(interior)), np.full(len(inside), 1.0 / int(supersample) ** 2)]))


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
        label = f"{where}: ROI {name!r}"
        planes = _contour_planes(contours_of.get(number), grid, label)
        mask = _rasterise(planes, grid)
        if not mask.any() and not allow_empty:
            raise StructureError(f"{label} has no voxel on the image grid (empty or outside it)")
        result.append(StructureMask(name, number, types.get(number, ""), mask, planes))
    return result


def _contour_planes(contours: pydicom.Dataset | None, grid: Volume, where: str) -> dict[int, list[np.ndarray]]:
    """The polygons (continuous x, y grid indices) each grid slice takes: those of the nearest contour plane
    within half the contour-plane spacing (module docstring)."""
    by_plane: dict[float, list[np.ndarray]] = {}
    for contour in (contours.get("ContourSequence", []) if contours is not None else []):
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
        if kind != "CLOSED_PLANAR" or len(points) < 3:
            continue
        plane = next((p for p in by_plane if abs(p - k) < 1e-3), round(k, 4))
        by_plane.setdefault(plane, []).append(index[:, :2])
    if not by_plane:
        return {}
    positions = np.asarray(sorted(by_plane))
    # The slab each plane stands for: half the spacing of the contour planes on either side (half a grid
    # slice for a single plane).
    half = 0.5 * float(np.median(np.diff(positions))) if len(positions) > 1 else 0.5
    half = max(half, 0.5)
    result: dict[int, list[np.ndarray]] = {}
    for k in range(grid.shape[0]):
        nearest = int(np.argmin(np.abs(positions - k)))
        if abs(positions[nearest] - k) <= half + 1e-6:
            result[k] = by_plane[float(positions[nearest])]
    return result


def _inside(polygons: list[np.ndarray], points_xy: np.ndarray) -> np.ndarray:
    """Even-odd combination of the polygons at the points."""
    inside = np.zeros(len(points_xy), dtype=bool)
    for polygon in polygons:
        inside ^= PolygonPath(polygon).contains_points(points_xy)
    return inside


def _rasterise(planes: dict[int, list[np.ndarray]], grid: Volume) -> np.ndarray:
    _, ny, nx = grid.shape
    mask = np.zeros(grid.shape, dtype=bool)
    rows, columns = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([columns.ravel(), rows.ravel()]).astype(np.float64)
    for k, polygons in planes.items():
        mask[k] = _inside(polygons, centres).reshape(ny, nx)
    return mask


def _supersample_boundary(planes: dict[int, list[np.ndarray]], mask: np.ndarray,
                          factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(boundary voxels, inside sub-voxel points as (x, y, z) indices) of one structure."""
    from scipy import ndimage

    ring = np.ones((1, 3, 3), dtype=bool)
    boundary = ndimage.binary_dilation(mask, ring) & ~ndimage.binary_erosion(mask, ring, border_value=0)
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    # Contours written from masks run along half-pixel lines and 45-degree corner cuts through them; a regular
    # sub-grid puts points exactly on those edges, where inside/outside is a tie (a 1 % volume bias on a
    # 9 cc rectum at 4 x 4). Unequal shifts of a few thousandths of a voxel take every point off them.
    dx, dy = np.meshgrid(offsets + 1.3e-3, offsets + 2.9e-3)
    sub = np.column_stack([dx.ravel(), dy.ravel()])
    found = []
    for k in map(int, np.flatnonzero(boundary.any(axis=(1, 2)))):
        voxels = np.argwhere(boundary[k])[:, ::-1].astype(np.float64)  # (x, y)
        if k not in planes:
            continue
        candidates = (voxels[:, None, :] + sub[None, :, :]).reshape(-1, 2)
        inside = _inside(planes[k], candidates)
        found.append(np.column_stack([candidates[inside], np.full(int(inside.sum()), float(k))]))
    points = np.concatenate(found) if found else np.zeros((0, 3))
    return boundary, points


def voxel_volume_cc(grid: Volume) -> float:
    """Volume of one voxel in cm³."""
    return float(np.prod(grid.spacing_mm)) / 1000.0
