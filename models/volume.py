"""A 3D image with its patient geometry: the one image type every stage passes on.

The array is stored in ``(z, y, x)`` order (slice, row, column), the order that
SimpleITK's ``GetArrayFromImage`` and pydicom's stacked pixel arrays use. The
geometry follows the DICOM patient coordinate system (LPS, millimetres) and
ITK's conventions, so that a :class:`Volume` converts to and from a
``SimpleITK.Image`` without loss:

* ``origin_mm`` is the patient position (x, y, z) of the centre of voxel
  ``array[0, 0, 0]`` (DICOM Image Position (Patient) of the first slice);
* ``spacing_mm`` is (column spacing, row spacing, slice spacing);
* ``direction`` is a 3 x 3 matrix whose *columns* are the unit vectors of the
  x (column index), y (row index) and z (slice index) axes in patient space.

References
----------
DICOM PS3.3 C.7.6.2.1.1, Image Position and Image Orientation (Patient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.errors import GeometryError

if TYPE_CHECKING:  # SimpleITK is imported lazily at run time, to keep the core light
    import SimpleITK as sitk

__all__ = ["Volume"]


@dataclass(frozen=True)
class Volume:
    """A 3D image on a regular grid in patient coordinates (LPS, mm).

    Parameters
    ----------
    array : numpy.ndarray
        Voxel values in ``(z, y, x)`` order.
    spacing_mm : tuple of float
        Voxel size (x, y, z) in millimetres; all positive.
    origin_mm : tuple of float
        Patient position (x, y, z) of the centre of voxel ``[0, 0, 0]``.
    direction : numpy.ndarray
        3 x 3 orthonormal matrix; column ``i`` is the direction of index axis
        ``i`` (x, y, z) in patient space.

    Raises
    ------
    GeometryError
        If the array is not 3D, a spacing is not positive or the direction is
        not orthonormal.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(f"Volume array must be 3D (z, y, x); found shape {self.array.shape}")
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"spacing_mm must be three positive numbers; found {self.spacing_mm}")
        origin = tuple(float(o) for o in self.origin_mm)
        if len(origin) != 3 or not all(np.isfinite(o) for o in origin):
            raise GeometryError(f"origin_mm must be three finite numbers; found {self.origin_mm}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise GeometryError(f"direction must be orthonormal; found {direction.tolist()}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        nz, ny, nx = self.array.shape  # 3D: __post_init__ checks it
        return int(nz), int(ny), int(nx)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along (x, y, z), ITK's order."""
        nz, ny, nx = self.shape
        return nx, ny, nz

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit vector along increasing slice index."""
        return self.direction[:, 2]

    def index_to_patient(self, index_xyz: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm) of continuous voxel indices.

        Parameters
        ----------
        index_xyz : numpy.ndarray
            Indices ``(..., 3)`` in (x, y, z) order.

        Returns
        -------
        numpy.ndarray
            Patient positions ``(..., 3)`` in millimetres (LPS).
        """
        index_xyz = np.asarray(index_xyz, dtype=np.float64)
        scaled = index_xyz * np.asarray(self.spacing_mm)
        return scaled @ self.direction.T + np.asarray(self.origin_mm)

    def patient_to_index(self, point_mm: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (x, y, z) of patient positions (mm)."""
        point_mm = np.asarray(point_mm, dtype=np.float64)
        rotated = (point_mm - np.asarray(self.origin_mm)) @ self.direction
        return rotated / np.asarray(self.spacing_mm)

    def slice_position_mm(self, k: int) -> tuple[float, float, float]:
        """Patient position of the first voxel of slice ``k`` (its Image Position (Patient))."""
        x, y, z = self.index_to_patient(np.array([0.0, 0.0, float(k)]))
        return float(x), float(y), float(z)

    def slab(self, start: int, stop: int) -> Volume:
        """Slices ``start`` to ``stop`` (exclusive) as a volume at their own patient position.

        Raises
        ------
        GeometryError
            If the range is empty or outside ``0 .. depth``.
        """
        if not 0 <= start < stop <= self.shape[0]:
            raise GeometryError(f"slab {start}:{stop} is empty or outside the volume's {self.shape[0]} slices")
        return Volume(self.array[start:stop], self.spacing_mm, self.slice_position_mm(start), self.direction)

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid holding ``array``.

        Raises
        ------
        GeometryError
            If ``array`` does not have this volume's shape.
        """
        if array.shape != self.array.shape:
            raise GeometryError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing_mm, self.origin_mm, self.direction)

    def same_grid(self, other: Volume, tolerance_mm: float = 1e-3) -> bool:
        """Whether ``other`` lies on the same voxel grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tolerance_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def to_sitk(self) -> sitk.Image:
        """Convert to a ``SimpleITK.Image`` with the same geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(tuple(self.direction.flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Build a volume from a 3D ``SimpleITK.Image``.

        Raises
        ------
        GeometryError
            If the image is not 3D or has more than one component per voxel.
        """
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise GeometryError(
                f"expected a 3D scalar image; found dimension {image.GetDimension()} "
                f"with {image.GetNumberOfComponentsPerPixel()} components"
            )
        array = sitk.GetArrayFromImage(image)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(array, image.GetSpacing(), image.GetOrigin(), direction)
