"""The images half of the envelope: slice orientation and the body's intensity signature after normalisation.

Why log-compressed histograms and W1: the package docstring of :mod:`models.envelope`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.errors import ModelError
from models.volume import Volume

__all__ = ["HISTOGRAM_BINS", "LOG_FLOOR", "IntensitySignature", "intensity_distance", "intensity_histogram",
           "orientation_of"]

#: Bins of the intensity histogram over the normalised range [-1, 1] (0.03125 wide).
HISTOGRAM_BINS = 64
#: Log compression of histogram masses: ``log(1 + p / LOG_FLOOR)``; masses well below it barely count.
LOG_FLOOR = 1e-3


def orientation_of(volume: Volume) -> str:
    """``axial``, ``coronal`` or ``sagittal`` when the slice normal is within ~25 degrees of a patient axis,
    else ``oblique``."""
    normal = np.abs(np.asarray(volume.slice_normal, dtype=np.float64))
    axis = int(np.argmax(normal))
    if normal[axis] < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def intensity_histogram(mr: np.ndarray, body: np.ndarray,
                        normalise: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Normalised histogram (masses summing to 1) of the normalised MR inside the body.

    Parameters
    ----------
    mr : numpy.ndarray
        MR intensities as stored.
    body : numpy.ndarray
        Boolean body mask of the same shape.
    normalise : callable or None
        The model's MR normalisation ``(mr, body) -> normalised``; default
        :func:`models.learned.normalisation.normalise_mr`.

    Returns
    -------
    numpy.ndarray
        ``float64``, :data:`HISTOGRAM_BINS` masses over [-1, 1].
    """
    if normalise is None:
        from models.learned.normalisation import normalise_mr

        normalise = normalise_mr
    body = np.asarray(body, dtype=bool)
    values = np.asarray(normalise(np.asarray(mr, dtype=np.float32), body))[body]
    counts, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
    return counts / max(int(counts.sum()), 1)


def intensity_distance(histogram_a: Sequence[float] | np.ndarray, histogram_b: Sequence[float] | np.ndarray) -> float:
    """W1 distance (normalised units) of two log-compressed body histograms (module docstring, reference [1]).

    Each histogram's masses ``p`` become ``log(1 + p / LOG_FLOOR)``, renormalised; W1 of two distributions on
    the same bins is the L1 distance of their cumulative sums times the bin width.
    """
    a, b = np.asarray(histogram_a, dtype=np.float64), np.asarray(histogram_b, dtype=np.float64)
    if a.shape != b.shape or a.shape != (HISTOGRAM_BINS,):
        raise ModelError(f"histograms must hold {HISTOGRAM_BINS} bins; found {a.shape} and {b.shape}")
    ca, cb = np.log1p(a / LOG_FLOOR), np.log1p(b / LOG_FLOOR)
    ca, cb = ca / max(ca.sum(), 1e-12), cb / max(cb.sum(), 1e-12)
    return float(np.abs(np.cumsum(ca - cb)).sum() * 2.0 / HISTOGRAM_BINS)


@dataclass(frozen=True)
class IntensitySignature:
    """Body intensity histograms per training case and the distance threshold derived from them.

    Attributes
    ----------
    case_ids : tuple of str
    histograms : tuple of tuple of float
        One :func:`intensity_histogram` per case, after the model's normalisation.
    leave_one_out : tuple of float
        Each case's :func:`intensity_distance` to its nearest other case.
    threshold : float
        ``max(INTENSITY_MARGIN * max(leave_one_out), INTENSITY_FLOOR)`` (just the floor for a single case).
    normalisation : str
        Which normalisation the histograms are after.
    """

    case_ids: tuple[str, ...]
    histograms: tuple[tuple[float, ...], ...]
    leave_one_out: tuple[float, ...]
    threshold: float
    normalisation: str = "mr: p99.5 in body, [-1,1]"

    def nearest(self, histogram: Sequence[float] | np.ndarray) -> tuple[float, str]:
        """(distance, case id) of the nearest training case."""
        distances = [intensity_distance(histogram, h) for h in self.histograms]
        k = int(np.argmin(distances))
        return distances[k], self.case_ids[k]
