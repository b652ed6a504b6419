"""Image similarity of an sCT to its reference CT, as the SynthRAD2023 challenge scores it.

Three metrics over a body mask, each exactly as the challenge's evaluation
code defines it (``SynthRAD2023/metrics``, ``functions/image_metrics.py``,
class ``ImageMetrics``):

* **MAE** ``= mean(|ct - sct|)`` over voxels with ``mask > 0``, no clipping.
* **PSNR** ``= 10 log10(R**2 / mean((ct' - sct')**2))`` over voxels with
  ``mask > 0``, where ``'`` means clipped to [-1024, 3000] HU and
  ``R = 4024`` HU (the width of that range).
* **SSIM**: both images clipped to [-1024, 3000] HU, every voxel outside the
  mask set to -1024, both shifted by +1024 (so the range is [0, 4024]); the
  3D SSIM map of :func:`skimage.metrics.structural_similarity` with its
  defaults (7-voxel uniform window, ``K1 = 0.01``, ``K2 = 0.03``, sample
  covariance ``NP / (NP - 1)`` with ``NP = 7**3``, ``reflect`` borders) and
  ``data_range = 4024``; averaged over the mask voxels that lie at least 3
  voxels (the window radius) inside the array, which is how the challenge
  crops the map as skimage does.

The SSIM map is computed here with :func:`scipy.ndimage.uniform_filter` (what
skimage calls itself), so scikit-image is not a dependency. It is computed in
slabs of slices with a halo of the window radius, which gives the same map
while holding a few slabs rather than eight copies of the volume in memory.
Values are processed in float64; the challenge code casts to float32 first,
which changes results only in about the sixth significant digit.

Beyond the challenge, the MAE and the mean error (``sct - ct``, so positive
means the sCT is too dense) are split by the tissue class of the *reference
CT* (:mod:`dosimetry.tissue_classes`), because an sCT is usually good in soft
tissue and worst in bone and air, and the dose depends most on bone.

References
----------
A. Thummerer et al., "SynthRAD2023 Grand Challenge dataset: generating
synthetic CT for radiotherapy", Med. Phys. 50(7), 4664-4674 (2023); the
challenge's metric code, github.com/SynthRAD2023/metrics.

Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality
assessment: from error visibility to structural similarity", IEEE Trans.
Image Process. 13(4), 600-612 (2004).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dosimetry._grids import as_mask, require_finite, require_nonempty, require_same_grid
from dosimetry.errors import DosimetryError
from dosimetry.tissue_classes import TISSUE_CLASSES, TissueClass, TissueThresholdsHu
from models.volume import Volume

__all__ = [
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_WINDOW_VOXELS",
    "SYNTHRAD_DATA_RANGE_HU",
    "SYNTHRAD_HU_RANGE",
    "ImageMetrics",
    "TissueError",
    "image_metrics",
    "mae_hu",
    "psnr_db",
    "ssim",
    "tissue_errors",
]

#: SynthRAD2023's fixed "population" HU range for PSNR and SSIM (lower, upper).
SYNTHRAD_HU_RANGE: tuple[float, float] = (-1024.0, 3000.0)
#: Its width, the data range R of PSNR and SSIM.
SYNTHRAD_DATA_RANGE_HU: float = SYNTHRAD_HU_RANGE[1] - SYNTHRAD_HU_RANGE[0]
#: Side of the cubic uniform SSIM window (skimage's default ``win_size``).
SSIM_WINDOW_VOXELS: int = 7
#: SSIM stabilising constants of Wang et al. 2004 (skimage defaults).
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03

# Slices per SSIM slab (plus the window radius on each side).
_SSIM_SLAB_SLICES = 32


@dataclass(frozen=True)
class TissueError:
    """Errors of the sCT in one tissue class of the reference CT, inside the mask.

    Attributes
    ----------
    tissue : TissueClass
    lower_hu, upper_hu : float
        The class's reference-CT interval ``[lower_hu, upper_hu)``.
    voxel_count : int
        Mask voxels whose reference CT falls in the class.
    mae_hu : float or None
        ``mean(|ct - sct|)`` over them; None when ``voxel_count`` is 0.
    mean_error_hu : float or None
        ``mean(sct - ct)``: positive when the sCT is denser than the CT.
    """

    tissue: TissueClass
    lower_hu: float
    upper_hu: float
    voxel_count: int
    mae_hu: float | None
    mean_error_hu: float | None


@dataclass(frozen=True)
class ImageMetrics:
    """SynthRAD2023 image metrics of an sCT, with the errors per tissue class.

    Attributes
    ----------
    mae_hu : float
        Mean absolute error over the mask, unclipped.
    psnr_db : float
        Peak signal-to-noise ratio over the mask (clipped, R = 4024 HU);
        ``inf`` when the clipped images agree exactly.
    ssim : float
        Mean 3D SSIM over the mask (cropped by the window radius).
    mask_voxel_count : int
    per_tissue : tuple of TissueError
        One entry per class, in :data:`~dosimetry.tissue_classes.TISSUE_CLASSES` order.
    """

    mae_hu: float
    psnr_db: float
    ssim: float
    mask_voxel_count: int
    per_tissue: tuple[TissueError, ...]

    def tissue(self, tissue: TissueClass | str) -> TissueError:
        """The entry of ``tissue`` (a :class:`TissueClass` or its value, e.g. ``"bone"``)."""
        wanted = TissueClass(tissue)
        return next(entry for entry in self.per_tissue if entry.tissue == wanted)


def mae_hu(ct: Volume, sct: Volume, mask: np.ndarray) -> float:
    """SynthRAD2023 MAE: ``mean(|ct - sct|)`` over ``mask > 0``, no clipping.

    Parameters
    ----------
    ct, sct : Volume
        Reference and synthetic CT in HU, on one grid.
    mask : numpy.ndarray
        Boolean or numeric (binarised at > 0) mask on that grid.

    Returns
    -------
    float
        MAE in HU.

    Raises
    ------
    DosimetryError
        If the grids differ, the mask does not fit or is empty, or a value
        inside the mask is NaN or infinite.
    """
    ct_hu, sct_hu, inside = _checked(ct, sct, mask)
    return _mae(ct_hu, sct_hu, inside)


def psnr_db(ct: Volume, sct: Volume, mask: np.ndarray) -> float:
    """SynthRAD2023 PSNR in dB: clip to [-1024, 3000] HU, masked voxels, R = 4024 HU.

    Parameters and errors as :func:`mae_hu`. Returns ``inf`` when the clipped
    images agree on every mask voxel.
    """
    ct_hu, sct_hu, inside = _checked(ct, sct, mask)
    return _psnr(ct_hu, sct_hu, inside)


def ssim(ct: Volume, sct: Volume, mask: np.ndarray) -> float:
    """SynthRAD2023 SSIM: clipped, masked to -1024, shifted, 3D 7-voxel SSIM averaged in the mask.

    Parameters and errors as :func:`mae_hu`; also raises when a side of the
    grid is shorter than the 7-voxel window or no mask voxel lies 3 voxels
    inside the array (where the challenge averages the map).
    """
    ct_hu, sct_hu, inside = _checked(ct, sct, mask)
    return _ssim(ct_hu, sct_hu, inside)


def tissue_errors(ct: Volume, sct: Volume, mask: np.ndarray,
                  thresholds: TissueThresholdsHu | None = None) -> tuple[TissueError, ...]:
    """MAE and mean error per tissue class of the reference CT, inside the mask.

    Parameters
    ----------
    ct, sct, mask
        As :func:`mae_hu`.
    thresholds : TissueThresholdsHu, optional
        Class boundaries; the documented defaults when omitted.

    Returns
    -------
    tuple of TissueError
        In :data:`~dosimetry.tissue_classes.TISSUE_CLASSES` order.
    """
    ct_hu, sct_hu, inside = _checked(ct, sct, mask)
    return _tissue_errors(ct_hu, sct_hu, inside, thresholds or TissueThresholdsHu())


def image_metrics(ct: Volume, sct: Volume, mask: np.ndarray,
                  thresholds: TissueThresholdsHu | None = None) -> ImageMetrics:
    """All SynthRAD2023 image metrics and the per-tissue errors in one pass.

    Parameters
    ----------
    ct, sct : Volume
        Reference and synthetic CT in HU, on one grid.
    mask : numpy.ndarray
        Body mask on that grid (boolean, or numeric binarised at > 0).
    thresholds : TissueThresholdsHu, optional
        Tissue class boundaries for :attr:`ImageMetrics.per_tissue`.

    Returns
    -------
    ImageMetrics

    Raises
    ------
    DosimetryError
        As :func:`mae_hu` and :func:`ssim`.

    References
    ----------
    Thummerer et al. 2023 and the SynthRAD2023 metric code (module docstring).
    """
    ct_hu, sct_hu, inside = _checked(ct, sct, mask)
    return ImageMetrics(
        mae_hu=_mae(ct_hu, sct_hu, inside),
        psnr_db=_psnr(ct_hu, sct_hu, inside),
        ssim=_ssim(ct_hu, sct_hu, inside),
        mask_voxel_count=int(np.count_nonzero(inside)),
        per_tissue=_tissue_errors(ct_hu, sct_hu, inside, thresholds or TissueThresholdsHu()),
    )


def _checked(ct: Volume, sct: Volume, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    require_same_grid(ct, "reference CT", sct, "sCT")
    inside = as_mask(mask, ct.shape, "mask")
    require_nonempty(inside, "mask")
    require_finite(ct.array, inside, "reference CT")
    require_finite(sct.array, inside, "sCT")
    return ct.array, sct.array, inside


def _mae(ct_hu: np.ndarray, sct_hu: np.ndarray, inside: np.ndarray) -> float:
    difference = sct_hu[inside].astype(np.float64) - ct_hu[inside].astype(np.float64)
    return float(np.mean(np.abs(difference)))


def _psnr(ct_hu: np.ndarray, sct_hu: np.ndarray, inside: np.ndarray) -> float:
    low, high = SYNTHRAD_HU_RANGE
    ct_clipped = np.clip(ct_hu[inside].astype(np.float64), low, high)
    sct_clipped = np.clip(sct_hu[inside].astype(np.float64), low, high)
    mse = float(np.mean((ct_clipped - sct_clipped) ** 2))
    if mse == 0.0:
        return math.inf  # skimage returns inf too (after a divide-by-zero warning)
    return float(10.0 * np.log10(SYNTHRAD_DATA_RANGE_HU**2 / mse))


def _ssim(ct_hu: np.ndarray, sct_hu: np.ndarray, inside: np.ndarray) -> float:
    window = SSIM_WINDOW_VOXELS
    radius = (window - 1) // 2
    if min(ct_hu.shape) < window:
        raise DosimetryError(
            f"SSIM needs at least {window} voxels along every axis (its window); the grid is {ct_hu.shape} (z, y, x)"
        )
    # The challenge averages crop(ssim_map, 3)[crop(mask, 3)]: mask voxels within the window radius of the
    # array's faces do not count.
    averaged = np.zeros_like(inside)
    core = (slice(radius, -radius),) * 3
    averaged[core] = inside[core]
    if not averaged.any():
        raise DosimetryError(
            f"the mask has no voxel at least {radius} voxels inside the array, where SSIM is averaged"
        )
    low, high = SYNTHRAD_HU_RANGE
    total = 0.0
    nz = ct_hu.shape[0]
    for z0 in range(0, nz, _SSIM_SLAB_SLICES):
        z1 = min(nz, z0 + _SSIM_SLAB_SLICES)
        if not averaged[z0:z1].any():
            continue
        # A halo of one window radius makes the slab's own rows exact: the filter is separable and reads
        # only radius rows either side; at the volume's faces the halo is cut and 'reflect' applies as usual.
        lo, hi = max(0, z0 - radius), min(nz, z1 + radius)
        ct_slab = _ssim_input(ct_hu[lo:hi], inside[lo:hi], low, high)
        sct_slab = _ssim_input(sct_hu[lo:hi], inside[lo:hi], low, high)
        ssim_map = _ssim_map(ct_slab, sct_slab, SYNTHRAD_DATA_RANGE_HU)[z0 - lo: z1 - lo]
        total += float(np.sum(ssim_map[averaged[z0:z1]], dtype=np.float64))
    return total / int(np.count_nonzero(averaged))


def _ssim_input(hu: np.ndarray, inside: np.ndarray, low: float, high: float) -> np.ndarray:
    clipped = np.clip(hu.astype(np.float64), low, high)
    return np.where(inside, clipped, low) - low


def _ssim_map(first: np.ndarray, second: np.ndarray, data_range: float) -> np.ndarray:
    """skimage's ``structural_similarity(..., full=True)`` map with its defaults (uniform window)."""
    window = SSIM_WINDOW_VOXELS
    n_points = window**first.ndim
    # skimage's default use_sample_covariance=True: unbiased window (co)variances.
    covariance_norm = n_points / (n_points - 1)

    def mean_filter(values: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(values, size=window, mode="reflect")

    mean_x = mean_filter(first)  # mu_x of Wang et al.
    mean_y = mean_filter(second)  # mu_y
    var_x = covariance_norm * (mean_filter(first * first) - mean_x * mean_x)  # sigma_x**2
    var_y = covariance_norm * (mean_filter(second * second) - mean_y * mean_y)  # sigma_y**2
    cov_xy = covariance_norm * (mean_filter(first * second) - mean_x * mean_y)  # sigma_xy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return numerator / denominator


def _tissue_errors(ct_hu: np.ndarray, sct_hu: np.ndarray, inside: np.ndarray,
                   thresholds: TissueThresholdsHu) -> tuple[TissueError, ...]:
    ct_inside = ct_hu[inside].astype(np.float64)
    difference = sct_hu[inside].astype(np.float64) - ct_inside
    labels = thresholds.classify(ct_inside)
    result = []
    for index, tissue in enumerate(TISSUE_CLASSES):
        selected = labels == index
        count = int(np.count_nonzero(selected))
        lower, upper = thresholds.interval_hu(tissue)
        if count == 0:
            result.append(TissueError(tissue, lower, upper, 0, None, None))
            continue
        errors = difference[selected]
        result.append(TissueError(tissue, lower, upper, count, float(np.mean(np.abs(errors))),
                                  float(np.mean(errors))))
    return tuple(result)
