"""Seeded paired MR/CT phantoms: anatomy, CT, T1- and T2-weighted MR, structures.

There is no public paired MR/CT data set the project may ship, so tests,
demos and the default models are built on these phantoms. One seed fixes the
whole phantom: the anatomy, the CT noise and each MR bias field and noise
draw come from independent streams spawned from that seed, so the output is
bit-identical for the same seed and arguments.

References
----------
.. [1] NumPy Enhancement Proposal 19, "Random number generator policy"
   (independent streams via ``SeedSequence.spawn``).
.. [2] DICOM PS3.3 C.7.6.2.1.1 (image position/orientation; the phantoms are
   axial, head-first supine, identity direction in LPS).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from models.errors import PhantomError
from models.phantoms.anatomy import Site, build_anatomy
from models.phantoms.imaging import T1_WEIGHTED, T2_WEIGHTED, simulate_ct, simulate_mr
from models.volume import Volume

__all__ = [
    "CENTRE_Z_MM",
    "DEFAULT_GRIDS",
    "MIN_SHAPE",
    "STRUCTURE_STYLES",
    "Phantom",
    "PhantomStructure",
    "StructureKind",
    "generate_phantom",
]

#: Default (shape_zyx, spacing_mm (x, y, z)) per site: a 256 mm head and a 410 mm pelvis field of view.
DEFAULT_GRIDS: dict[Site, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    Site.HEAD: ((100, 256, 256), (1.0, 1.0, 2.5)),
    Site.PELVIS: ((100, 256, 256), (1.6, 1.6, 2.5)),
}
#: Fewest voxels along any axis.
MIN_SHAPE = 8
#: Patient z (mm) of the grid centre; x and y of the centre are 0.
CENTRE_Z_MM = 0.0


class StructureKind(str, Enum):  # noqa: UP042 -- a StrEnum would change str() and f-strings of a member
    """RT structure category (the DICOM RT ROI Interpreted Type of each structure)."""

    EXTERNAL = "EXTERNAL"
    ORGAN = "ORGAN"
    PTV = "PTV"
    BONE = "BONE"


#: Kind and display colour of every structure a phantom can hold.
STRUCTURE_STYLES: dict[str, tuple[StructureKind, tuple[int, int, int]]] = {
    "BODY": (StructureKind.EXTERNAL, (0, 255, 0)),
    "BONES": (StructureKind.BONE, (230, 230, 200)),
    "PTV": (StructureKind.PTV, (255, 0, 0)),
    "BRAINSTEM": (StructureKind.ORGAN, (255, 0, 255)),
    "EYE_L": (StructureKind.ORGAN, (0, 160, 255)),
    "EYE_R": (StructureKind.ORGAN, (0, 255, 255)),
    "BLADDER": (StructureKind.ORGAN, (255, 255, 0)),
    "RECTUM": (StructureKind.ORGAN, (160, 90, 40)),
    "FEMUR_HEAD_L": (StructureKind.ORGAN, (0, 0, 255)),
    "FEMUR_HEAD_R": (StructureKind.ORGAN, (0, 128, 255)),
}


@dataclass(frozen=True, eq=False)
class PhantomStructure:
    """A named region of interest of a phantom (compared by identity).

    Parameters
    ----------
    name : str
        Upper-case ROI name, e.g. ``"BODY"``, ``"PTV"``, ``"EYE_L"``.
    mask : numpy.ndarray
        Boolean mask in ``(z, y, x)`` order on the phantom grid.
    kind : str
        ``"EXTERNAL"``, ``"ORGAN"``, ``"PTV"`` or ``"BONE"``; stored as a
        :class:`StructureKind` (a ``str``).
    color_rgb : tuple of int
        Display colour, each channel in [0, 255].

    Raises
    ------
    PhantomError
        If the mask is not a 3D boolean array, the kind is unknown or a
        colour channel is out of range.
    """

    name: str
    mask: np.ndarray
    kind: str
    color_rgb: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.bool_ or self.mask.ndim != 3:
            raise PhantomError(f"structure {self.name!r}: mask must be a 3D bool array; found {self.mask!r:.60}")
        try:
            object.__setattr__(self, "kind", StructureKind(self.kind))
        except ValueError:
            kinds = [k.value for k in StructureKind]
            raise PhantomError(f"structure {self.name!r}: kind must be one of {kinds}; found {self.kind!r}") from None
        if len(self.color_rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.color_rgb):
            raise PhantomError(
                f"structure {self.name!r}: color_rgb must be 3 values in [0, 255]; found {self.color_rgb}"
            )


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated paired MR/CT phantom (compared by identity).

    Attributes
    ----------
    site : str
        ``"head"`` or ``"pelvis"``.
    seed : int
        The seed it was generated from.
    labels : Volume
        ``uint8`` :class:`~models.phantoms.tissues.Tissue` labels.
    ct_hu : Volume
        ``int16`` CT in HU.
    mr_t1, mr_t2 : Volume
        ``float32`` T1- and T2-weighted spin-echo magnitudes.
    structures : tuple of PhantomStructure
        ``BODY``, ``BONES``, ``PTV`` and the site's organs at risk.

    All volumes share one grid.
    """

    site: str
    seed: int
    labels: Volume
    ct_hu: Volume
    mr_t1: Volume
    mr_t2: Volume
    structures: tuple[PhantomStructure, ...]

    @property
    def body_mask(self) -> np.ndarray:
        """Boolean ``(z, y, x)`` mask of the external outline (structure ``BODY``)."""
        return self.structure("BODY").mask

    def structure(self, name: str) -> PhantomStructure:
        """The structure called ``name``.

        Raises
        ------
        PhantomError
            If the phantom has no such structure.
        """
        for s in self.structures:
            if s.name == name:
                return s
        raise PhantomError(f"phantom has no structure {name!r}; it has {[s.name for s in self.structures]}")

    def mr(self, weighting: str) -> Volume:
        """The MR image of ``weighting`` ``"t1"`` or ``"t2"`` (case-insensitive).

        Raises
        ------
        PhantomError
            If ``weighting`` is neither.
        """
        key = str(weighting).lower()
        if key not in ("t1", "t2"):
            raise PhantomError(f"MR weighting must be 't1' or 't2'; found {weighting!r}")
        return self.mr_t1 if key == "t1" else self.mr_t2


