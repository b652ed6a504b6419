"""The patient body outline from an MR volume.

The recipe SynthRAD2023 uses for its masks — Otsu threshold, largest
connected component, morphological closing, hole filling (in 3D and slice by
slice, so that dark bone, air cavities and signal voids inside the body are
kept) — with one change to the threshold: plain Otsu on a T2-weighted head
puts the threshold between tissue and bright CSF and cuts the body in half
(Dice 0.66 on our phantoms). So the threshold is found in two steps: Otsu on
log intensities separates the noise floor from everything with signal, then
Otsu on intensities capped at the median of that foreground places the
boundary midway between air and typical tissue, whatever the fluid does.
It is the mask every model applies and the QA compares against.

References
----------
N. Otsu, "A threshold selection method from gray-level histograms", IEEE
Trans. SMC 9(1), 1979. A. Thummerer et al., "SynthRAD2023 Grand Challenge
dataset", Med. Phys. 50(7), 2023 (mask generation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.errors import ModelError
from models.volume import Volume

__all__ = ["body_mask_from_mr", "given_body_mask"]


def body_mask_from_mr(mr: Volume, closing_radius_mm: float = 5.0) -> np.ndarray:
    """Boolean body mask (z, y, x) of an MR volume.

    Parameters
    ----------
    mr : Volume
        MR intensities; any positive scale.
    closing_radius_mm : float
        In-plane radius of the closing that bridges thin dark gaps (e.g. the
        skull between scalp and brain).

    Returns
    -------
    numpy.ndarray
        Boolean mask with the volume's shape.

    Raises
    ------
    ModelError
        If the image is constant or has no foreground.
    """
    values = np.asarray(mr.array, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ModelError("MR volume contains NaN or infinite values")
    if float(values.max()) <= float(values.min()):
        raise ModelError("MR volume is constant; no body can be found")
    # Light smoothing so that Rician noise in the air does not fragment the threshold.
    smoothed = ndimage.gaussian_filter(values, sigma=(0.5, 1.0, 1.0))
    threshold = _body_threshold(smoothed)
    foreground = smoothed > threshold
    labels, count = ndimage.label(foreground)
    if count == 0:
        raise ModelError("MR volume has no foreground above the Otsu threshold")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    radius_px = np.maximum(1, np.round(closing_radius_mm / np.asarray(mr.spacing_mm[:2])).astype(int))
    structure = _ellipse(radius_px[1], radius_px[0])[np.newaxis]
    # Pad so closing does not glue the body to the image border.
    padding = ((0, 0), (radius_px[1], radius_px[1]), (radius_px[0], radius_px[0]))
    body = ndimage.binary_closing(np.pad(body, padding), structure=structure)
    body = body[:, padding[1][0]: body.shape[1] - padding[1][1], padding[2][0]: body.shape[2] - padding[2][1]]
    body = ndimage.binary_fill_holes(body)
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def given_body_mask(mask: np.ndarray, mr: Volume) -> np.ndarray:
    """A body mask a caller passes a model instead of letting it compute :func:`body_mask_from_mr` again.

    Raises
    ------
    ModelError
        If it does not have the MR's shape.
    """
    array = np.asarray(mask)
    if array.shape != mr.shape:
        raise ModelError(f"body mask of shape {array.shape} given for an MR of shape {mr.shape}")
    return array.astype(bool, copy=False)


def _body_threshold(values: np.ndarray) -> float:
    """Air/body threshold that bright fluids cannot pull into tissue (see the module docstring)."""
    log_values = np.log1p(np.maximum(values, 0.0))
    signal_floor = float(np.expm1(_otsu_threshold(log_values)))
    foreground = values[values >= signal_floor]
    if foreground.size == 0:
        return signal_floor
    cap = float(np.median(foreground))
    return _otsu_threshold(np.minimum(values, cap))


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold maximising the between-class variance of the histogram (Otsu 1979)."""
    high = float(np.percentile(values, 99.9))  # robust to a few very bright voxels
    low = float(values.min())
    histogram, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(histogram)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(histogram * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _ellipse(radius_y: int, radius_x: int) -> np.ndarray:
    y, x = np.ogrid[-radius_y: radius_y + 1, -radius_x: radius_x + 1]
    return (y / max(radius_y, 1)) ** 2 + (x / max(radius_x, 1)) ** 2 <= 1.0
