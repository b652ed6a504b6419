"""Contrast-independent structure maps for the ContourDiff-style model.

ContourDiff trains a diffusion model on CT alone, conditioned on the CT's
contours, and at inference conditions it on the contours of the MR. This
works because contours are (nearly) contrast-independent: the contours of MR
and CT agree at tissue boundaries (the skin, bone surfaces, air cavities,
organ outlines) even where the intensities differ or invert (bone is bright
on CT and dark on MR). The maps are not identical, and that residual gap is
the domain gap ContourDiff has to handle by training on contours rather than
intensities: MR shows soft-tissue edges that a CT barely shows (grey/white
matter, ventricles on T2, fat planes, the bladder wall), which the model
meets at inference without having seen them in training, and where bone
lies next to air or dark tissue the MR has no contrast on one side and
loses an edge the CT has (the outer skull table next to a thin scalp).

:func:`edge_map` is a Canny detector written with numpy/scipy only: Gaussian
smoothing (sigma 1 px, in-plane), Sobel gradients, non-maximum suppression
along the gradient direction (quantised to 4 directions), and hysteresis. The
thresholds are chosen per slice from the gradient magnitude inside the body,
so the one function works on normalised MR and CT: both lie in [-1, 1], but
their contrast between tissues differs by an order of magnitude. The rule is
MATLAB's automatic Canny thresholds, taken inside the body instead of over
the whole image (whose air would drag every percentile to zero): the high
threshold is the 70th percentile of the gradient magnitude, the low one 0.4
times that. On the phantoms it keeps the skin, bone, cavity and organ
outlines of both modalities and no noise; the 90th percentile lost the dim
skin edge of T2-weighted MR. A percentile alone fails where edges are sparse
(a large flat, noisy region puts the 70th percentile in the noise), so, as
Canny proposed, the high threshold is also kept above a multiple of the
noise: the image noise is estimated inside the body with Immerkaer's
Laplacian-difference operator (a median of its absolute response, so edges
barely count), propagated through the smoothing and Sobel filters to a
gradient-noise sigma, and the high threshold is at least 5 times that, which
pure noise exceeds in about 4 pixels per million. An absolute floor keeps a
flat, noise-free image from turning its rounding errors into edges.

References
----------
.. [1] Canny J., "A computational approach to edge detection", IEEE Trans.
   Pattern Anal. Mach. Intell. PAMI-8(6):679-698, 1986.
.. [2] Chen Y., Konz N., Gu H., Dong H., Chen Y., Li L., Lee J., Mazurowski M. A.,
   "ContourDiff: Unpaired Medical Image Translation with Structural
   Consistency", Machine Learning for Biomedical Imaging (MELBA) 2025:031,
   arXiv:2403.10786 (the paper translates CT -> MR; here the direction is
   MR -> CT, the idea is the same).
.. [3] Immerkaer J., "Fast noise variance estimation", Comput. Vis. Image
   Underst. 64(2):300-302, 1996.
.. [4] MathWorks, ``edge(I, "canny")`` documentation: thresholds chosen
   automatically as the 70th percentile of the gradient magnitude
   ("PercentOfPixelsNotEdges" 0.7) and 0.4 times it ("ThresholdRatio").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.errors import ModelError

__all__ = [
    "EDGE_HIGH_PERCENTILE",
    "EDGE_LOW_FRACTION",
    "EDGE_MIN_GRADIENT_PER_PX",
    "EDGE_NOISE_MULTIPLE",
    "EDGE_SIGMA_PX",
    "edge_map",
    "outline",
]

#: Standard deviation (pixels) of the in-plane Gaussian applied before differentiation.
EDGE_SIGMA_PX = 1.0
#: Percentile of the gradient magnitude inside the (dilated) body above which an NMS ridge seeds an edge.
EDGE_HIGH_PERCENTILE = 70.0
#: Low hysteresis threshold as a fraction of the high one: a weaker ridge may continue an edge.
EDGE_LOW_FRACTION = 0.4
#: The high threshold is at least this many times the gradient noise sigma (estimated inside the body).
EDGE_NOISE_MULTIPLE = 5.0
#: Floor on the high threshold, in normalised units per pixel: a step of height ``h`` blurred by
#: sigma = 1 px has a peak gradient of about ``0.4 h`` per px, so 0.01 ignores steps below ~0.025
#: (about 50 HU on a normalised CT, 1.3 % of the MR reference intensity) unless they continue a
#: stronger edge.
EDGE_MIN_GRADIENT_PER_PX = 0.01


def edge_map(
    image_norm: np.ndarray,
    body: np.ndarray,
    *,
    sigma_px: float = EDGE_SIGMA_PX,
    high_percentile: float = EDGE_HIGH_PERCENTILE,
    low_fraction: float = EDGE_LOW_FRACTION,
) -> np.ndarray:
    """Binary Canny edge map of a normalised MR or CT, restricted to the body.

    Parameters
    ----------
    image_norm : numpy.ndarray
        Normalised image (:mod:`models.learned.normalisation`), ``(H, W)`` or
        ``(Z, H, W)``; a volume is processed slice by slice, so
        ``edge_map(v, b)[k] == edge_map(v[k], b[k])``.
    body : numpy.ndarray
        Body mask of the same shape. Edges are kept within the body dilated
        by one pixel (the body's own outline lies half a pixel outside it);
        the thresholds come from the gradient magnitude in that region.
    sigma_px : float
        Gaussian smoothing in pixels (in-plane).
    high_percentile : float
        High hysteresis threshold as a percentile (0-100) of the gradient
        magnitude inside the dilated body, raised where needed to
        :data:`EDGE_NOISE_MULTIPLE` times the estimated gradient noise and to
        :data:`EDGE_MIN_GRADIENT_PER_PX`.
    low_fraction : float
        Low hysteresis threshold as a fraction (0-1) of the high one.

    Returns
    -------
    numpy.ndarray
        ``float32`` map in {0, 1}, edges one pixel wide; all zeros on a slice
        whose body is empty.

    Raises
    ------
    ModelError
        If the image is not 2D or 3D, the shapes differ, the image holds NaN
        or infinite values, or a parameter is out of range.

    References
    ----------
    Canny 1986 (module reference [1]); ContourDiff (module reference [2]);
    the noise estimate and the threshold rule (module references [3], [4]).
    """
    image = np.asarray(image_norm)
    body = np.asarray(body).astype(bool, copy=False)
    if image.ndim not in (2, 3):
        raise ModelError(f"image_norm must be (H, W) or (Z, H, W); found shape {image.shape}")
    if image.shape != body.shape:
        raise ModelError(f"image_norm shape {image.shape} and body shape {body.shape} differ")
    if not np.all(np.isfinite(image)):
        raise ModelError("image_norm holds NaN or infinite values")
    if not (np.isfinite(sigma_px) and sigma_px > 0):
        raise ModelError(f"sigma_px must be a positive number of pixels; found {sigma_px}")
    if not 0.0 <= high_percentile <= 100.0:
        raise ModelError(f"high_percentile must lie in [0, 100]; found {high_percentile}")
    if not 0.0 < low_fraction <= 1.0:
        raise ModelError(f"low_fraction must lie in (0, 1]; found {low_fraction}")
    if image.ndim == 3:
        out = np.zeros(image.shape, dtype=np.float32)
        for k in range(image.shape[0]):
            out[k] = _edge_slice(image[k], body[k], sigma_px, high_percentile, low_fraction)
        return out
    return _edge_slice(image, body, sigma_px, high_percentile, low_fraction)


def outline(body: np.ndarray) -> np.ndarray:
    """The body-outline channel of ContourDiff: the filled body mask as ``float32`` {0, 1}.

    The filled mask rather than its 1-px boundary line, because the line is
    already in the edge map (the skin is the strongest edge of both MR and
    CT) and a network working on patches cannot tell inside from outside
    from a line that may lie outside its patch; the filled mask says so at
    every pixel, which is what the model needs to put air (-1) outside.

    Parameters
    ----------
    body : numpy.ndarray
        Body mask of any shape (non-zero inside).

    Returns
    -------
    numpy.ndarray
        ``float32`` array, 1 inside the body and 0 outside.
    """
    return (np.asarray(body) != 0).astype(np.float32)


def _edge_slice(
    image: np.ndarray, body: np.ndarray, sigma_px: float, high_percentile: float, low_fraction: float
) -> np.ndarray:
    if not body.any():
        return np.zeros(image.shape, dtype=np.float32)
    region = ndimage.binary_dilation(body, structure=np.ones((3, 3), bool))
    smoothed = ndimage.gaussian_filter(image.astype(np.float64), sigma=sigma_px, mode="nearest")
    # Sobel's [1, 2, 1] x [-1, 0, 1] kernel sums to 8 times the central difference slope: /8 gives units per px.
    grad_y = ndimage.sobel(smoothed, axis=0, mode="nearest") / 8.0
    grad_x = ndimage.sobel(smoothed, axis=1, mode="nearest") / 8.0
    magnitude = np.hypot(grad_x, grad_y)
    ridges = _non_maximum_suppression(magnitude, grad_x, grad_y) & region
    inside = magnitude[region]
    # Each gradient component of white noise has sigma = noise sigma * the filter chain's L2 norm, and
    # |gradient| is Rayleigh with that sigma: P(|g| > 5 sigma) = exp(-12.5), 4e-6.
    gradient_noise = _noise_sigma(image, body) * _gradient_noise_gain(sigma_px)
    relative = float(np.percentile(inside, high_percentile))
    high = max(relative, EDGE_NOISE_MULTIPLE * gradient_noise, EDGE_MIN_GRADIENT_PER_PX)
    low = low_fraction * high
    weak = ridges & (magnitude >= low)
    strong = ridges & (magnitude >= high)
    # Hysteresis: keep every 8-connected chain of weak ridges that holds a strong one.
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros(image.shape, dtype=np.float32)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels].astype(np.float32)


#: Immerkaer's operator, a difference of two Laplacians (= second difference along x times along y): blind to
#: anything that varies along one image axis only, so ramps and straight row or column edges give no response.
_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _noise_sigma(image: np.ndarray, body: np.ndarray) -> float:
    """White-noise standard deviation of the image inside the body (Immerkaer 1996, median form).

    The median absolute response over 0.6745 (the MAD of a Gaussian) instead
    of Immerkaer's mean keeps edges, which give large responses on a few
    pixels, from inflating the estimate.
    """
    response = ndimage.convolve(image.astype(np.float64), _IMMERKAER, mode="nearest")
    inner = ndimage.binary_erosion(body, structure=np.ones((3, 3), bool))
    values = response[inner] if inner.sum() >= 9 else response[body]
    # The operator's L2 norm is 6: its response to unit white noise has sigma 6.
    return float(np.median(np.abs(values))) / 0.6745 / 6.0


def _gradient_noise_gain(sigma_px: float) -> float:
    """Sigma of one gradient component (Gaussian, then Sobel / 8) per unit of white-noise sigma."""
    radius = int(np.ceil(4 * sigma_px)) + 2
    impulse = np.zeros((2 * radius + 1, 2 * radius + 1))
    impulse[radius, radius] = 1.0
    kernel = ndimage.sobel(ndimage.gaussian_filter(impulse, sigma_px, mode="constant"), axis=1, mode="constant") / 8.0
    return float(np.sqrt(np.sum(kernel**2)))


def _non_maximum_suppression(magnitude: np.ndarray, grad_x: np.ndarray, grad_y: np.ndarray) -> np.ndarray:
    """Pixels whose magnitude is a maximum along the gradient direction (4 quantised directions).

    A pixel must be >= its neighbour on one side and > the one on the other,
    so a ridge exactly between two pixels keeps one of them (a 1-px line),
    and a flat region (all zero) keeps none.
    """
    padded = np.pad(magnitude, 1, mode="constant")
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]

    # Angle of the gradient in image axes (x right, y down), folded into [0, 180) degrees.
    angle = np.rad2deg(np.arctan2(grad_y, grad_x)) % 180.0
    sector = (np.floor((angle + 22.5) / 45.0).astype(int)) % 4
    result = np.zeros(magnitude.shape, dtype=bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        selected = sector == index
        ahead, behind = shifted(dy, dx), shifted(-dy, -dx)
        result |= selected & (magnitude >= ahead) & (magnitude > behind)
    return result & (magnitude > 0)
