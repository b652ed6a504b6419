"""A fast, density-aware photon dose engine for comparing one plan on two images.

The engine answers one question: *how much does the dose of a given photon
plan change when it is computed on the sCT instead of the CT?* It is a
ray-traced, effective-depth, pencil-beam-like model vectorised with
:mod:`torch` (float32, on CUDA when available, else the CPU). It is not a
treatment planning dose engine and must not be used as one.

What it models
--------------
For every beam, the dose is first computed on a divergent beam's-eye-view
grid ``(u, v, z)``: ``u, v`` are positions projected to the isocentre plane
along the jaw/MLC axes ``X_b, Y_b`` and ``z`` is the distance from the
source along the beam axis. At each grid point::

    D = MU * dose_per_mu_gy * T(d_rad) * ((SSD_ref + d_max) / z)**2
          * (F conv K[d_rad])(u, v) / (F_ref conv K[d_rad])(0, 0)

* ``d_rad``, the radiological (water-equivalent) depth: the relative electron
  density integrated along the divergent ray from the source (trapezoid rule,
  density sampled trilinearly every ``depth_step_mm`` along the axis). This is
  the equivalent-path-length, or effective-depth, heterogeneity correction:
  behind bone the dose is that of a deeper point in water, behind lung that
  of a shallower one (the TMR-ratio method, AAPM Report 85).
* ``T``, the central-axis attenuation of the reference field, from the beam
  model's PDD with the inverse-square law removed (build-up included);
* the inverse-square law from the source (point source);
* ``F``, the primary fluence: 1 inside the aperture of each segment (jaws and
  MLC, projected to the isocentre plane), 0 outside, weighted by the
  segments' meterset weights;
* ``K``, a lateral kernel, the sum of a narrow (penumbra) and a wide
  (phantom scatter) normalised Gaussian whose widths and scatter weight grow
  with radiological depth; dividing by the same convolution of the reference
  10 x 10 cm field on the axis makes the reference field reproduce ``T``
  exactly, while smaller fields get less scatter and larger ones more.

The beam's-eye-view dose is then interpolated trilinearly at every voxel. Each
beam's dose is computed as two parts that add up to it: the primary part (the
narrow kernel) on a ``lateral_spacing_mm`` grid reaching 4 primary widths
beyond the apertures, and the phantom-scatter part (a kernel some 60 mm wide)
on a ``scatter_spacing_mm`` grid reaching ``scatter_margin_sigmas`` scatter
widths, interpolated onto every second voxel and brought back to the full grid
once for all beams (trilinear); both parts are traced and interpolated only
where the beam reaches the body.
Calibration: ``dose_per_mu_gy`` at ``d_max`` on the axis of a 10 x 10 cm field
(at the isocentre plane) at the beam model's reference SSD; the default,
:data:`dosimetry.beam_model.ELEKTA_AGILITY_6MV`, is calibrated to 1 cGy/MU at
d_max at SSD 100 cm (the measured machine's). Each aperture's fluence is
weighted by the head-scatter factor ``S_c`` of its equivalent square.

What it does not model
----------------------
* Electron transport: no loss of lateral electronic equilibrium in lung, no
  re-build-up after air cavities or at exit surfaces, no dose-to-medium
  versus dose-to-water distinction (all doses are dose to water).
* Lateral density scaling of scatter and penumbra: the kernel depends only on
  the radiological depth along the ray, not on the densities beside it (a
  convolution/superposition or collapsed-cone engine would scale it).
* Scatter from heterogeneities beyond the effective-depth correction, missing
  tissue and oblique incidence (other than through the path length).
* Head scatter beyond one ``S_c`` per aperture (no extra-focal source
  profile), off-axis softening, horns, wedges, MLC transmission,
  tongue-and-groove; rounded leaf tips and source size only through the
  fitted penumbra width along X and Y.
* Any energy other than the beam model's (one beam model per call).

Voxels lighter than ``zero_dose_below_density`` (air around the patient) get
zero dose; set it to 0 to see the "dose to a small water probe" everywhere.
Beams are traced and interpolated only over the bounding box of the voxels
that can receive dose (the air outside it adds no dose and, at below 5 % of
water's electron density, almost no radiological depth).

References
----------
A. Ahnesjö and M. M. Aspradakis, "Dose calculations for external photon
beams in radiotherapy", Phys. Med. Biol. 44(11), R99-R155 (1999),
doi:10.1088/0031-9155/44/11/201.

N. Papanikolaou et al., "Tissue inhomogeneity corrections for megavoltage
photon beams", AAPM Report No. 85 (Task Group 65), 2004 (effective path
length / TMR-ratio method).

F. M. Khan and J. P. Gibbons, "The Physics of Radiation Therapy", 5th ed.,
chapters 9-12.

Beam data and their sources: :mod:`dosimetry.beam_model` and
``dosimetry/beam_data/elekta_agility_6mv.json``.

IEC 61217:2011 for the beam geometry (:mod:`dosimetry.beam`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from scipy import special
from torch.nn import functional

from dosimetry._grids import trilinear_at_points
from dosimetry.beam import Beam, BeamGeometry, aperture_fluence, beam_geometry
from dosimetry.beam_model import ELEKTA_AGILITY_6MV, BeamModel
from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["DoseEngineError", "EngineOptions", "compute_dose", "compute_dose_and_points"]


class DoseEngineError(DosimetryError):
    """The dose engine cannot compute a dose for these inputs."""


@dataclass(frozen=True)
class EngineOptions:
    """Numerical options of the dose engine.

    Parameters
    ----------
    lateral_spacing_mm : float
        Spacing of the beam's-eye-view grid of the primary dose (the penumbra) at the isocentre plane, mm.
    scatter_spacing_mm : float
        Spacing of the beam's-eye-view grid of the phantom-scatter dose (never finer than
        ``lateral_spacing_mm``), mm: the scatter kernel is some 60 mm wide.
    depth_step_mm : float
        Step along the beam axis for ray tracing and the BEV dose, mm.
    scatter_margin_sigmas : float
        The scatter BEV grid extends this many scatter-kernel sigmas beyond the apertures (the primary grid
        :data:`PRIMARY_MARGIN_SIGMAS` primary sigmas).
    isocentre_margin_mm : float
        A beam's isocentre may lie at most this far outside the image, mm.
    zero_dose_below_density : float
        Voxels with a relative electron density below this get zero dose
        (0 keeps every voxel).
    kernel_depth_nodes_mm : tuple of float
        Radiological depths at which the lateral convolution is computed;
        between them it is interpolated linearly. Strictly increasing from 0.
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
    voxel_chunk : int
        Voxels interpolated per batch (bounds memory).

    Raises
    ------
    DoseEngineError
        If a value is out of range.
    """

    lateral_spacing_mm: float = 2.0
    scatter_spacing_mm: float = 6.0
    depth_step_mm: float = 2.0
    scatter_margin_sigmas: float = 2.5
    isocentre_margin_mm: float = 100.0
    zero_dose_below_density: float = 0.05
    kernel_depth_nodes_mm: tuple[float, ...] = (0.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
                                                400.0, 600.0)
    device: str | None = None
    voxel_chunk: int = 1 << 22

    def __post_init__(self) -> None:
        for name in ("lateral_spacing_mm", "scatter_spacing_mm", "depth_step_mm", "scatter_margin_sigmas"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise DoseEngineError(f"EngineOptions.{name} must be positive; found {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        for name in ("isocentre_margin_mm", "zero_dose_below_density"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise DoseEngineError(f"EngineOptions.{name} must be non-negative; found {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        nodes = tuple(float(v) for v in self.kernel_depth_nodes_mm)
        if len(nodes) < 2 or nodes[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(nodes)):
            raise DoseEngineError(
                f"EngineOptions.kernel_depth_nodes_mm must start at 0 and increase strictly; found {nodes}"
            )
        object.__setattr__(self, "kernel_depth_nodes_mm", nodes)
        if int(self.voxel_chunk) < 1024:
            raise DoseEngineError(f"EngineOptions.voxel_chunk must be at least 1024; found {self.voxel_chunk}")


def compute_dose(
    density: Volume,
    beams: Sequence[Beam],
    *,
    beam_model: BeamModel = ELEKTA_AGILITY_6MV,
    options: EngineOptions | None = None,
) -> Volume:
    """Dose of photon beams on a relative-electron-density image.

    Parameters
    ----------
    density : models.volume.Volume
        Relative electron density (water = 1), e.g. from
        :func:`dosimetry.density.relative_electron_density_volume`; at least two
        voxels along each axis. Outside the image is vacuum.
    beams : sequence of Beam
        The beams; their doses add.
    beam_model : BeamModel, optional
        Beam data (default :data:`dosimetry.beam_model.ELEKTA_AGILITY_6MV`).
    options : EngineOptions, optional
        Numerical options (defaults: 2 mm BEV grid, 2 mm depth step).

    Returns
    -------
    models.volume.Volume
        Dose to water, Gy, float32, on the density's grid.

    Raises
    ------
    DoseEngineError
        If the density is not a usable relative-electron-density volume (for
        instance CT numbers in HU), there is no beam, an isocentre lies more
        than ``isocentre_margin_mm`` outside the image, or the image reaches
        within a quarter of the SAD of a source.

    References
    ----------
    Ahnesjö and Aspradakis, Phys. Med. Biol. 44, R99 (1999); AAPM Report 85 (2004).
    """
    return compute_dose_and_points(density, beams, None, beam_model=beam_model, options=options)[0]


@overload
def compute_dose_and_points(density: Volume, beams: Sequence[Beam], points_mm: np.ndarray, *,
                            beam_model: BeamModel = ..., options: EngineOptions | None = ...
                            ) -> tuple[Volume, np.ndarray]: ...
@overload
def compute_dose_and_points(density: Volume, beams: Sequence[Beam], points_mm: None, *,
                            beam_model: BeamModel = ..., options: EngineOptions | None = ...
                            ) -> tuple[Volume, None]: ...
def compute_dose_and_points(
    density: Volume,
    beams: Sequence[Beam],
    points_mm: np.ndarray | None,
    *,
    beam_model: BeamModel = ELEKTA_AGILITY_6MV,
    options: EngineOptions | None = None,
) -> tuple[Volume, np.ndarray | None]:
    """:func:`compute_dose`, and the same dose evaluated at arbitrary patient points in the same pass.

    The points' dose is read from each beam's beam's-eye-view dose (``lateral_spacing_mm``, 2 mm) directly,
    not interpolated between the voxels of ``density``: a 4 mm dose grid interpolated across a 6 mm
    penumbra misplaces several per cent of dose, a point read from the 2 mm BEV grid does not. The QA reads
    its DVHs this way, at every structure voxel of the image grid. The radiological depth still comes from
    ``density``'s grid; points in air (density below ``zero_dose_below_density``, trilinear) get zero dose.

    Returns
    -------
    (Volume, numpy.ndarray or None)
        The dose on the density's grid and, when ``points_mm`` (N x 3, LPS mm) is given, float64 doses at
        the points (Gy).
    """
    options = EngineOptions() if options is None else options
    if not isinstance(options, EngineOptions):
        raise DoseEngineError(f"options must be EngineOptions; found {type(options).__name__}")
    if not isinstance(beam_model, BeamModel):
        raise DoseEngineError(f"beam_model must be a BeamModel; found {type(beam_model).__name__}")
    array = _check_density(density)
    beams = _check_beams(beams, density, options)
    device = _device(options.device)
    density_t = torch.as_tensor(array, dtype=torch.float32, device=device)
    grid = _VoxelGrid.of(density, array, options.zero_dose_below_density)
    total = torch.zeros_like(density_t)
    coarse = grid.coarse()
    scatter = torch.zeros(coarse.shape_zyx, dtype=total.dtype, device=device)
    points = None if points_mm is None else torch.as_tensor(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3),
                                                          device=device)
    at_points = None if points is None else torch.zeros(points.shape[0], dtype=torch.float64, device=device)
    with torch.no_grad():
        for beam in beams:
            geometry = beam_geometry(beam)
            for bev in _bev_dose(density_t, grid, beam, geometry, beam_model, options):
                if bev.part == "scatter":  # smooth: on every second voxel, brought back once at the end
                    scatter += _bev_to_voxels(bev, coarse, geometry, options)
                else:
                    total += _bev_to_voxels(bev, grid, geometry, options)
                if points is not None and at_points is not None:
                    at_points += _bev_at_points(bev, points, geometry, options)
        total += functional.interpolate(scatter[None, None], size=grid.shape_zyx, mode="trilinear",
                                        align_corners=True)[0, 0]
        if options.zero_dose_below_density > 0:
            total *= density_t >= options.zero_dose_below_density
            if points_mm is not None and at_points is not None:
                at_points *= torch.as_tensor(trilinear_at_points(density, points_mm, outside=0.0)
                                             >= options.zero_dose_below_density, device=device)
    return density.with_array(total.cpu().numpy()), None if at_points is None else at_points.cpu().numpy()


def _bev_at_points(bev: _BevDose, points: torch.Tensor, geometry: BeamGeometry, options: EngineOptions) -> torch.Tensor:
    """A beam's-eye-view dose at patient points (N x 3 float64 tensor): float64 (N,)."""
    sad = geometry.source_axis_distance_mm
    device = points.device
    relative = points - torch.as_tensor(geometry.source_mm, dtype=torch.float64, device=device)
    distance = relative @ torch.as_tensor(geometry.axis, dtype=torch.float64, device=device)
    u = relative @ torch.as_tensor(geometry.x_axis, dtype=torch.float64, device=device) * (sad / distance)
    v = relative @ torch.as_tensor(geometry.y_axis, dtype=torch.float64, device=device) * (sad / distance)

    def normalised(value: torch.Tensor, axis_mm: np.ndarray) -> torch.Tensor:
        return (value - float(axis_mm[0])) * (2.0 / float(axis_mm[-1] - axis_mm[0])) - 1

    result = torch.empty(points.shape[0], dtype=torch.float64, device=device)
    for first in range(0, points.shape[0], options.voxel_chunk):
        last = min(points.shape[0], first + options.voxel_chunk)
        sample = torch.stack([normalised(u[first:last], bev.u_mm), normalised(v[first:last], bev.v_mm),
                              normalised(distance[first:last], bev.z_mm)], dim=-1).to(torch.float32)
        result[first:last] = functional.grid_sample(bev.dose_gy[None, None], sample[None, None, None],
                                                    mode="bilinear", padding_mode="zeros",
                                                    align_corners=True)[0, 0, 0, 0].to(torch.float64)
    return result


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DoseEngineError(f"unknown torch device {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DoseEngineError(f"device {name!r} asked for, but CUDA is not available")
    return device


def _check_density(density: object) -> np.ndarray:
    if not isinstance(density, Volume):
        raise DoseEngineError(f"density must be a models.volume.Volume; found {type(density).__name__}")
    if min(density.shape) < 2:
        raise DoseEngineError(
            f"density needs at least two voxels along each axis; found shape (z, y, x) {density.shape}"
        )
    array = np.asarray(density.array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise DoseEngineError(f"density has {int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite voxel(s)")
    low, high = float(array.min()), float(array.max())
    if low < -100 or high > 50:
        raise DoseEngineError(
            f"density ranges over [{low:g}, {high:g}]: this looks like CT numbers (HU), not relative electron "
            "density; convert with dosimetry.density.relative_electron_density_volume first"
        )
    if low < 0 or high > 10:
        raise DoseEngineError(f"relative electron density must lie in [0, 10]; found [{low:g}, {high:g}]")
    return array


@dataclass(frozen=True)
class _VoxelGrid:
    """Affine maps of one image grid: patient <-> index, and its corners."""

    shape_zyx: tuple[int, int, int]
    origin_mm: np.ndarray
    axes_mm: np.ndarray  # column i: patient step of one voxel along index axis i (x, y, z)
    corners_mm: np.ndarray  # (8, 3): outer corners of the voxels that can receive dose (see ``of``)
    #: (first, last + 1) index along z, y, x of the voxels that can receive dose.
    box_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @classmethod
    def of(cls, volume: Volume, array: np.ndarray, zero_dose_below_density: float) -> _VoxelGrid:
        """The grid, with its corners and box shrunk to the voxels at or above ``zero_dose_below_density``
        (the only ones that get dose; the air around a patient neither gets dose nor adds radiological
        depth worth a ray step, so beams are traced and interpolated only over the body's bounding box)."""
        axes = volume.direction * np.asarray(volume.spacing_mm)[None, :]
        nz, ny, nx = volume.shape
        box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, nz), (0, ny), (0, nx))
        if zero_dose_below_density > 0:
            receiving = array >= zero_dose_below_density
            if receiving.any():
                z, y, x = (np.flatnonzero(receiving.any(axis=others)) for others in ((1, 2), (0, 2), (0, 1)))
                box = ((int(z[0]), int(z[-1]) + 1), (int(y[0]), int(y[-1]) + 1), (int(x[0]), int(x[-1]) + 1))
        (z0, z1), (y0, y1), (x0, x1) = box
        corner_index = np.array(
            [[i, j, k] for i in (x0 - 0.5, x1 - 0.5) for j in (y0 - 0.5, y1 - 0.5) for k in (z0 - 0.5, z1 - 0.5)]
        )
        corners = corner_index @ axes.T + np.asarray(volume.origin_mm)
        return cls(volume.shape, np.asarray(volume.origin_mm, dtype=np.float64), axes, corners, box)

    def coarse(self) -> _VoxelGrid:
        """Every second voxel (about) along each axis, spanning the same first and last voxel centres, with the
        box that covers this grid's box: where the smooth scatter dose is interpolated (``upsample`` brings it
        back)."""
        fine = np.asarray(self.shape_zyx[::-1])  # x, y, z
        counts = np.where(fine > 1, np.ceil((fine - 1) / 2).astype(int) + 1, 1)
        factor = np.where(counts > 1, (fine - 1) / np.maximum(counts - 1, 1), 1.0)
        axes = self.axes_mm * factor[None, :]
        z_box, y_box, x_box = [(math.floor(first / f), min(int(n), math.ceil((end - 1) / f) + 1))
                               for (first, end), f, n in zip(self.box_zyx, factor[::-1], counts[::-1])]
        nz, ny, nx = (int(n) for n in counts[::-1])
        return _VoxelGrid((nz, ny, nx), self.origin_mm, axes, self.corners_mm, (z_box, y_box, x_box))

    def patient_to_normalised(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` with ``A @ p + b`` the grid_sample coordinates (x, y, z in [-1, 1]) of patient point ``p``."""
        nz, ny, nx = self.shape_zyx
        to_index = np.linalg.inv(self.axes_mm)
        scale = 2.0 / (np.array([nx, ny, nz], dtype=np.float64) - 1.0)
        matrix = scale[:, None] * to_index
        return matrix, -matrix @ self.origin_mm - 1.0


def _check_beams(beams: object, density: Volume, options: EngineOptions) -> tuple[Beam, ...]:
    if isinstance(beams, Beam):
        beams = (beams,)
    try:
        items: tuple[object, ...] = tuple(beams)  # type: ignore[arg-type]
    except TypeError as error:
        raise DoseEngineError(f"beams must be a sequence of Beam; found {type(beams).__name__}") from error
    if not items:
        raise DoseEngineError("no beams to compute")
    nx, ny, nz = density.size_xyz
    spacing = np.asarray(density.spacing_mm)
    checked: list[Beam] = []
    for i, beam in enumerate(items):
        if not isinstance(beam, Beam):
            raise DoseEngineError(f"beams[{i}] must be a Beam; found {type(beam).__name__}")
        index = density.patient_to_index(np.asarray(beam.isocentre_mm))
        outside_mm = np.maximum(np.maximum(-0.5 - index, index - (np.array([nx, ny, nz]) - 0.5)), 0.0) * spacing
        distance = float(np.linalg.norm(outside_mm))
        if distance > options.isocentre_margin_mm:
            raise DoseEngineError(
                f"beam {beam.label!r}: isocentre {beam.isocentre_mm} mm lies {distance:.0f} mm outside the image "
                f"(allowed: {options.isocentre_margin_mm:g} mm); is it in the image's frame of reference?"
            )
        checked.append(beam)
    return tuple(checked)


def _gaussian_matrix(centres: torch.Tensor, sigma_mm: float, spacing_mm: float) -> torch.Tensor:
    """Convolution matrix of a normalised 1-D Gaussian, integrated over each pixel.

    The centres are uniformly spaced, so the matrix is Toeplitz: entry (i, j) depends on i - j only. Its
    2n - 1 distinct values are computed once per size, width and spacing (a beam's 12 kernel depths and every
    beam of an arc share them), and the matrix is built from windows of them.
    """
    count = centres.numel()
    values = _gaussian_offsets(count, round(float(sigma_mm), 9), round(float(spacing_mm), 9), centres.dtype,
                               str(centres.device))
    return values.unfold(0, count, 1).flip(0)  # row i: values[count - 1 - i : 2 count - 1 - i]


@functools.lru_cache(maxsize=256)
def _gaussian_offsets(count: int, sigma_mm: float, spacing_mm: float, dtype: torch.dtype,
                      device: str) -> torch.Tensor:
    """Pixel-integrated Gaussian at offsets (count - 1 - k) * spacing, k = 0 .. 2 count - 2 (descending)."""
    offsets = (count - 1 - torch.arange(2 * count - 1, dtype=torch.float64)) * spacing_mm
    half = spacing_mm / 2
    values = torch.special.ndtr((offsets + half) / sigma_mm) - torch.special.ndtr((offsets - half) / sigma_mm)
    return values.to(dtype=dtype, device=device)


def _axis(low: float, high: float, step: float) -> np.ndarray:
    """Multiples of ``step`` covering [low, high], at least two (symmetric limits give a symmetric grid)."""
    first, last = math.floor(low / step), math.ceil(high / step)
    return np.arange(first, max(last, first + 1) + 1, dtype=np.float64) * step


@dataclass(frozen=True)
class _BevDose:
    """Dose on a beam's divergent grid (axes in mm: u, v at the isocentre plane, z from the source)."""

    dose_gy: torch.Tensor  # (Nz, Nv, Nu)
    u_mm: np.ndarray
    v_mm: np.ndarray
    z_mm: np.ndarray
    #: "primary" or "scatter" (_bev_dose).
    part: str = "primary"


def _bev_dose(
    density_t: torch.Tensor,
    grid: _VoxelGrid,
    beam: Beam,
    geometry: BeamGeometry,
    model: BeamModel,
    options: EngineOptions,
) -> list[_BevDose]:
    """A beam's dose as two beam's-eye-view components: the primary (penumbra) part on a fine grid around the
    apertures, the phantom-scatter part on a coarse grid out to ``scatter_margin_sigmas`` scatter widths.

    Both are ``MU * dose_per_mu * T(d) * inverse square * (F conv K_part) / (F_ref conv K)(0, 0)`` with
    ``K = K_primary + K_scatter``, so they add up to the single-grid dose; the scatter kernel is wide and
    smooth (sigma about 60 mm), so a grid of ``scatter_spacing_mm`` carries it as exactly as a fine one, and
    only the primary needs fine pixels — over a margin of 4 primary widths, not 2.5 scatter widths.
    """
    sad = geometry.source_axis_distance_mm
    relative = grid.corners_mm - geometry.source_mm
    depth_along_axis = relative @ geometry.axis
    z_low, z_high = float(depth_along_axis.min()), float(depth_along_axis.max())
    if z_low < 0.25 * sad:
        raise DoseEngineError(
            f"beam {beam.label!r}: the image reaches within {max(z_low, 0.0):.0f} mm of the source "
            f"(SAD {sad:g} mm); check the isocentre and the image geometry"
        )
    extents = [e for e in (s.open_extent_mm() for s in beam.segments if s.meterset_weight > 0) if e is not None]
    if not extents:
        return []  # every aperture closed: no dose
    boxes = np.asarray(extents)
    nodes = np.asarray(options.kernel_depth_nodes_mm)
    sigma_x, sigma_y, scatter_sigma, scatter_weight = model.kernel(nodes)
    projected_u = (relative @ geometry.x_axis) * sad / depth_along_axis
    projected_v = (relative @ geometry.y_axis) * sad / depth_along_axis
    parts = [("primary", PRIMARY_MARGIN_SIGMAS * float(max(sigma_x.max(), sigma_y.max())), options.lateral_spacing_mm)]
    if scatter_weight.max() > 0:
        parts.append(("scatter", options.scatter_margin_sigmas * float(scatter_sigma.max()),
                      max(options.lateral_spacing_mm, options.scatter_spacing_mm)))
    components = []
    for part, margin, step in parts:
        u_low = max(boxes[:, 0].min() - margin, projected_u.min())
        u_high = min(boxes[:, 1].max() + margin, projected_u.max())
        v_low = max(boxes[:, 2].min() - margin, projected_v.min())
        v_high = min(boxes[:, 3].max() + margin, projected_v.max())
        if u_low >= u_high or v_low >= v_high:
            return []  # the beam misses the image
        components.append(_bev_component(density_t, grid, beam, geometry, model, options, part,
                                          _axis(u_low, u_high, step), _axis(v_low, v_high, step), z_low, z_high))
    return components


#: The fine (primary) beam's-eye-view grid reaches this many primary widths beyond the apertures: the primary
#: dose there is below 1e-4 of its value inside.
PRIMARY_MARGIN_SIGMAS = 4.0


def _bev_component(density_t: torch.Tensor, grid: _VoxelGrid, beam: Beam, geometry: BeamGeometry,
                   model: BeamModel, options: EngineOptions, part: str, u_mm: np.ndarray, v_mm: np.ndarray,
                   z_low: float, z_high: float) -> _BevDose:
    """One component (``primary`` or ``scatter``) of a beam's dose on the divergent grid ``u_mm, v_mm`` x z."""
    device = density_t.device
    sad = geometry.source_axis_distance_mm
    z_count = max(math.ceil((z_high - z_low) / options.depth_step_mm) + 1, 2)
    z_mm = z_low + options.depth_step_mm * np.arange(z_count, dtype=np.float64)

    u_t = torch.as_tensor(u_mm, dtype=torch.float32, device=device)
    v_t = torch.as_tensor(v_mm, dtype=torch.float32, device=device)
    z_t = torch.as_tensor(z_mm, dtype=torch.float32, device=device)

    # Ray tracing: the point at axial distance z on the ray through (u, v) is S + z * (axis + u/SAD X_b + v/SAD Y_b).
    matrix, offset = grid.patient_to_normalised()
    ray_direction = (geometry.axis[None, None, :] + (u_mm[None, :, None] * geometry.x_axis
                                                     + v_mm[:, None, None] * geometry.y_axis) / sad)
    start_n = torch.as_tensor(matrix @ geometry.source_mm + offset, dtype=torch.float32, device=device)
    direction_n = torch.as_tensor(ray_direction @ matrix.T, dtype=torch.float32, device=device)  # (Nv, Nu, 3)
    volume = density_t[None, None]
    rows = max(1, options.voxel_chunk // (len(u_mm) * len(v_mm)))
    samples = []
    for first in range(0, z_count, rows):
        points = start_n + z_t[first:first + rows, None, None, None] * direction_n[None]
        samples.append(functional.grid_sample(volume, points[None], mode="bilinear", padding_mode="zeros",
                                              align_corners=True)[0, 0])
    rho = torch.cat(samples)  # (Nz, Nv, Nu)
    path_per_step = options.depth_step_mm * torch.sqrt(1.0 + (u_t[None, :] ** 2 + v_t[:, None] ** 2) / sad**2)
    increments = 0.5 * (rho[1:] + rho[:-1]) * path_per_step
    radiological = torch.cat([torch.zeros_like(rho[:1]), torch.cumsum(increments, dim=0)])
    del rho, increments, samples

    attenuation = _lookup_attenuation(radiological, model)
    ratio = _scatter_ratio(radiological, beam, model, options, u_t, v_t, part)
    inverse_square = ((model.reference_ssd_mm + model.dmax_mm) / z_t) ** 2
    dose = (beam.monitor_units * model.dose_per_mu_gy) * attenuation * ratio * inverse_square[:, None, None]
    return _BevDose(dose, u_mm, v_mm, z_mm, part)


def _lookup_attenuation(radiological: torch.Tensor, model: BeamModel, step_mm: float = 0.5) -> torch.Tensor:
    """``T(d)`` by linear interpolation in a fine table computed once in float64."""
    top = float(radiological.max()) + 2 * step_mm
    table_np = model.attenuation(np.arange(0.0, top + step_mm, step_mm))
    table = torch.as_tensor(table_np, dtype=torch.float32, device=radiological.device)
    position = radiological / step_mm
    lower = position.floor().long().clamp(0, table.numel() - 2)
    fraction = (position - lower).clamp(0.0, 1.0)
    return table[lower] * (1 - fraction) + table[lower + 1] * fraction


def _scatter_ratio(
    radiological: torch.Tensor,
    beam: Beam,
    model: BeamModel,
    options: EngineOptions,
    u_t: torch.Tensor,
    v_t: torch.Tensor,
    part: str,
) -> torch.Tensor:
    """``(F conv K_part)(u, v) / (F_ref conv K)(0, 0)`` at each grid point's radiological depth, ``F`` weighted
    by each aperture's head-scatter factor; ``part`` is ``primary`` or ``scatter`` (_bev_dose)."""
    nodes = np.asarray(options.kernel_depth_nodes_mm)
    sigma_x, sigma_y, scatter_sigma, scatter_weight = model.kernel(nodes)
    half_field = model.reference_field_mm / 2
    # On-axis value of the reference square field convolved with the kernel (separable: a product of erfs).
    reference = ((1 - scatter_weight) * special.erf(half_field / (math.sqrt(2) * sigma_x))
                 * special.erf(half_field / (math.sqrt(2) * sigma_y))
                 + scatter_weight * special.erf(half_field / (math.sqrt(2) * scatter_sigma)) ** 2)
    fluence = _head_scattered_fluence(beam, model, u_t, v_t)  # (Nv, Nu)
    du = float(u_t[1] - u_t[0])
    dv = float(v_t[1] - v_t[0])
    maps = []
    for k in range(len(nodes)):
        weight = float(scatter_weight[k])
        if part == "primary":
            blurred = (1.0 - weight) * (
                _gaussian_matrix(v_t, float(sigma_y[k]), dv) @ fluence
                @ _gaussian_matrix(u_t, float(sigma_x[k]), du).T
            )
        else:  # _bev_dose asks for the scatter part only where the scatter weight is not zero
            blurred = weight * (
                _gaussian_matrix(v_t, float(scatter_sigma[k]), dv) @ fluence
                @ _gaussian_matrix(u_t, float(scatter_sigma[k]), du).T
            )
        maps.append(blurred / float(reference[k]))
    node_maps = torch.stack(maps).reshape(len(nodes), -1)  # (K, Nv*Nu)
    nodes_t = torch.as_tensor(nodes, dtype=torch.float32, device=radiological.device)
    lower = (torch.bucketize(radiological, nodes_t, right=True) - 1).clamp(0, len(nodes) - 2)
    fraction = ((radiological - nodes_t[lower]) / (nodes_t[lower + 1] - nodes_t[lower])).clamp(0.0, 1.0)
    pixel = torch.arange(node_maps.shape[1], device=radiological.device).reshape(1, len(v_t), len(u_t))
    flat = node_maps.reshape(-1)
    columns = node_maps.shape[1]
    return torch.take(flat, lower * columns + pixel) * (1 - fraction) + \
        torch.take(flat, (lower + 1) * columns + pixel) * fraction


def _head_scattered_fluence(beam: Beam, model: BeamModel, u_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """The apertures' fluence, each segment weighted by its meterset share and by ``S_c`` of its equivalent
    square (``2XY / (X + Y)`` of its open extent at the isocentre plane, AAPM TG-74)."""
    total = sum(segment.meterset_weight for segment in beam.segments)
    fluence = torch.zeros((v_t.numel(), u_t.numel()), dtype=u_t.dtype, device=u_t.device)
    for segment in beam.segments:
        extent = segment.open_extent_mm()
        if segment.meterset_weight == 0 or extent is None:
            continue
        width, height = extent[1] - extent[0], extent[3] - extent[2]
        factor = model.head_scatter(2.0 * width * height / (width + height))
        fluence += (segment.meterset_weight / total * factor) * aperture_fluence((segment,), u_t, v_t)
    return fluence


def _frustum_box(bev: _BevDose, grid: _VoxelGrid, geometry: BeamGeometry) -> tuple[tuple[int, int], ...]:
    """The part of the grid's box that the beam's-eye-view grid can reach: (first, end) index along z, y, x."""
    sad = geometry.source_axis_distance_mm
    corners = np.array([geometry.source_mm + z * (geometry.axis + (u * geometry.x_axis + v * geometry.y_axis) / sad)
                        for u in (bev.u_mm[0], bev.u_mm[-1]) for v in (bev.v_mm[0], bev.v_mm[-1])
                        for z in (bev.z_mm[0], bev.z_mm[-1])])
    index = (corners - grid.origin_mm) @ np.linalg.inv(grid.axes_mm).T  # (8, 3): x, y, z
    low, high = np.floor(index.min(axis=0)).astype(int), np.ceil(index.max(axis=0)).astype(int) + 1
    return tuple((max(first, int(low[axis])), min(end, int(high[axis])))
                 for (first, end), axis in zip(grid.box_zyx, (2, 1, 0)))


def _bev_to_voxels(bev: _BevDose, grid: _VoxelGrid, geometry: BeamGeometry, options: EngineOptions) -> torch.Tensor:
    """Interpolate a beam's-eye-view dose at every voxel centre of the grid's box: (z, y, x) tensor, zero
    outside the box."""
    device = bev.dose_gy.device
    (z_first, z_end), (y_first, y_end), (x_first, x_end) = _frustum_box(bev, grid, geometry)
    nz, ny, nx = z_end - z_first, y_end - y_first, x_end - x_first
    full = torch.zeros(grid.shape_zyx, dtype=torch.float32, device=device)
    if min(nz, ny, nx) <= 0:
        return full
    sad = geometry.source_axis_distance_mm
    start = grid.origin_mm + grid.axes_mm @ np.array([x_first, y_first, z_first], dtype=np.float64) \
        - geometry.source_mm

    def components(direction: np.ndarray) -> tuple[float, np.ndarray]:
        # Dot product of (voxel - source) with a direction, split by index axis (affine in the indices).
        steps = grid.axes_mm.T @ direction  # change per index step along x, y, z
        return float(start @ direction), steps

    per_axis = {}
    for key, direction in (("z", geometry.axis), ("a", geometry.x_axis), ("b", geometry.y_axis)):
        constant, steps = components(direction)
        per_axis[key] = (
            constant,
            torch.as_tensor(np.arange(nx) * steps[0], dtype=torch.float32, device=device)[None, None, :],
            torch.as_tensor(np.arange(ny) * steps[1], dtype=torch.float32, device=device)[None, :, None],
            torch.as_tensor(np.arange(nz) * steps[2], dtype=torch.float32, device=device)[:, None, None],
        )

    def scale(axis_mm: np.ndarray) -> tuple[float, float]:
        return float(axis_mm[0]), 2.0 / float(axis_mm[-1] - axis_mm[0])

    u0, u_scale = scale(bev.u_mm)
    v0, v_scale = scale(bev.v_mm)
    z0, z_scale = scale(bev.z_mm)
    dose_grid = bev.dose_gy[None, None]
    out = full[z_first:z_end, y_first:y_end, x_first:x_end]
    slices = max(1, options.voxel_chunk // (ny * nx))
    for first in range(0, nz, slices):
        last = min(nz, first + slices)
        values = {}
        for key, (constant, along_x, along_y, along_z) in per_axis.items():
            values[key] = constant + along_x + along_y + along_z[first:last]
        distance = values["z"]
        u = values["a"] * (sad / distance)
        v = values["b"] * (sad / distance)
        sample = torch.stack([(u - u0) * u_scale - 1, (v - v0) * v_scale - 1, (distance - z0) * z_scale - 1], dim=-1)
        out[first:last] = functional.grid_sample(dose_grid, sample[None], mode="bilinear", padding_mode="zeros",
                                                 align_corners=True)[0, 0]
    return full
