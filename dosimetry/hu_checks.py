"""Measurements that run on every sCT, with or without a reference CT.

Four groups, each a function returning a frozen dataclass of measured values.
There are no verdicts here: thresholds and PASS/WARN/FAIL live in
:mod:`dosimetry.verdict`.

* :func:`hu_statistics` - inside the body: the share of each tissue class
  (:mod:`dosimetry.tissue_classes`), the mean HU of soft tissue and of bone,
  NaN/inf counts, the HU extremes and the share of values that are not a
  valid CT number in [-1024, 3071] HU (the 12-bit range SynthRAD2025 stores).
* :func:`body_outline_agreement` - the sCT's own body outline (voxels above
  -400 HU, largest connected component, holes filled in 3D and slice by
  slice) against the MR body mask: Dice and symmetric surface distances
  (:func:`compare_masks`).
* :func:`field_of_view_truncation` and :func:`slice_coverage` - whether the
  body runs off the in-plane image, and whether the sCT has exactly the MR's
  slices.
* :func:`uncertainty_region` - where a model's voxel-wise uncertainty (a
  standard deviation in HU, e.g. over an ensemble or over diffusion samples)
  exceeds a level: the share of the body, its bounding box and centroid.

The default outline threshold, -400 HU, lies well above air (-1000 HU) and
well below fat (about -100 HU): a voxel at the skin counts as body when
58 % (muscle, 40 HU) to 67 % (fat, -100 HU) of it is tissue, and
subcutaneous fat never falls out of the outline. It is a parameter.

References
----------
T. Heimann et al., "Comparison and evaluation of methods for liver
segmentation from CT datasets", IEEE Trans. Med. Imaging 28(8), 1251-1265
(2009) (average and maximum symmetric surface distance).

L. R. Dice, "Measures of the amount of ecologic association between
species", Ecology 26(3), 297-302 (1945).

MONAI ``compute_hausdorff_distance(..., percentile=95, directed=False)``: the
95th-percentile distance is the larger of the two directed percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dosimetry._grids import as_mask, require_nonempty, require_same_grid, require_volume
from dosimetry.errors import DosimetryError
from dosimetry.tissue_classes import TISSUE_CLASSES, TissueClass, TissueThresholdsHu
from models.volume import Volume

__all__ = [
    "HU_VALID_RANGE",
    "SCT_BODY_THRESHOLD_HU",
    "FieldOfViewTruncation",
    "HuStatistics",
    "MaskAgreement",
    "SliceCoverage",
    "TissueFraction",
    "UncertaintyRegion",
    "body_outline_agreement",
    "compare_masks",
    "field_of_view_truncation",
    "hu_statistics",
    "sct_body_outline",
    "slice_coverage",
    "uncertainty_region",
]

#: Valid CT numbers (inclusive): the 12-bit range of a CT stored as int16, as SynthRAD2025 clips it.
HU_VALID_RANGE: tuple[float, float] = (-1024.0, 3071.0)
#: Default threshold of the sCT body outline, between air (-1000 HU) and fat (about -100 HU).
SCT_BODY_THRESHOLD_HU: float = -400.0


# --------------------------------------------------------------------------------------------------- HU statistics


@dataclass(frozen=True)
class TissueFraction:
    """Share of the body in one tissue class.

    Attributes
    ----------
    tissue : TissueClass
    lower_hu, upper_hu : float
        The class interval ``[lower_hu, upper_hu)``.
    voxel_count : int
    fraction : float
        ``voxel_count`` over the body's voxel count, in [0, 1].
    """

    tissue: TissueClass
    lower_hu: float
    upper_hu: float
    voxel_count: int
    fraction: float

    @property
    def percent(self) -> float:
        """:attr:`fraction` in percent."""
        return 100.0 * self.fraction


@dataclass(frozen=True)
class HuStatistics:
    """CT numbers of an sCT inside the body.

    Attributes
    ----------
    body_voxel_count : int
    tissue_fractions : tuple of TissueFraction
        In :data:`~dosimetry.tissue_classes.TISSUE_CLASSES` order. NaN voxels
        belong to no class, so the fractions sum to 1 minus the NaN share.
    soft_tissue_mean_hu, bone_mean_hu : float or None
        Mean HU of the body voxels in that class; None when it has none.
    nan_count, inf_count : int
        NaN and +/-infinite voxels inside the body.
    nonfinite_count_outside_body : int
        NaN or infinite voxels elsewhere (a dose engine reads those too).
    min_hu, max_hu : float or None
        Extremes of the finite body voxels; None when there are none.
    invalid_count : int
        Body voxels that are not a CT number in :data:`HU_VALID_RANGE`
        (below, above, infinite or NaN).
    invalid_fraction : float
        ``invalid_count`` over ``body_voxel_count``.
    """

    body_voxel_count: int
    tissue_fractions: tuple[TissueFraction, ...]
    soft_tissue_mean_hu: float | None
    bone_mean_hu: float | None
    nan_count: int
    inf_count: int
    nonfinite_count_outside_body: int
    min_hu: float | None
    max_hu: float | None
    invalid_count: int
    invalid_fraction: float

    def tissue(self, tissue: TissueClass | str) -> TissueFraction:
        """The entry of ``tissue`` (a :class:`TissueClass` or its value, e.g. ``"bone"``)."""
        wanted = TissueClass(tissue)
        return next(entry for entry in self.tissue_fractions if entry.tissue == wanted)


def hu_statistics(sct: Volume, body_mask: np.ndarray, thresholds: TissueThresholdsHu | None = None) -> HuStatistics:
    """Tissue shares, class means and invalid values of an sCT inside the body.

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU.
    body_mask : numpy.ndarray
        Body mask on the sCT's grid (boolean, or numeric binarised at > 0),
        normally the MR body mask.
    thresholds : TissueThresholdsHu, optional
        Tissue class boundaries; the documented defaults when omitted.

    Returns
    -------
    HuStatistics

    Raises
    ------
    DosimetryError
        If ``sct`` is not a Volume, the mask does not fit its grid or is empty.
    """
    require_volume(sct, "sCT")
    body = as_mask(body_mask, sct.shape, "body mask")
    body_count = require_nonempty(body, "body mask")
    thresholds = thresholds or TissueThresholdsHu()
    values = sct.array[body].astype(np.float64)
    labels = thresholds.classify(values)
    fractions = []
    class_means: dict[TissueClass, float | None] = {}
    for index, tissue in enumerate(TISSUE_CLASSES):
        selected = labels == index
        count = int(np.count_nonzero(selected))
        lower, upper = thresholds.interval_hu(tissue)
        fractions.append(TissueFraction(tissue, lower, upper, count, count / body_count))
        # +/-inf voxels are classified (as bone/air) but would make a mean meaningless.
        finite = values[selected & np.isfinite(values)]
        class_means[tissue] = float(np.mean(finite)) if finite.size else None
    finite_values = values[np.isfinite(values)]
    low, high = HU_VALID_RANGE
    with np.errstate(invalid="ignore"):
        valid = (values >= low) & (values <= high)  # False for NaN and +/-inf
    outside = sct.array[~body]
    invalid_count = int(values.size - np.count_nonzero(valid))
    return HuStatistics(
        body_voxel_count=body_count,
        tissue_fractions=tuple(fractions),
        soft_tissue_mean_hu=class_means[TissueClass.SOFT_TISSUE],
        bone_mean_hu=class_means[TissueClass.BONE],
        nan_count=int(np.count_nonzero(np.isnan(values))),
        inf_count=int(np.count_nonzero(np.isinf(values))),
        nonfinite_count_outside_body=int(np.count_nonzero(~np.isfinite(outside))),
        min_hu=float(finite_values.min()) if finite_values.size else None,
        max_hu=float(finite_values.max()) if finite_values.size else None,
        invalid_count=invalid_count,
        invalid_fraction=invalid_count / body_count,
    )


# -------------------------------------------------------------------------------------------------- body outline


@dataclass(frozen=True)
class MaskAgreement:
    """Overlap and surface distances of two masks on one grid.

    Attributes
    ----------
    first_voxel_count, second_voxel_count : int
    dice : float
        ``2 |A & B| / (|A| + |B|)``.
    max_surface_distance_mm : float
        Maximum symmetric surface distance (Hausdorff distance of the surfaces).
    surface_distance_95_mm : float
        The larger of the two directed 95th-percentile surface distances.
    mean_surface_distance_mm : float
        Average symmetric surface distance (both directions pooled).

    A surface voxel is a mask voxel with a face neighbour outside the mask
    or on the array's faces; distances run between surface voxel centres.
    """

    first_voxel_count: int
    second_voxel_count: int
    dice: float
    max_surface_distance_mm: float
    surface_distance_95_mm: float
    mean_surface_distance_mm: float


def compare_masks(first: np.ndarray, second: np.ndarray, spacing_mm: tuple[float, float, float]) -> MaskAgreement:
    """Dice and symmetric surface distances of two boolean masks.

    Parameters
    ----------
    first, second : numpy.ndarray
        Masks (z, y, x) of one shape (boolean, or numeric binarised at > 0).
    spacing_mm : tuple of float
        Voxel size (x, y, z) in mm, the :class:`~models.volume.Volume` order.

    Returns
    -------
    MaskAgreement

    Raises
    ------
    DosimetryError
        If the shapes differ, a mask is empty or the spacing is not three
        positive numbers.

    References
    ----------
    Dice 1945; Heimann et al. 2009 (module docstring).
    """
    first = as_mask(first, np.shape(first), "first mask")
    second = as_mask(second, first.shape, "second mask")
    if first.ndim != 3:
        raise DosimetryError(f"masks must be 3D (z, y, x); found shape {first.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DosimetryError(f"spacing_mm must be three positive numbers (x, y, z); found {spacing_mm}")
    first_count = require_nonempty(first, "first mask")
    second_count = require_nonempty(second, "second mask")
    dice = 2.0 * int(np.count_nonzero(first & second)) / (first_count + second_count)

    # Distances only involve the union's bounding box; a one-voxel margin keeps the outside visible.
    union_box = ndimage.find_objects((first | second).astype(np.int8))[0]
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(union_box, first.shape))
    sampling_zyx = spacing[::-1]
    surface_first = _surface(first[box])
    surface_second = _surface(second[box])
    to_second = ndimage.distance_transform_edt(~surface_second, sampling=sampling_zyx)[surface_first]
    to_first = ndimage.distance_transform_edt(~surface_first, sampling=sampling_zyx)[surface_second]
    pooled = np.concatenate([to_second, to_first])
    return MaskAgreement(
        first_voxel_count=first_count,
        second_voxel_count=second_count,
        dice=dice,
        max_surface_distance_mm=float(pooled.max()),
        surface_distance_95_mm=float(max(np.percentile(to_second, 95), np.percentile(to_first, 95))),
        mean_surface_distance_mm=float(pooled.mean()),
    )


def sct_body_outline(sct: Volume, threshold_hu: float = SCT_BODY_THRESHOLD_HU) -> np.ndarray:
    """The body outline of an sCT: ``hu > threshold_hu``, largest component, holes filled.

    Holes are filled in 3D and then slice by slice, so that air inside the
    body (rectal gas, sinuses) stays in the outline even where it opens onto
    the first or last slice. Components are face-connected.

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU; NaN voxels count as outside.
    threshold_hu : float
        Outline threshold (default -400 HU, between air and fat).

    Returns
    -------
    numpy.ndarray
        Boolean mask (z, y, x).

    Raises
    ------
    DosimetryError
        If the threshold is not finite or no voxel lies above it.
    """
    require_volume(sct, "sCT")
    if not math.isfinite(threshold_hu):
        raise DosimetryError(f"threshold_hu must be a finite HU value; found {threshold_hu}")
    with np.errstate(invalid="ignore"):
        foreground = np.asarray(sct.array) > threshold_hu
    labels, count = ndimage.label(foreground)
    if count == 0:
        raise DosimetryError(f"the sCT has no voxel above {threshold_hu:g} HU: no body outline can be found")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    body = ndimage.binary_fill_holes(body)
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def body_outline_agreement(sct: Volume, mr_body_mask: np.ndarray,
                           threshold_hu: float = SCT_BODY_THRESHOLD_HU) -> MaskAgreement:
    """The sCT's body outline (first) against the MR body mask (second).

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU.
    mr_body_mask : numpy.ndarray
        MR body mask on the sCT's grid.
    threshold_hu : float
        Outline threshold of :func:`sct_body_outline`.

    Returns
    -------
    MaskAgreement
        ``first`` is the sCT outline, ``second`` the MR body.

    Raises
    ------
    DosimetryError
        If the mask does not fit the grid, either body is empty.
    """
    require_volume(sct, "sCT")
    mr_body = as_mask(mr_body_mask, sct.shape, "MR body mask")
    require_nonempty(mr_body, "MR body mask")
    return compare_masks(sct_body_outline(sct, threshold_hu), mr_body, sct.spacing_mm)


def _surface(mask: np.ndarray) -> np.ndarray:
    face_neighbours = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)


# ---------------------------------------------------------------------------------------- field of view, slices


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


# --------------------------------------------------------------------------------------------------- uncertainty


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
    box_zyx = box_min = box_max = centroid = None
    if above_count:
        index_zyx = np.argwhere(above)
        box_zyx = tuple((int(lo), int(hi)) for lo, hi in zip(index_zyx.min(axis=0), index_zyx.max(axis=0)))
        positions = uncertainty_std_hu.index_to_patient(index_zyx[:, ::-1].astype(np.float64))
        box_min = tuple(float(v) for v in positions.min(axis=0))
        box_max = tuple(float(v) for v in positions.max(axis=0))
        centroid = tuple(float(v) for v in positions.mean(axis=0))
    return UncertaintyRegion(
        level_hu=float(level_hu),
        body_voxel_count=body_count,
        above_count=above_count,
        above_fraction=above_count / body_count,
        mean_std_hu=float(std_hu.mean()),
        max_std_hu=float(std_hu.max()),
        bounding_box_zyx=box_zyx,  # type: ignore[arg-type]
        bounding_box_min_mm=box_min,  # type: ignore[arg-type]
        bounding_box_max_mm=box_max,  # type: ignore[arg-type]
        centroid_mm=centroid,  # type: ignore[arg-type]
    )