def _resolve_grid(
    site: Site, shape_zyx: Sequence[int] | None, spacing_mm: Sequence[float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    default_shape, default_spacing = DEFAULT_GRIDS[site]
    fov_zyx = np.asarray(default_shape) * np.asarray(default_spacing[::-1])
    shape: tuple[int, int, int] | None = None
    if shape_zyx is not None:
        if (
            isinstance(shape_zyx, (str, bytes))
            or len(shape_zyx) != 3
            or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in shape_zyx)
        ):
            raise PhantomError(f"shape_zyx must be three integers (z, y, x); found {shape_zyx!r}")
        if min(shape_zyx) < MIN_SHAPE:
            raise PhantomError(f"shape_zyx must be at least {MIN_SHAPE} along every axis; found {tuple(shape_zyx)}")
        nz, ny, nx = (int(n) for n in shape_zyx)
        shape = (nz, ny, nx)
    spacing: tuple[float, float, float] | None = None
    if spacing_mm is not None:
        try:
            values = [float(s) for s in spacing_mm]
        except (TypeError, ValueError):
            raise PhantomError(f"spacing_mm must be three positive numbers (x, y, z); found {spacing_mm!r}") from None
        if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
            raise PhantomError(f"spacing_mm must be three positive numbers (x, y, z); found {spacing_mm!r}")
        spacing = (values[0], values[1], values[2])
    if shape is None:
        if spacing is None:
            return default_shape, default_spacing
        # Cover the site's field of view at the given spacing.
        nz, ny, nx = (max(MIN_SHAPE, int(round(f / s))) for f, s in zip(fov_zyx, spacing[::-1]))
        return (nz, ny, nx), spacing
    if spacing is None:
        # Keep the site's field of view: only the sampling changes.
        sx, sy, sz = (float(f / n) for f, n in zip(fov_zyx[::-1], shape[::-1]))
        return shape, (sx, sy, sz)
    return shape, spacing


def generate_phantom(
    site: str,
    seed: int,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> Phantom:
    """Generate a paired MR/CT phantom.

    Parameters
    ----------
    site : str
        ``"head"`` or ``"pelvis"`` (or a :class:`Site`).
    seed : int
        Non-negative integer; the same seed and grid give bit-identical output.
    shape_zyx : tuple of int, optional
        Grid size (slices, rows, columns), each at least :data:`MIN_SHAPE`.
        Default: :data:`DEFAULT_GRIDS`. Given without ``spacing_mm``, the
        spacing is chosen so the grid keeps the site's default field of view.
    spacing_mm : tuple of float, optional
        Voxel size (x, y, z) in mm, positive. Given without ``shape_zyx``, the
        shape is chosen to cover the site's default field of view.

    Returns
    -------
    Phantom
        Grid centred on the patient at (0, 0, :data:`CENTRE_Z_MM`), identity
        direction (axial, head-first supine: +x patient left, +y posterior,
        +z superior; slice 0 is the most inferior). The anatomy is scaled
        down when the field of view is too small for an adult.

    Raises
    ------
    PhantomError
        If the site is unknown, the seed is not a non-negative integer, the
        shape or spacing is malformed, or the grid is too coarse for every
        structure to hold a voxel.

    References
    ----------
    NEP 19 (module reference [1]) for the seeded streams.
    """
    try:
        site_enum = Site(site.lower() if isinstance(site, str) else site)
    except ValueError:
        raise PhantomError(f"site must be one of {[s.value for s in Site]}; found {site!r}") from None
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise PhantomError(f"seed must be a non-negative integer; found {seed!r}")
    shape, spacing = _resolve_grid(site_enum, shape_zyx, spacing_mm)
    ox, oy, oz = (-(n - 1) / 2.0 * s + c for n, s, c in zip(shape[::-1], spacing, (0.0, 0.0, CENTRE_Z_MM)))
    origin = (ox, oy, oz)

    # Separate streams: changing how one stage draws never changes the others.
    anatomy_ss, ct_ss, t1_ss, t2_ss = np.random.SeedSequence(int(seed)).spawn(4)
    anatomy = build_anatomy(site_enum, shape, spacing, origin, np.random.default_rng(anatomy_ss))
    labels = Volume(anatomy.labels, spacing, origin)
    return Phantom(
        site=site_enum.value,
        seed=int(seed),
        labels=labels,
        ct_hu=simulate_ct(labels, np.random.default_rng(ct_ss)),
        mr_t1=simulate_mr(labels, T1_WEIGHTED, np.random.default_rng(t1_ss)),
        mr_t2=simulate_mr(labels, T2_WEIGHTED, np.random.default_rng(t2_ss)),
        structures=tuple(
            PhantomStructure(name, mask, *STRUCTURE_STYLES[name]) for name, mask in anatomy.masks.items()
        ),
    )
