"""Intensity normalisation of MR and CT for the learned models (the package contract).

* **MR**: divided by its 99.5th percentile inside the body mask, clipped to
  [0, 2], minus 1; everything outside the body is set to -1. MR intensities
  have no physical unit and their scale changes with scanner, coil, sequence
  and receiver gain, so each volume is scaled by a statistic of its own body.
  A high percentile inside the mask is the choice of the SynthRAD baselines:
  it ignores the air (whose share of the image varies with the field of view)
  and a few very bright voxels (vessels, flow, fat at the coil), and maps the
  bright tissue of every scan near 0 (the 99.5th percentile value itself maps
  to exactly 0). The alternative, a z-score inside the body, is unbounded
  and lets a large dark region (bone, air cavities) shift every other tissue;
  a clipped, bounded range also suits the [-1, 1] range a diffusion model's
  data should have.
* **CT**: HU clipped to [:data:`~models.base.HU_MIN`, :data:`~models.base.HU_MAX`]
  = [-1024, 3071] (the range the sCT writer stores) and mapped linearly onto
  [-1, 1]; :func:`denormalise_ct` is its exact inverse on that range.

References
----------
.. [1] Thummerer A. et al., "SynthRAD2023 Grand Challenge dataset: generating
   synthetic CT for radiotherapy", Med. Phys. 50:4664-4674, 2023.
.. [2] Huijben E. M. C. et al., "Generating synthetic computed tomography for
   radiotherapy: SynthRAD2023 challenge report", Med. Image Anal. 97:103276,
   2024 (intensity normalisation of the participating methods).
.. [3] Nyul L. G., Udupa J. K., "On standardizing the MR image intensity
   scale", Magn. Reson. Med. 42:1072-1081, 1999 (why MR needs per-scan scaling).
"""

from __future__ import annotations

import numpy as np

from models.base import HU_MAX, HU_MIN
from models.errors import ModelError

__all__ = ["BACKGROUND", "CT_HU_RANGE", "MR_CLIP", "MR_PERCENTILE", "denormalise_ct", "normalise_ct", "normalise_mr"]

#: Percentile of the MR inside the body that maps to 0 (the "bright tissue" reference).
MR_PERCENTILE = 99.5
#: MR values are clipped to this multiple range of the reference percentile before the shift by -1.
MR_CLIP = (0.0, 2.0)
#: Value of every voxel outside the body (and of padding) in normalised images.
BACKGROUND = -1.0
#: HU range mapped onto [-1, 1].
CT_HU_RANGE = (float(HU_MIN), float(HU_MAX))


def normalise_mr(mr: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Scale an MR image into [-1, 1] by its 99.5th percentile inside the body.

    Parameters
    ----------
    mr : numpy.ndarray
        MR intensities (any shape, any positive scale).
    body : numpy.ndarray
        Body mask of the same shape (non-zero inside).

    Returns
    -------
    numpy.ndarray
        ``float32``: ``clip(mr / p, 0, 2) - 1`` inside the body with ``p`` the
        :data:`MR_PERCENTILE` th percentile of ``mr`` inside the body, and
        :data:`BACKGROUND` (-1) outside.

    Raises
    ------
    ModelError
        If the shapes differ, the body is empty, the body holds NaN or
        infinite values, or the percentile is not positive (a dark or
        negative image cannot be scaled).

    References
    ----------
    Module references [1], [2].
    """
    mr = np.asarray(mr)
    body = np.asarray(body).astype(bool, copy=False)
    if mr.shape != body.shape:
        raise ModelError(f"MR shape {mr.shape} and body mask shape {body.shape} differ")
    inside = mr[body].astype(np.float64)
    if inside.size == 0:
        raise ModelError("body mask is empty; the MR cannot be normalised (no voxel inside the body)")
    if not np.all(np.isfinite(inside)):
        raise ModelError("MR holds NaN or infinite values inside the body")
    reference = float(np.percentile(inside, MR_PERCENTILE))
    if not reference > 0.0:
        raise ModelError(
            f"the {MR_PERCENTILE}th percentile of the MR inside the body is {reference:g}; "
            "expected a positive intensity (is the image empty or not a magnitude image?)"
        )
    scaled = np.clip(mr.astype(np.float64) / reference, *MR_CLIP) - 1.0
    return np.where(body, scaled, BACKGROUND).astype(np.float32)


def normalise_ct(hu: np.ndarray) -> np.ndarray:
    """Map CT numbers (HU) linearly from [-1024, 3071] onto [-1, 1].

    Parameters
    ----------
    hu : numpy.ndarray
        CT numbers in HU; values outside [HU_MIN, HU_MAX] are clipped first.

    Returns
    -------
    numpy.ndarray
        ``float32`` values in [-1, 1] (-1024 HU -> -1, 3071 HU -> 1).
    """
    low, high = CT_HU_RANGE
    clipped = np.clip(np.asarray(hu, dtype=np.float64), low, high)
    return ((clipped - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def denormalise_ct(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise_ct`: [-1, 1] back to HU.

    Parameters
    ----------
    x : numpy.ndarray
        Normalised CT; values outside [-1, 1] are clipped first, so the
        result always lies in [HU_MIN, HU_MAX].

    Returns
    -------
    numpy.ndarray
        ``float32`` CT numbers in HU.
    """
    low, high = CT_HU_RANGE
    clipped = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return ((clipped + 1.0) / 2.0 * (high - low) + low).astype(np.float32)
