"""Shared by the image checks: same grid, usable masks, finite values; a volume read at points; a point as floats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dosimetry.errors import DosimetryError
from models.volume import Volume


def xyz_floats(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Three numbers (x, y, z: floats, NumPy scalars or a length-3 array) as a tuple of three Python floats."""
    x, y, z = values
    return float(x), float(y), float(z)


def require_volume(value: object, name: str) -> Volume:
    """``value`` itself, when it is a :class:`~models.volume.Volume`."""
    if not isinstance(value, Volume):
        raise DosimetryError(f"{name} must be a models.volume.Volume; found {type(value).__name__}")
    return value


def require_same_grid(first: Volume, first_name: str, second: Volume, second_name: str,
                      tolerance_mm: float = 1e-3) -> None:
    """Raise unless both volumes lie on one voxel grid, naming what differs."""
    require_volume(first, first_name)
    require_volume(second, second_name)
    if first.same_grid(second, tolerance_mm=tolerance_mm):
        return
    differences = []
    if first.shape != second.shape:
        differences.append(f"shape (z, y, x) {first.shape} vs {second.shape}")
    if not np.allclose(first.spacing_mm, second.spacing_mm, atol=tolerance_mm):
        differences.append(f"spacing_mm (x, y, z) {first.spacing_mm} vs {second.spacing_mm}")
    if not np.allclose(first.origin_mm, second.origin_mm, atol=tolerance_mm):
        differences.append(f"origin_mm (x, y, z) {first.origin_mm} vs {second.origin_mm}")
    if not np.allclose(first.direction, second.direction, atol=1e-6):
        differences.append(f"direction {first.direction.tolist()} vs {second.direction.tolist()}")
    raise DosimetryError(
        f"{first_name} and {second_name} are not on the same voxel grid: {'; '.join(differences)}; "
        "resample one onto the other first"
    )


def as_mask(mask: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A boolean copy of ``mask``, checked against the grid ``shape``.

    Boolean masks are taken as they are; numeric masks are binarised with
    ``mask > 0`` (the SynthRAD convention for mask files).
    """
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise DosimetryError(f"{name} has shape {array.shape}; expected the grid shape (z, y, x) {tuple(shape)}")
    if array.dtype == bool:
        return array.copy()
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DosimetryError(f"{name} must be a boolean or numeric array; found dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DosimetryError(f"{name} contains NaN or infinite values")
    return array > 0


def require_nonempty(mask: np.ndarray, name: str) -> int:
    """The number of voxels in ``mask``; raise when there are none."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise DosimetryError(f"{name} is empty: it selects no voxel")
    return count


def require_finite(values: np.ndarray, where: np.ndarray | None, name: str) -> None:
    """Raise if ``values`` (restricted to ``where`` when given) holds NaN or infinity."""
    selected = values if where is None else values[where]
    bad = int(np.count_nonzero(~np.isfinite(selected)))
    if bad:
        place = "" if where is None else " inside the mask"
        raise DosimetryError(f"{name} has {bad} NaN or infinite voxel(s){place}; these metrics need finite values")


def trilinear_at_points(volume: Volume, points_mm: np.ndarray, outside: float | None = None) -> np.ndarray:
    """``volume`` interpolated trilinearly at patient positions ``points_mm`` (N x 3, LPS mm), float64.

    Beyond the outer voxel centres a point takes the nearest edge value, or ``outside`` when given (e.g. 0
    for a density, vacuum outside the image).
    """
    from scipy import ndimage

    index_zyx = volume.patient_to_index(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3))[:, ::-1].T
    if outside is None:
        return ndimage.map_coordinates(np.asarray(volume.array, dtype=np.float64), index_zyx, order=1, mode="nearest")
    return ndimage.map_coordinates(np.asarray(volume.array, dtype=np.float64), index_zyx, order=1, mode="constant",
                                   cval=float(outside))
