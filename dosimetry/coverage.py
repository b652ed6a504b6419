"""Whether the sCT covers the body and the MR's slices: field-of-view truncation and slice coverage.

:func:`field_of_view_truncation` finds slices whose body runs off the
in-plane image; :func:`slice_coverage` checks that the sCT has exactly the
MR's slices. Both return measured values only: thresholds and PASS/WARN/FAIL
live in :mod:`dosimetry.verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dosimetry._grids import as_mask, require_volume
from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["FieldOfViewTruncation", "SliceCoverage", "field_of_view_truncation", "slice_coverage"]


@dataclass(frozen=True)
class FieldOfViewTruncation:
    """How much of the body touches the in-plane edge of the image (a sign it is cut off).

    Attributes
    ----------
    body_slice_count : int
        Slices holding at least one body voxel.
    truncated_slices : tuple of int
        Slice indices whose body touches the first or last row or column.
    truncated_slice_fraction : float
        ``len(truncated_slices)`` over ``body_slice_count`` (0 without body).
    max_border_fraction : float
        Largest share, over slices, of the in-plane border pixels (the ring of
        first/last rows and columns) that lie in the body.
    border_voxel_count : int
        Body voxels on the in-plane border, all slices together.
    """

    body_slice_count: int
    truncated_slices: tuple[int, ...]
    truncated_slice_fraction: float
    max_border_fraction: float
    border_voxel_count: int

    @property
    def truncated_slice_count(self) -> int:
        """Number of truncated slices."""
        return len(self.truncated_slices)


def field_of_view_truncation(body_mask: np.ndarray) -> FieldOfViewTruncation:
    """Slices whose body mask reaches the in-plane image border.

    Parameters
    ----------
    body_mask : numpy.ndarray
        3D body mask (z, y, x), boolean or numeric (binarised at > 0).

    Returns
    -------
    FieldOfViewTruncation

    Raises
    ------
    DosimetryError
        If the mask is not 3D or a slice is smaller than 2 x 2 pixels.
    """
    array = np.asarray(body_mask)
    if array.ndim != 3:
        raise DosimetryError(f"body mask must be 3D (z, y, x); found shape {array.shape}")
    body = as_mask(array, array.shape, "body mask")
    _, ny, nx = body.shape
    if ny < 2 or nx < 2:
        raise DosimetryError(f"slices must be at least 2 x 2 pixels to have a border; found {ny} x {nx}")
    ring = np.zeros((ny, nx), dtype=bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    on_border = np.count_nonzero(body & ring, axis=(1, 2))
    body_slices = int(np.count_nonzero(body.any(axis=(1, 2))))
    truncated = tuple(int(k) for k in np.flatnonzero(on_border))
    return FieldOfViewTruncation(
        body_slice_count=body_slices,
        truncated_slices=truncated,
        truncated_slice_fraction=len(truncated) / body_slices if body_slices else 0.0,
        max_border_fraction=float(on_border.max() / np.count_nonzero(ring)),
        border_voxel_count=int(on_border.sum()),
    )


@dataclass(frozen=True)
class SliceCoverage:
    """Whether the sCT has the MR's slices at the MR's positions.

    Attributes
    ----------
    sct_slice_count, mr_slice_count : int
    matched_slice_count : int
        MR slices with an sCT slice within the tolerance.
    mr_slices_without_sct : tuple of int
        MR slice indices with no sCT slice within the tolerance.
    sct_slices_without_mr : tuple of int
        sCT slice indices with no MR slice within the tolerance.
    max_offset_mm : float
        Largest distance from an MR slice's position (its first voxel) to the
        nearest sCT slice's position.
    in_plane_grid_matches : bool
        Same rows and columns, pixel spacing and orientation (within the tolerance).
    tolerance_mm : float
    """

    sct_slice_count: int
    mr_slice_count: int
    matched_slice_count: int
    mr_slices_without_sct: tuple[int, ...]
    sct_slices_without_mr: tuple[int, ...]
    max_offset_mm: float
    in_plane_grid_matches: bool
    tolerance_mm: float


def slice_coverage(sct: Volume, mr: Volume, tolerance_mm: float = 0.01) -> SliceCoverage:
    """Compare the slices of an sCT with those of the MR it was made from.

    Parameters
    ----------
    sct, mr : Volume
        Only the geometry is used.
    tolerance_mm : float
        Two slices coincide when their positions (Image Position (Patient) of
        the first voxel) are at most this far apart; positive.

    Returns
    -------
    SliceCoverage

    Raises
    ------
    DosimetryError
        If an argument is not a Volume or the tolerance is not positive.

    References
    ----------
    DICOM PS3.3 C.7.6.2.1.1 (Image Position (Patient)).
    """
    require_volume(sct, "sCT")
    require_volume(mr, "MR")
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise DosimetryError(f"tolerance_mm must be a positive number; found {tolerance_mm}")
    mr_positions = _slice_positions_mm(mr)
    sct_positions = _slice_positions_mm(sct)
    distances = np.linalg.norm(mr_positions[:, None, :] - sct_positions[None, :, :], axis=2)
    mr_nearest = distances.min(axis=1)
    sct_nearest = distances.min(axis=0)
    in_plane = (
        sct.shape[1:] == mr.shape[1:]
        and np.allclose(sct.spacing_mm[:2], mr.spacing_mm[:2], atol=tolerance_mm)
        and np.allclose(sct.direction, mr.direction, atol=1e-6)
    )
    return SliceCoverage(
        sct_slice_count=sct.shape[0],
        mr_slice_count=mr.shape[0],
        matched_slice_count=int(np.count_nonzero(mr_nearest <= tolerance_mm)),
        mr_slices_without_sct=tuple(int(k) for k in np.flatnonzero(mr_nearest > tolerance_mm)),
        sct_slices_without_mr=tuple(int(k) for k in np.flatnonzero(sct_nearest > tolerance_mm)),
        max_offset_mm=float(mr_nearest.max()),
        in_plane_grid_matches=bool(in_plane),
        tolerance_mm=float(tolerance_mm),
    )


def _slice_positions_mm(volume: Volume) -> np.ndarray:
    k = np.arange(volume.shape[0], dtype=np.float64)
    index = np.column_stack([np.zeros_like(k), np.zeros_like(k), k])
    return volume.index_to_patient(index)
