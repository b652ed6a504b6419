"""Seeded, deformed anatomy of a head or a male pelvis as a tissue label map.

Organs are superellipsoids in patient coordinates (LPS, mm; head-first
supine: +x patient left, +y posterior, +z superior) sampled through one smooth
random displacement field, so that shapes are not perfect ellipses while
nested layers (skin, fat, skull tables, cortex) stay nested. Each shape is
evaluated only inside its bounding box, which keeps a 100 x 256 x 256 grid
within a second or two.

The nominal sizes are adult dimensions in millimetres; all of them are
multiplied by one scale factor, at most 1 (times a random size factor), so
that the whole body fits the field of view of any grid. Layer thicknesses are
kept at least one in-plane voxel so that thin shells (skin, cortical bone)
survive coarse test grids.

References
----------
.. [1] Barr A.H., "Superquadrics and angle-preserving transformations",
   IEEE Comput. Graph. Appl. 1(1):11-23, 1981 (superellipsoid level function).
.. [2] Segars W.P. et al., "4D XCAT phantom for multimodality imaging
   research", Med. Phys. 37:4902-4915, 2010 (phantoms built from deformed
   analytic organ surfaces; the organ list and layout follow clinical atlases).
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import ndimage

from models.errors import PhantomError
from models.phantoms.tissues import Tissue

__all__ = ["Anatomy", "Site", "build_anatomy"]

T = Tissue
#: A point or a vector in (x, y, z): a tuple of numbers or an array of three.
Vector = Sequence[float] | np.ndarray
BONE_TISSUES = (T.CORTICAL_BONE, T.MARROW)
BRAIN_TISSUES = (T.BRAIN_GM, T.BRAIN_WM)


class Site(str, Enum):  # noqa: UP042 -- a StrEnum would change str() and f-strings of a member
    """Anatomical site of a phantom; accepts its string value."""

    HEAD = "head"
    PELVIS = "pelvis"


@dataclass(frozen=True, eq=False)
class Anatomy:
    """A label map and its named region masks, as built by :func:`build_anatomy`.

    Attributes
    ----------
    site : Site
    labels : numpy.ndarray
        ``uint8`` :class:`Tissue` values in ``(z, y, x)`` order.
    masks : Mapping of str to numpy.ndarray
        Read-only; boolean ``(z, y, x)`` masks, each non-empty and inside
        ``BODY``: ``BODY``, ``BONES``, ``PTV`` and the site's organs at risk
        (head: ``BRAINSTEM``, ``EYE_L``, ``EYE_R``; pelvis: ``BLADDER``,
        ``RECTUM``, ``FEMUR_HEAD_L``, ``FEMUR_HEAD_R``).
    scale : float
        Factor applied to the nominal adult dimensions (about 1 unless the
        field of view was too small for an adult).
    """

    site: Site
    labels: np.ndarray
    masks: Mapping[str, np.ndarray]
    scale: float


@dataclass(frozen=True)
class _Shape:
    """Superellipsoid ``|u/a|^p + |v/b|^p + |w/c|^q <= 1`` in a local frame.

    ``axes`` columns are the local axes in patient space; ``warp`` marks
    shapes that get an extra high-frequency displacement (cortical gyri).
    """

    centre: np.ndarray
    radii: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    p_xy: float = 2.0
    p_z: float = 2.0
    warp: _Warp | None = None

    def grown(self, delta_mm: np.ndarray) -> _Shape:
        return _Shape(self.centre, self.radii + delta_mm, self.axes, self.p_xy, self.p_z, self.warp)


class _Warp:
    """Smooth random displacement: sum of separable cosine products per component.

    Separable terms are evaluated from 1D factors, so a full 3D field costs a
    few broadcast multiplications rather than trigonometry on every voxel.
    """

    def __init__(
        self, rng: np.random.Generator, amplitude_mm: float, wavelength_mm: tuple[float, float], n_terms: int = 3
    ) -> None:
        self.amplitude_mm = amplitude_mm
        self.terms = []
        for _component in range(3):
            comp = []
            for _ in range(n_terms):
                k = 2 * np.pi / rng.uniform(*wavelength_mm, size=3)
                phase = rng.uniform(0, 2 * np.pi, size=3)
                # Amplitudes sum to at most amplitude_mm: a hard bound used for bounding boxes.
                comp.append((amplitude_mm / n_terms * rng.uniform(0.5, 1.0), k, phase))
            self.terms.append(comp)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
        out = []
        for comp in self.terms:
            total = np.zeros((z.size, y.size, x.size), np.float32)
            for a, k, ph in comp:
                fx = np.cos(k[0] * x + ph[0]).astype(np.float32)
                fy = np.cos(k[1] * y + ph[1]).astype(np.float32)
                fz = (a * np.cos(k[2] * z + ph[2])).astype(np.float32)
                total += fz[:, None, None] * (fy[:, None] * fx[None, :])[None]
            out.append(total)
        return out


class _Canvas:
    """Label map under construction with warped patient coordinates."""

    def __init__(self, shape_zyx: tuple[int, int, int], spacing_mm: Sequence[float], origin_mm: Sequence[float]) -> None:
        self.spacing = np.asarray(spacing_mm, float)
        self.origin = np.asarray(origin_mm, float)
        self.coords = [self.origin[i] + self.spacing[i] * np.arange(n) for i, n in enumerate(shape_zyx[::-1])]
        self.labels = np.zeros(shape_zyx, np.uint8)
        self.body: np.ndarray | None = None
        self.scale, self.centre = 1.0, np.zeros(3)

    def fov_half_mm(self) -> np.ndarray:
        return (np.array([c[-1] - c[0] for c in self.coords]) + self.spacing) / 2

    def start(self, scale: float, centre_mm: np.ndarray, warp: _Warp) -> None:
        self.scale, self.centre, self.warp = scale, centre_mm, warp
        x, y, z = self.coords
        dx, dy, dz = warp(x, y, z)
        self.xyz = (x[None, None, :] + dx, y[None, :, None] + dy, z[:, None, None] + dz)

    # --- shape factories, nominal millimetres relative to the anatomy centre
    def ell(
        self, c: Vector, r: Vector, p_xy: float = 2.0, p_z: float = 2.0, angle_deg: float = 0.0
    ) -> _Shape:
        """Superellipsoid at ``c`` with radii ``r``, turned by ``angle_deg`` about z."""
        a = np.deg2rad(angle_deg)
        axes = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        centre = self.centre + self.scale * np.asarray(c, float)
        return _Shape(centre, self.scale * np.asarray(r, float), axes, p_xy, p_z)

    def seg(
        self,
        p0: Vector,
        p1: Vector,
        r_a: float,
        r_b: float | None = None,
        ref: Vector = (0, 0, 1),
    ) -> _Shape:
        """Capsule-like ellipsoid from ``p0`` to ``p1``; ``r_a`` along ``ref``, ``r_b`` across both."""
        start, end = np.asarray(p0, float), np.asarray(p1, float)
        u = (end - start) / np.linalg.norm(end - start)
        v = np.asarray(ref, float) - np.dot(ref, u) * u
        if np.linalg.norm(v) < 1e-6:  # ref parallel to the segment: any perpendicular will do
            v = np.cross(u, [1.0, 0, 0]) if abs(u[0]) < 0.9 else np.cross(u, [0, 1.0, 0])
        v = v / np.linalg.norm(v)
        r_b = r_a if r_b is None else r_b
        # local z = segment axis so the (p_xy, p_z) convention keeps ellipsoids at 2, 2.
        axes = np.column_stack([v, np.cross(u, v), u])
        r = [r_a, r_b, np.linalg.norm(end - start) / 2 + min(r_a, r_b)]
        return _Shape(self.centre + self.scale * (start + end) / 2, self.scale * np.asarray(r), axes)

    def thickness(self, shape: _Shape, t_mm: float) -> np.ndarray:
        """Per-local-axis thickness: scaled, at least one in-plane voxel (no z guard: slices may be thick)."""
        guard = np.sqrt((shape.axes[0] * self.spacing[0]) ** 2 + (shape.axes[1] * self.spacing[1]) ** 2)
        return np.maximum(t_mm * self.scale, guard)

    # --- evaluation and painting
    def inside(self, shape: _Shape) -> tuple[tuple[slice, ...], np.ndarray] | None:
        if np.any(shape.radii <= 0):
            return None
        pad = self.warp.amplitude_mm + (shape.warp.amplitude_mm if shape.warp else 0.0)
        half = np.abs(shape.axes) @ shape.radii + pad + self.spacing
        bounds = []
        for i in (2, 1, 0):
            n = len(self.coords[i])
            lo = int(np.clip(np.floor((shape.centre[i] - half[i] - self.origin[i]) / self.spacing[i]), 0, n))
            hi = int(np.clip(np.ceil((shape.centre[i] + half[i] - self.origin[i]) / self.spacing[i]) + 1, 0, n))
            if hi <= lo:
                return None
            bounds.append(slice(lo, hi))
        sl = tuple(bounds)
        d = [self.xyz[i][sl] - np.float32(shape.centre[i]) for i in range(3)]
        if shape.warp is not None:
            extra = shape.warp(self.coords[0][sl[2]], self.coords[1][sl[1]], self.coords[2][sl[0]])
            d = [d[i] + extra[i] for i in range(3)]
        level = np.zeros(d[0].shape, np.float32)
        for j in range(3):
            a = shape.axes[:, j]
            u = d[0] * np.float32(a[0]) if a[0] else np.zeros_like(level)
            if a[1]:
                u += d[1] * np.float32(a[1])
            if a[2]:
                u += d[2] * np.float32(a[2])
            u = np.abs(u, out=u) / np.float32(shape.radii[j])
            p = shape.p_z if j == 2 else shape.p_xy
            level += u * u if p == 2 else (np.square(np.square(u)) if p == 4 else u ** np.float32(p))
        return sl, level <= 1.0

    def paint(
        self,
        shape: _Shape,
        tissue: Tissue,
        over: Sequence[Tissue] | None = None,
        within: np.ndarray | None = None,
    ) -> np.ndarray:
        """Set ``tissue`` inside ``shape`` (and the body, ``over`` and ``within``); return the painted mask."""
        painted = np.zeros(self.labels.shape, bool)
        hit = self.inside(shape)
        if hit is None:
            return painted
        sl, m = hit
        if self.body is not None:
            m &= self.body[sl]
        if over is not None:
            m &= np.isin(self.labels[sl], np.asarray(over, np.uint8))
        if within is not None:
            m &= within[sl]
        self.labels[sl][m] = tissue
        painted[sl] = m
        return painted

    def nest(self, shapes: Sequence[_Shape], layers: Sequence[tuple[Tissue | None, float]]) -> list[_Shape]:
        """Paint concentric layers ``(tissue, thickness_mm)`` from the surface inwards; return the cores."""
        depth = [np.zeros(3) for _ in shapes]
        for tissue, t_mm in layers:
            for i, s in enumerate(shapes):
                if tissue is not None:
                    self.paint(s.grown(-depth[i]), tissue)
                depth[i] = depth[i] + self.thickness(s, t_mm)
        return [s.grown(-d) for s, d in zip(shapes, depth)]

    def bone(self, shapes: Sequence[_Shape], cortex_mm: float | Sequence[float]) -> np.ndarray:
        """Cortical shell around marrow for the union of ``shapes``; return the bone mask."""
        cortex = cortex_mm if isinstance(cortex_mm, Sequence) else [cortex_mm] * len(shapes)
        mask = np.zeros(self.labels.shape, bool)
        for s in shapes:
            mask |= self.paint(s, T.CORTICAL_BONE)
        for s, t in zip(shapes, cortex):
            self.paint(s.grown(-self.thickness(s, t)), T.MARROW, within=mask)
        return mask

    def dilate(self, mask: np.ndarray, margin_mm: float) -> np.ndarray:
        """Voxels within ``margin_mm`` of ``mask`` (exact Euclidean distance), clipped to the body."""
        out = np.zeros_like(mask)
        if not mask.any():
            return out
        pad = np.ceil(margin_mm / self.spacing[::-1]).astype(int) + 1
        idx = np.nonzero(mask)
        sl = tuple(slice(max(i.min() - p, 0), i.max() + p + 1) for i, p in zip(idx, pad))
        dist = ndimage.distance_transform_edt(~mask[sl], sampling=self.spacing[::-1])
        out[sl] = dist <= margin_mm
        return out & self.body

    def fit_scale(self, size: float, half_extent_mm: Sequence[float], warp_mm: float) -> float:
        """Anatomy scale: ``size`` unless the field of view is too small for the body."""
        avail = self.fov_half_mm() - warp_mm - 2 * self.spacing
        return float(size * min(1.0, np.min(avail / (size * np.asarray(half_extent_mm)))))


def _jit(rng: np.random.Generator, values: Sequence[float], frac: float) -> np.ndarray:
    return np.asarray(values, float) * (1 + rng.uniform(-frac, frac, size=len(values)))


def _build_head(cv: _Canvas, rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = rng.uniform(0.93, 1.07)
    half_z = (88 + 90) / 2  # vertex down to below the brainstem and maxillary sinuses
    scale = cv.fit_scale(size, (82, 108, half_z), 3.0)
    # Vertex 8 mm (scaled) below the top slice, clear of the 3 mm warp and two slices: the
    # head never leaves through the top, while the neck leaves through slice 0 as in a scan.
    top = cv.coords[2][-1] - 3.0 - 2 * cv.spacing[2] - scale * 8
    centre = np.array([rng.uniform(-3, 3) * scale, rng.uniform(-3, 3) * scale, top - 88 * scale])
    cv.start(scale, centre, _Warp(rng, 3.0 * scale, (90 * scale, 220 * scale)))

    cranium = cv.ell((0, 0, 0), _jit(rng, (76, 96, 88), 0.04))
    face = cv.ell((0, -20, -70), _jit(rng, (66, 86, 70), 0.04))
    neck = cv.ell((0, 12, -160), _jit(rng, (56, 58, 100), 0.05))
    scalp_fat = rng.uniform(3, 6)
    cv.nest([cranium, face, neck], [(T.SKIN, 2.0), (T.FAT, scalp_fat)])
    cv.body = cv.labels != T.OUTSIDE_AIR
    cv.nest([face, neck], [(None, 2.0), (None, 6.0), (T.MUSCLE, rng.uniform(8, 12)), (T.SOFT_TISSUE, 0)])
    # The cortex is 2.5-3 mm thick but folded; an unfolded band of 4.5-6 mm gives grey matter a
    # realistic share of the brain's volume and of its MR contrast.
    skull = [(None, 2.0), (None, scalp_fat), (T.CORTICAL_BONE, 2.0), (T.MARROW, rng.uniform(2.5, 4.0)),
             (T.CORTICAL_BONE, 2.0), (T.CSF, rng.uniform(2.0, 3.5)), (T.BRAIN_GM, rng.uniform(4.5, 6.0))]
    (wm,) = cv.nest([cranium], skull)
    gyri = _Warp(rng, 2.0 * scale, (18 * scale, 35 * scale), n_terms=4)
    cv.paint(_Shape(wm.centre, wm.radii, wm.axes, warp=gyri), T.BRAIN_WM)

    # Deep grey nuclei, then ventricles and the interhemispheric fissure (CSF) inside the brain.
    for sx in (-1, 1):
        cv.paint(cv.ell((sx * 20, 4, -2), _jit(rng, (11, 17, 11), 0.1)), T.BRAIN_GM, over=BRAIN_TISSUES)
    for sx in (-1, 1):
        cv.paint(cv.ell((sx * 11, -2, 12), _jit(rng, (5.5, 28, 9), 0.15), angle_deg=sx * 8), T.CSF, over=BRAIN_TISSUES)
    cv.paint(cv.ell((0, 4, -6), (2.0, 13, 9)), T.CSF, over=BRAIN_TISSUES)
    cv.paint(cv.ell((0, 0, 50), (1.5, 85, 45)), T.CSF, over=BRAIN_TISSUES)  # fissure above the corpus callosum

    # Brainstem surrounded by its cisterns, continuing into the cord in the spinal canal.
    cv.bone([cv.seg((0, 8, -260), (0, 10, -84), 12)], 2.0)
    cv.paint(cv.seg((0, 30, -260), (0, 26, -72), 8), T.CSF)
    cv.paint(cv.seg((0, 30, -260), (0, 26, -72), 4.5), T.BRAIN_WM)
    stem = cv.ell((0, 18, -48), _jit(rng, (13, 14, 28), 0.08))
    cv.paint(stem.grown(cv.thickness(stem, 3.0)), T.CSF, over=BRAIN_TISSUES)
    brainstem = cv.paint(stem, T.BRAIN_WM)

    # Mandible (body and rami), airways and sinuses (bony walls around air).
    chin = (0, -74, -110)
    jaw = []
    for sx in (-1, 1):
        angle = (sx * 46, -12, -106)
        jaw += [cv.seg(chin, angle, 9), cv.seg(angle, (sx * 50, 0, -70), 8, 6)]
    cv.bone(jaw, 2.5)
    cv.paint(cv.seg((0, -20, -260), (0, -25, -96), 8), T.AIR_CAVITY)
    cv.paint(cv.ell((0, -68, -74), _jit(rng, (8, 22, 22), 0.1)), T.AIR_CAVITY, over=(T.MUSCLE, T.SOFT_TISSUE))
    for sx in (-1, 1):
        sinus = cv.ell((sx * 28, -56, -80), _jit(rng, (13, 16, 17), 0.12))
        cv.paint(sinus.grown(cv.thickness(sinus, 2.0)), T.CORTICAL_BONE, over=(T.MUSCLE, T.SOFT_TISSUE))
        cv.paint(sinus, T.AIR_CAVITY, over=(T.CORTICAL_BONE,))
    cv.paint(cv.ell((0, -86, -14), _jit(rng, (12, 4, 8), 0.15)), T.AIR_CAVITY, over=BONE_TISSUES)

    # Eyes in their orbital fat, anterior (small y) and below the frontal lobes.
    eyes = {}
    eye_x, eye_r = rng.uniform(30, 34), rng.uniform(11, 13)
    not_brain = (T.SKIN, T.FAT, T.MUSCLE, T.SOFT_TISSUE, T.CORTICAL_BONE, T.MARROW, T.CSF, T.AIR_CAVITY)
    for sx, name in ((1, "EYE_L"), (-1, "EYE_R")):
        cv.paint(cv.ell((sx * eye_x, -80, -44), (eye_r + 5,) * 3), T.FAT, over=not_brain)
        eyes[name] = cv.paint(cv.ell((sx * eye_x, -82, -44), (eye_r,) * 3), T.EYE)

    # Target: a tumour in one hemisphere (not painted) plus a 5 mm margin.
    side = rng.choice([-1, 1])
    gtv_c = (side * rng.uniform(15, 30), rng.uniform(-35, 25), rng.uniform(5, 35))
    gtv = np.zeros(cv.labels.shape, bool)
    hit = cv.inside(cv.ell(gtv_c, _jit(rng, (12, 12, 12), 0.25)))
    if hit is not None:
        gtv[hit[0]] = hit[1]
    # Later shapes may overwrite an organ's edge: keep only voxels still holding its tissue.
    eyes = {name: m & (cv.labels == T.EYE) for name, m in eyes.items()}
    brainstem &= cv.labels == T.BRAIN_WM
    return {"PTV": cv.dilate(gtv & cv.body, 5.0), "BRAINSTEM": brainstem, **eyes}


def _build_pelvis(cv: _Canvas, rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = rng.uniform(0.93, 1.07)
    scale = cv.fit_scale(size, (177, 122, 85), 6.0)
    centre = np.array([rng.uniform(-4, 4) * scale, rng.uniform(-4, 4) * scale, rng.uniform(-10, 10) * scale])
    cv.start(scale, centre, _Warp(rng, 6.0 * scale, (120 * scale, 300 * scale)))

    torso = cv.ell((0, 0, 250), _jit(rng, (175, 120, 330), 0.04), p_xy=rng.uniform(2.2, 2.8), p_z=6)
    thighs = [cv.ell((sx * 100, -5, -190), _jit(rng, (78, 82, 150), 0.04), p_z=4) for sx in (-1, 1)]
    cv.nest([torso, *thighs], [(T.SKIN, 2.0), (T.FAT, rng.uniform(12, 35)), (T.MUSCLE, 0)])
    cv.body = cv.labels != T.OUTSIDE_AIR
    cv.paint(cv.ell((0, -5, 90), _jit(rng, (110, 82, 100), 0.05)), T.SOFT_TISSUE, over=(T.MUSCLE,))
    cv.paint(cv.ell((0, 20, -25), _jit(rng, (50, 45, 40), 0.1)), T.FAT, over=(T.MUSCLE, T.SOFT_TISSUE))
    rectum = cv.seg((0, 5, -62), (0, 40, 62), rng.uniform(15, 19), rng.uniform(13, 17), ref=(1, 0, 0))
    cv.paint(rectum.grown(cv.thickness(rectum, 10.0)), T.FAT, over=(T.MUSCLE, T.SOFT_TISSUE))

    # Hip bones, sacrum and coccyx: cortical shell around cancellous marrow.
    pelvis = [cv.seg((0, 62, 130), (0, 80, 60), 50, 17, ref=(1, 0, 0)),
              cv.seg((0, 80, 70), (0, 96, 12), 30, 14, ref=(1, 0, 0)),
              cv.seg((0, 98, 8), (0, 86, -25), 7)]
    for sx in (-1, 1):
        pelvis += [cv.seg((sx * 45, 72, 95), (sx * 122, -30, 100), 42, 9),
                   cv.ell((sx * 78, -2, 28), _jit(rng, (30, 40, 42), 0.05)),
                   cv.seg((sx * 75, 8, 18), (sx * 55, 35, -48), 15),
                   cv.seg((sx * 75, -15, 10), (sx * 12, -62, -5), 11),
                   cv.seg((sx * 12, -60, -15), (sx * 58, 28, -50), 9)]
    cv.bone(pelvis, 2.5)

    # Femora: head in the acetabulum (cartilage gap), neck, trochanter, shaft.
    femurs = {}
    head_r = rng.uniform(22, 26)
    for sx, name in ((1, "FEMUR_HEAD_L"), (-1, "FEMUR_HEAD_R")):
        hc = (sx * 92, -8, 22)
        head = cv.ell(hc, (head_r,) * 3)
        cv.paint(head.grown(cv.thickness(head, 2.5)), T.SOFT_TISSUE, over=BONE_TISSUES)
        neck = cv.seg(hc, (sx * 122, 0, -6), 15)
        femurs[name] = cv.bone([head, neck], 2.5)
        trochanter = cv.ell((sx * 126, 6, -6), (16, 22, 26))
        cv.bone([trochanter, cv.seg((sx * 122, 2, -15), (sx * 100, 0, -320), 15)], [2.5, 5.0])
        femurs[name] &= np.isin(cv.labels, BONE_TISSUES)

    # Pelvic organs: bladder above and anterior to the prostate, rectum behind it.
    bladder_shape = cv.ell((0, -28, 40), (42, 32, 32) * rng.uniform(0.8, 1.2, size=3))
    bladder = cv.paint(bladder_shape, T.MUSCLE)
    cv.paint(bladder_shape.grown(-cv.thickness(bladder_shape, 3.0)), T.BLADDER_URINE)
    rect = cv.paint(rectum, T.RECTUM_WALL)
    lumen = cv.paint(rectum.grown(-cv.thickness(rectum, 3.0)), T.SOFT_TISSUE, within=rect)
    if rng.uniform() < 0.5:  # gas rises to the non-dependent (anterior) side in a supine patient
        t = rng.uniform(0.3, 0.8)
        cv.paint(cv.ell((0, 5 + 35 * t - 6, -62 + 124 * t), (10, 7, 15)), T.AIR_CAVITY, within=lumen)
    prostate = cv.paint(cv.ell((0, -20, -12), (22, 16, 18) * rng.uniform(0.85, 1.2, size=3)), T.PROSTATE)
    bladder &= np.isin(cv.labels, (T.MUSCLE, T.BLADDER_URINE))
    rect &= np.isin(cv.labels, (T.RECTUM_WALL, T.SOFT_TISSUE, T.AIR_CAVITY))
    return {"PTV": cv.dilate(prostate, 7.0), "BLADDER": bladder, "RECTUM": rect, **femurs}


def build_anatomy(
    site: Site | str,
    shape_zyx: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    origin_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> Anatomy:
    """Build a randomised label map and its structures on a grid.

    Parameters
    ----------
    site : Site or str
        ``"head"`` or ``"pelvis"``.
    shape_zyx : tuple of int
        Grid size (slices, rows, columns).
    spacing_mm, origin_mm : tuple of float
        Voxel size and centre of voxel ``[0, 0, 0]`` in (x, y, z), mm, with an
        identity direction (axial, head-first supine).
    rng : numpy.random.Generator
        Source of every random choice; the same state gives the same anatomy.

    Returns
    -------
    Anatomy
        Labels and region masks.

    Raises
    ------
    PhantomError
        If the site is unknown or the grid is too coarse for a structure to
        hold a single voxel.
    """
    try:
        site = Site(site)
    except ValueError:
        raise PhantomError(f"site must be one of {[s.value for s in Site]}; found {site!r}") from None
    nz, ny, nx = shape_zyx
    cv = _Canvas((int(nz), int(ny), int(nx)), spacing_mm, origin_mm)
    organs = _build_head(cv, rng) if site is Site.HEAD else _build_pelvis(cv, rng)
    labels = cv.labels
    masks = {"BODY": labels != T.OUTSIDE_AIR, "BONES": np.isin(labels, BONE_TISSUES), **organs}
    for name, mask in masks.items():
        mask &= masks["BODY"]
        if not mask.any():
            raise PhantomError(
                f"structure {name} holds no voxel on the {site.value} grid {tuple(shape_zyx)} with spacing "
                f"{tuple(spacing_mm)} mm; use a finer spacing or a larger field of view"
            )
    return Anatomy(site, labels, types.MappingProxyType(masks), cv.scale)
