"""The sCT's own body outline, and how well two masks agree (Dice, symmetric surface distances).

:func:`body_outline_agreement` compares the sCT's body outline
(:func:`sct_body_outline`: voxels above -400 HU, largest connected component,
holes filled in 3D and slice by slice) with the MR body mask, by Dice and
symmetric surface distances (:func:`compare_masks`). It runs on every sCT,
with or without a reference CT, and returns measured values only: thresholds
and PASS/WARN/FAIL live in :mod:`dosimetry.verdict`.

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

from dosimetry._grids import as_mask, require_nonempty, require_volume
from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = ["SCT_BODY_THRESHOLD_HU", "MaskAgreement", "body_outline_agreement", "compare_masks", "sct_body_outline"]

#: Default threshold of the sCT body outline, between air (-1000 HU) and fat (about -100 HU).
SCT_BODY_THRESHOLD_HU: float = -400.0


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
