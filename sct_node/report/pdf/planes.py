"""Slice geometry: the planes of a volume cut through a point and placed in millimetres along its grid axes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

from models.volume import Volume

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

_MAX_DISPLAY_PX = 256  # images are strided down to at most this many pixels a side for display
_CT_WINDOW_HU = (-1000.0, 1500.0)  # grey scale of CT planes: sCT, real CT, under the dose
_OUTLINE_COLOUR = "tab:orange"


@dataclass(frozen=True)
class _Plane:
    name: str
    fixed_axis: int  # grid index axis held constant: 0 = x (columns), 1 = y (rows), 2 = z (slices)
    h_axis: int
    v_axis: int
    v_up: bool  # the vertical axis increases upwards (superior at the top)


_PLANES = (_Plane("axial", 2, 0, 1, False), _Plane("coronal", 1, 0, 2, True), _Plane("sagittal", 0, 1, 2, True))


@dataclass(frozen=True)
class _Slice:
    image: np.ndarray  # rows along the plane's vertical axis, columns along its horizontal one
    h_mm: np.ndarray  # pixel centres along the grid axes, mm
    v_mm: np.ndarray
    position_mm: float  # of the plane along its fixed axis
    plane: _Plane

    @property
    def extent(self) -> tuple[float, float, float, float]:
        dh = self.h_mm[1] - self.h_mm[0] if self.h_mm.size > 1 else 1.0
        dv = self.v_mm[1] - self.v_mm[0] if self.v_mm.size > 1 else 1.0
        left, right = self.h_mm[0] - dh / 2, self.h_mm[-1] + dh / 2
        low, high = self.v_mm[0] - dv / 2, self.v_mm[-1] + dv / 2
        return (left, right, low, high) if self.plane.v_up else (left, right, high, low)

    @property
    def origin(self) -> Literal["lower", "upper"]:
        return "lower" if self.plane.v_up else "upper"


def _grid_origin_mm(volume: Volume) -> np.ndarray:
    """The origin in the grid-axis frame (``direction.T @ origin``), in which index i lies at origin + i * spacing."""
    return volume.direction.T @ np.asarray(volume.origin_mm)


def _slice(volume: Volume, plane: _Plane, point_mm: np.ndarray, array: np.ndarray | None = None) -> _Slice:
    """The plane of ``volume`` nearest to ``point_mm`` (grid-axis frame), strided down for display."""
    array = volume.array if array is None else array
    origin, spacing = _grid_origin_mm(volume), np.asarray(volume.spacing_mm)
    axis = plane.fixed_axis
    count = volume.size_xyz[axis]
    index = int(np.clip(round(float((point_mm[axis] - origin[axis]) / spacing[axis])), 0, count - 1))
    image = np.take(array, index, axis=2 - axis)  # array axes are (z, y, x)
    stride = max(1, math.ceil(max(image.shape) / _MAX_DISPLAY_PX))
    image = image[::stride, ::stride]
    h_mm = origin[plane.h_axis] + np.arange(image.shape[1]) * stride * spacing[plane.h_axis]
    v_mm = origin[plane.v_axis] + np.arange(image.shape[0]) * stride * spacing[plane.v_axis]
    return _Slice(image, h_mm, v_mm, float(origin[axis] + index * spacing[axis]), plane)


_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def _axis_label(volume: Volume, axis: int) -> str:
    column = volume.direction[:, axis]
    patient = int(np.argmax(np.abs(column)))
    low, high = _LPS_LETTERS[patient]
    if column[patient] < 0:
        low, high = high, low
    return f"{low} → {high} (mm)"


def _show(ax: Axes, part: _Slice, volume: Volume, **kwargs: Any) -> AxesImage:
    image = ax.imshow(part.image, extent=part.extent, origin=part.origin, rasterized=True, **kwargs)
    _frame(ax, part, volume)
    return image


def _frame(ax: Axes, part: _Slice, volume: Volume) -> None:
    left, right, bottom, top = part.extent
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.set_xlabel(_axis_label(volume, part.plane.h_axis))
    ax.set_ylabel(_axis_label(volume, part.plane.v_axis))


def _outline(ax: Axes, volume: Volume, mask: np.ndarray | None, plane: _Plane, point_mm: np.ndarray,
             colour: str = _OUTLINE_COLOUR, style: LineStyleType = "-") -> None:
    if mask is None:
        return
    part = _slice(volume, plane, point_mm, array=mask)
    image = part.image.astype(np.float32)
    if image.shape[0] < 2 or image.shape[1] < 2 or image.min() == image.max():
        return
    ax.contour(part.h_mm, part.v_mm, image, levels=[0.5], colors=colour, linewidths=0.8, linestyles=style)


def _centre_mm(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """Centroid of ``mask`` (or the volume centre when there is none) in the grid-axis frame."""
    spacing = np.asarray(volume.spacing_mm)
    if mask is None or not np.any(mask):
        index_xyz = (np.asarray(volume.size_xyz) - 1) / 2.0
    else:
        total = float(np.count_nonzero(mask))
        index_zyx = [float(np.arange(n) @ mask.sum(axis=tuple(a for a in range(3) if a != axis)))
                     / total for axis, n in enumerate(mask.shape)]
        index_xyz = np.asarray(index_zyx[::-1])
    return _grid_origin_mm(volume) + index_xyz * spacing
