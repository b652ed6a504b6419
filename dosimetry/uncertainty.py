"""Where a model's voxel-wise uncertainty exceeds a level inside the body: share, bounding box, centroid.

:func:`uncertainty_region` reads an uncertainty map (a standard deviation in
HU, e.g. over an ensemble or over diffusion samples) and returns measured
values only: thresholds and PASS/WARN/FAIL live in :mod:`dosimetry.verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dosimetry._grids import as_mask, require_nonempty, require_same_grid, require_volume, xyz_floats
from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["UncertaintyRegion", "uncertainty_region"]


@dataclass(frozen=True)
class UncertaintyRegion:
    """Where the model's uncertainty exceeds a level inside the body.

    Attributes
    ----------
    level_hu : float
        The level; a voxel counts when its standard deviation is strictly above it.
    body_voxel_count : int
    above_count : int
    above_fraction : float
        ``above_count`` over ``body_voxel_count``.
    mean_std_hu, max_std_hu : float
        Of the body voxels.
    bounding_box_zyx : tuple of (int, int) or None
        First and last index (inclusive) along z, y and x of the voxels above;
        None when there are none.
    bounding_box_min_mm, bounding_box_max_mm : tuple of float or None
        Patient-coordinate (x, y, z, LPS) extremes of those voxels' centres.
    centroid_mm : tuple of float or None
        Patient position (x, y, z) of their mean centre.
    """

    level_hu: float
    body_voxel_count: int
    above_count: int
    above_fraction: float
    mean_std_hu: float
    max_std_hu: float
    bounding_box_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None
    bounding_box_min_mm: tuple[float, float, float] | None
    bounding_box_max_mm: tuple[float, float, float] | None
    centroid_mm: tuple[float, float, float] | None

    @property
    def percent_above(self) -> float:
        """:attr:`above_fraction` in percent."""
        return 100.0 * self.above_fraction


def uncertainty_region(uncertainty_std_hu: Volume, body_mask: np.ndarray, level_hu: float,
                       sct: Volume | None = None) -> UncertaintyRegion:
    """Share, extent and centre of the body voxels whose uncertainty exceeds ``level_hu``.

    Parameters
    ----------
    uncertainty_std_hu : Volume
        Voxel-wise standard deviation of the sCT in HU (non-negative).
    body_mask : numpy.ndarray
        Body mask on that grid.
    level_hu : float
        Configured level in HU, non-negative.
    sct : Volume, optional
        The sCT; when given, the map must lie on its grid.

    Returns
    -------
    UncertaintyRegion

    Raises
    ------
    DosimetryError
        If the grids or mask do not match, the body is empty, the level is
        negative or not finite, or the map holds NaN, infinite or negative
        values inside the body.
    """
    require_volume(uncertainty_std_hu, "uncertainty map")
    if sct is not None:
        require_same_grid(sct, "sCT", uncertainty_std_hu, "uncertainty map")
    if not (math.isfinite(level_hu) and level_hu >= 0):
        raise DosimetryError(f"level_hu must be a non-negative number of HU; found {level_hu}")
    body = as_mask(body_mask, uncertainty_std_hu.shape, "body mask")
    body_count = require_nonempty(body, "body mask")
    std_hu = uncertainty_std_hu.array[body].astype(np.float64)
    if not np.all(np.isfinite(std_hu)):
        raise DosimetryError(
            f"uncertainty map has {int(np.count_nonzero(~np.isfinite(std_hu)))} NaN or infinite voxel(s) in the body"
        )
    if np.any(std_hu < 0):
        raise DosimetryError(
            f"uncertainty map is a standard deviation but has negative values (minimum {std_hu.min():g} HU)"
        )
    above = body & (np.asarray(uncertainty_std_hu.array) > level_hu)
    above_count = int(np.count_nonzero(above))
    box_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    box_min: tuple[float, float, float] | None = None
    box_max: tuple[float, float, float] | None = None
    centroid: tuple[float, float, float] | None = None
    if above_count:
        index_zyx = np.argwhere(above)
        (z0, y0, x0), (z1, y1, x1) = index_zyx.min(axis=0), index_zyx.max(axis=0)
        box_zyx = ((int(z0), int(z1)), (int(y0), int(y1)), (int(x0), int(x1)))
        positions = uncertainty_std_hu.index_to_patient(index_zyx[:, ::-1].astype(np.float64))
        box_min = xyz_floats(positions.min(axis=0))
        box_max = xyz_floats(positions.max(axis=0))
        centroid = xyz_floats(positions.mean(axis=0))
    return UncertaintyRegion(
        level_hu=float(level_hu),
        body_voxel_count=body_count,
        above_count=above_count,
        above_fraction=above_count / body_count,
        mean_std_hu=float(std_hu.mean()),
        max_std_hu=float(std_hu.max()),
        bounding_box_zyx=box_zyx,
        bounding_box_min_mm=box_min,
        bounding_box_max_mm=box_max,
        centroid_mm=centroid,
    )
