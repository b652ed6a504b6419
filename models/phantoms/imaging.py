"""Render a tissue label map as a CT (HU) and as spin-echo MR images.

Both modalities are drawn from the same label map, so the pair is perfectly
registered: the ground truth an MR-to-CT model is trained and tested against.

* CT: per-tissue CT number, Gaussian blur (scanner point spread function and
  partial volume), additive Gaussian noise, rounded and clipped to the 12-bit
  range [-1024, 3071] HU, ``int16``.
* MR: spin-echo signal per tissue, Gaussian blur, a smooth multiplicative
  receive-coil bias field, then Rician noise (magnitude of a complex signal
  with independent Gaussian noise on the real and imaginary channels),
  ``float32`` in roughly 0..1500.

The blur has standard deviation ``sqrt((psf_sigma_mm / spacing)^2 + 1/12)``
voxels per axis: the PSF plus the variance (1/12 voxel^2) of a one-voxel box,
standing in for the partial-volume averaging that point-sampled labels lack.

References
----------
.. [1] Haacke E.M. et al., "Magnetic Resonance Imaging: Physical Principles
   and Sequence Design", Wiley, 1999, sec. 8.4 (spin-echo signal
   ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` for TR >> TE).
.. [2] Gudbjartsson H., Patz S., "The Rician distribution of noisy MRI data",
   Magn. Reson. Med. 34:910-914, 1995.
.. [3] Sled J.G., Zijdenbos A.P., Evans A.C., "A nonparametric method for
   automatic correction of intensity nonuniformity in MRI data", IEEE Trans.
   Med. Imaging 17:87-97, 1998 (smooth multiplicative bias field model).
.. [4] Kwan R.K.-S., Evans A.C., Pike G.B., "MRI simulation-based evaluation
   of image-processing and classification methods", IEEE Trans. Med. Imaging
   18:1085-1097, 1999 (simulated 20 % intensity non-uniformity, noise as a
   percentage of a reference tissue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.errors import PhantomError
from models.phantoms.tissues import Tissue, property_lookup
from models.volume import Volume

__all__ = [
    "T1_WEIGHTED",
    "T2_WEIGHTED",
    "SpinEchoSequence",
    "bias_field",
    "simulate_ct",
    "simulate_mr",
    "spin_echo_signal",
]

CT_MIN_HU, CT_MAX_HU = -1024, 3071


@dataclass(frozen=True)
class SpinEchoSequence:
    """Timing of a spin-echo acquisition.

    Parameters
    ----------
    name : str
        Label of the weighting, e.g. ``"T1w"``.
    tr_ms, te_ms : float
        Repetition and echo time in milliseconds; ``0 < te_ms < tr_ms``.

    Raises
    ------
    PhantomError
        If the timings are not positive or TE is not shorter than TR.
    """

    name: str
    tr_ms: float
    te_ms: float

    def __post_init__(self) -> None:
        if not (0 < self.te_ms < self.tr_ms):
            raise PhantomError(f"{self.name}: need 0 < te_ms < tr_ms; found te_ms={self.te_ms}, tr_ms={self.tr_ms}")


#: Short TR / short TE: fat bright, fluid dark (typical clinical 1.5 T values).
T1_WEIGHTED = SpinEchoSequence("T1w", tr_ms=500.0, te_ms=15.0)
#: Long TR / long TE: fluid bright, muscle dark.
T2_WEIGHTED = SpinEchoSequence("T2w", tr_ms=4000.0, te_ms=100.0)


def spin_echo_signal(
    pd_relative: np.ndarray, t1_ms: np.ndarray, t2_ms: np.ndarray, tr_ms: float, te_ms: float
) -> np.ndarray:
    """Spin-echo magnitude ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``, relative to fully relaxed water.

    Parameters
    ----------
    pd_relative : array_like
        Proton density relative to water.
    t1_ms, t2_ms : array_like
        Relaxation times in milliseconds, positive.
    tr_ms, te_ms : float
        Repetition and echo time in milliseconds.

    Returns
    -------
    numpy.ndarray
        Signal in [0, 1] per element.

    References
    ----------
    Haacke et al. 1999, sec. 8.4 (module reference [1]).
    """
    pd, t1, t2 = (np.asarray(a, dtype=np.float64) for a in (pd_relative, t1_ms, t2_ms))
    return pd * (1.0 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2)


def _check_labels(labels: Volume) -> None:
    if not isinstance(labels, Volume) or labels.array.dtype != np.uint8:
        raise PhantomError(f"labels must be a Volume of uint8 tissue labels; found {type(labels).__name__}")
    if labels.array.size and int(labels.array.max()) > max(Tissue):
        raise PhantomError(f"labels hold value {int(labels.array.max())}, above the largest Tissue {int(max(Tissue))}")


def _blur(image: np.ndarray, spacing_mm: tuple[float, float, float], psf_sigma_mm: float) -> np.ndarray:
    if psf_sigma_mm < 0:
        raise PhantomError(f"psf_sigma_mm must be >= 0; found {psf_sigma_mm}")
    sigma_zyx = [np.sqrt((psf_sigma_mm / s) ** 2 + 1.0 / 12.0) for s in spacing_mm[::-1]]
    return ndimage.gaussian_filter(image, sigma_zyx, mode="nearest", truncate=3.0)


def simulate_ct(labels: Volume, rng: np.random.Generator, noise_hu: float = 15.0, psf_sigma_mm: float = 0.5) -> Volume:
    """CT image of a label map.

    Parameters
    ----------
    labels : Volume
        ``uint8`` :class:`~models.phantoms.tissues.Tissue` labels.
    rng : numpy.random.Generator
        Source of the noise.
    noise_hu : float
        Standard deviation of the additive Gaussian noise in HU (>= 0).
    psf_sigma_mm : float
        Standard deviation of the scanner point spread function in mm.

    Returns
    -------
    Volume
        ``int16`` HU on the grid of ``labels``, clipped to [-1024, 3071].

    Raises
    ------
    PhantomError
        If the labels are not ``uint8`` tissue values or a parameter is negative.
    """
    _check_labels(labels)
    if not noise_hu >= 0:
        raise PhantomError(f"noise_hu must be >= 0; found {noise_hu}")
    hu = property_lookup("hu").astype(np.float32)[labels.array]
    hu = _blur(hu, labels.spacing_mm, psf_sigma_mm)
    hu += np.float32(noise_hu) * rng.standard_normal(hu.shape, dtype=np.float32)
    hu = np.clip(np.rint(hu), CT_MIN_HU, CT_MAX_HU).astype(np.int16)
    return labels.with_array(hu)


def bias_field(shape_zyx: tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field ``1 + p`` with ``p`` a random quadratic polynomial.

    Parameters
    ----------
    shape_zyx : tuple of int
        Grid size.
    rng : numpy.random.Generator
        Source of the polynomial coefficients.
    amplitude : float
        Largest ``|p|`` over the grid, in [0, 1); 0.2 gives a field in [0.8, 1.2].

    Returns
    -------
    numpy.ndarray
        ``float32`` field, ``shape_zyx``.

    Raises
    ------
    PhantomError
        If ``amplitude`` is outside [0, 1).
    """
    if not 0.0 <= amplitude < 1.0:
        raise PhantomError(f"bias amplitude must lie in [0, 1); found {amplitude}")
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape_zyx)
    c = rng.standard_normal(9).astype(np.float32)
    xx, yy = x[None, :], y[:, None]
    plane = c[0] * xx + c[1] * yy + c[2] * xx**2 + c[3] * yy**2 + c[4] * (yy * xx)
    slope = c[5] + c[6] * xx + c[7] * yy
    p = plane[None] + z[:, None, None] * slope[None] + c[8] * (z**2)[:, None, None]
    p -= np.float32(0.5 * (p.max() + p.min()))  # centre the range so the full amplitude is used both ways
    peak = float(np.abs(p).max())
    if peak > 0:
        p *= np.float32(amplitude / peak)
    return 1.0 + p


def simulate_mr(
    labels: Volume,
    sequence: SpinEchoSequence,
    rng: np.random.Generator,
    noise_fraction: float = 0.01,
    bias_amplitude: float = 0.2,
    psf_sigma_mm: float = 0.5,
    full_scale: float = 2000.0,
) -> Volume:
    """Spin-echo MR magnitude image of a label map.

    Parameters
    ----------
    labels : Volume
        ``uint8`` tissue labels.
    sequence : SpinEchoSequence
        TR and TE, e.g. :data:`T1_WEIGHTED` or :data:`T2_WEIGHTED`.
    rng : numpy.random.Generator
        Source of the bias field and the noise.
    noise_fraction : float
        Standard deviation of the Gaussian noise on each complex channel as a
        fraction of ``full_scale`` (>= 0); 0.01 gives about 20 units.
    bias_amplitude : float
        Peak relative deviation of the bias field, in [0, 1).
    psf_sigma_mm : float
        Standard deviation of the point spread function in mm.
    full_scale : float
        Output value of fully relaxed water (PD 1, TR >> T1, TE << T2).

    Returns
    -------
    Volume
        Non-negative ``float32`` magnitudes on the grid of ``labels``; air
        holds Rician (there Rayleigh) noise only.

    Raises
    ------
    PhantomError
        If the labels are not tissue values or a parameter is out of range.
    """
    _check_labels(labels)
    if not (noise_fraction >= 0 and full_scale > 0):
        raise PhantomError(f"need noise_fraction >= 0 and full_scale > 0; found {noise_fraction}, {full_scale}")
    pd, t1, t2 = (property_lookup(name) for name in ("pd_relative", "t1_ms", "t2_ms"))
    per_tissue = spin_echo_signal(pd, t1, t2, sequence.tr_ms, sequence.te_ms)
    signal = (full_scale * per_tissue).astype(np.float32)[labels.array]
    signal = _blur(signal, labels.spacing_mm, psf_sigma_mm)
    signal *= bias_field(labels.shape, rng, bias_amplitude)
    sigma = np.float32(noise_fraction * full_scale)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return labels.with_array(np.hypot(real, imag).astype(np.float32))
