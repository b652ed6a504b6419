"""MR appearance randomisation: render a tissue label map as many different MR contrasts.

A model trained on one MR contrast learns that contrast's intensity order (on the phantoms' T1-weighted MR
the brightest tissue is fat) and maps any image by it: a skull-stripped brain, whose brightest tissue is white
matter, comes out as fat. Rendering the *same* label map with per-tissue intensities drawn from many sequences
takes that shortcut away: only the anatomy (shapes, neighbourhoods, texture) predicts the CT. This is the idea
of SynthSeg and SynthSR [1]_ [2]_, which draw per-label intensities from random Gaussian mixtures. Here the
intensities are drawn from the signal equations of real sequence families with randomised parameters [3]_, so
the contrasts stay those a scanner can produce, and one family (:data:`HELD_OUT_FAMILY`, T2-weighted spin
echo) is kept out of training so that robustness to an *unseen* contrast can be measured honestly
(``benchmarks/sct_robustness.py``).

Families (:data:`FAMILIES`); per draw, the sequence parameters come from the family's ranges, the relaxation
times of every tissue are jittered (field strength, vendor, patient), and the rendering adds a random point
spread function, bias field and Rician noise (:func:`render_appearance`):

* ``t1_se``: spin echo, TR 350-800 ms, TE 8-20 ms.
* ``t1_gre``: spoiled gradient echo (3D T1, e.g. VIBE/THRIVE/LAVA), TR 4-12 ms, TE 1.5-4.5 ms, flip 8-25 deg.
* ``pd``: spin echo, TR 2000-4000 ms, TE 8-30 ms.
* ``t1_fs``: T1 (SE or GRE) with spectral fat suppression leaving 3-25 % of the fat signal.
* ``dixon_water`` / ``dixon_fat``: the water or the fat image of a two-point Dixon GRE, 0-10 % leakage.
* ``t1_post_contrast``: T1 after gadolinium, ``1/T1' = 1/T1 + r1 C`` with ``r1`` 3.5-5 /mM/s [4]_ and a
  per-tissue extracellular concentration (none behind the blood-brain barrier).
* ``t2`` (held out): spin echo, TR 3000-6000 ms, TE 80-120 ms.
* ``random`` (not a sequence; off by default): every tissue's signal uniform in 0.05-1 (bone 0-0.1), as
  SynthSeg draws its contrasts [1]_.

The spin-echo and spoiled-gradient-echo signal equations are the textbook ones [3]_; T2 stands in for T2* in
the GRE. Fat fractions and contrast uptakes per tissue are stated approximations (:data:`FAT_FRACTION`,
:data:`CONTRAST_UPTAKE_MM`): they decide which tissue is bright under which family, not a quantitative map.

References
----------
.. [1] Billot B. et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution without
   retraining", Med. Image Anal. 86:102789, 2023.
.. [2] Iglesias J.E. et al., "SynthSR: A public AI tool to turn heterogeneous clinical brain scans into
   high-resolution T1-weighted images for 3D morphometry", Sci. Adv. 9:eadd3607, 2023.
.. [3] Haacke E.M. et al., "Magnetic Resonance Imaging: Physical Principles and Sequence Design", Wiley, 1999,
   sec. 8.4 (spin echo) and ch. 18 (spoiled gradient echo, ``S = PD sin(a)(1-E1)/(1-cos(a)E1) exp(-TE/T2*)``).
.. [4] Rohrer M. et al., "Comparison of magnetic properties of MRI contrast media solutions at different
   magnetic field strengths", Invest. Radiol. 40:715-724, 2005 (gadolinium chelates, r1 about 3.3-5.4 /mM/s
   at 1.5 T in plasma).
.. [5] Karampinos D.C. et al., "Quantitative MRI and spectroscopy of bone marrow", J. Magn. Reson. Imaging
   47:332-353, 2018 (marrow proton-density fat fraction about 30-70 % in adults).
.. [6] Stanisz G.J. et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T", Magn. Reson.
   Med. 54:507-512, 2005 (T1 about 10-40 % longer at 3 T than at 1.5 T, T2 slightly shorter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.errors import PhantomError
from models.phantoms.imaging import bias_field
from models.phantoms.tissues import Tissue, property_lookup

__all__ = ["CONTRAST_UPTAKE_MM", "FAMILIES", "FAT_FRACTION", "HELD_OUT_FAMILY", "RANDOM_FAMILY", "TRAINING_FAMILIES",
           "AppearanceDraw", "draw_appearance", "render_appearance", "tissue_signal"]

#: Proton-density fat fraction per tissue (approximation; adipose about 0.9, fatty marrow [5]).
FAT_FRACTION = {Tissue.FAT: 0.9, Tissue.MARROW: 0.6, Tissue.SKIN: 0.1}
#: Extracellular gadolinium concentration after a standard dose, mM (approximation; none behind the
#: blood-brain barrier, none in CSF or vitreous in the early phase, urine varies with the delay).
CONTRAST_UPTAKE_MM = {Tissue.SKIN: 0.3, Tissue.MUSCLE: 0.15, Tissue.SOFT_TISSUE: 0.3, Tissue.RECTUM_WALL: 0.4,
                      Tissue.PROSTATE: 0.4, Tissue.FAT: 0.05, Tissue.MARROW: 0.2, Tissue.BLADDER_URINE: 0.5}

#: Sequence families the training draws from, and the one kept out of training for the unseen-contrast test.
TRAINING_FAMILIES = ("t1_se", "t1_gre", "pd", "t1_fs", "dixon_water", "dixon_fat", "t1_post_contrast")
HELD_OUT_FAMILY = "t2"
#: SynthSeg-style contrast [1]_: every tissue's signal drawn independently (cortical bone kept dark, as on every
#: non-UTE sequence). Not a sequence; not among the default training families (the ablation measures it).
RANDOM_FAMILY = "random"
FAMILIES = TRAINING_FAMILIES + (HELD_OUT_FAMILY, RANDOM_FAMILY)


@dataclass(frozen=True)
class AppearanceDraw:
    """One random MR appearance: the per-tissue signal and the rendering's parameters."""

    family: str
    parameters: dict[str, float]
    signal: np.ndarray  # per Tissue label, relative to fully relaxed water
    psf_sigma_mm: tuple[float, float, float]  # x, y, z
    bias_amplitude: float
    noise_fraction: float  # of the bright-tissue signal

    def describe(self) -> str:
        params = ", ".join(f"{k} {v:.3g}" for k, v in self.parameters.items())
        return f"{self.family} ({params})"


def _spin_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float) -> np.ndarray:
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def _spoiled_gre(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float,
                 flip_deg: float) -> np.ndarray:
    e1 = np.exp(-tr / t1)
    a = np.deg2rad(flip_deg)
    return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te / t2)


def _table(values: Mapping[Tissue, float]) -> np.ndarray:
    table = np.zeros(max(Tissue) + 1, dtype=np.float64)
    for tissue, value in values.items():
        table[int(tissue)] = value
    return table


def tissue_signal(family: str, rng: np.random.Generator, *, jitter: float = 0.1) -> tuple[np.ndarray, dict[str, float]]:
    """Per-tissue signal (relative to fully relaxed water) of one random member of a sequence family.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    rng : numpy.random.Generator
        Source of the sequence parameters and the jitter.
    jitter : float
        Standard deviation of the log-normal per-tissue jitter of T1, T2 and PD (>= 0).

    Returns
    -------
    (numpy.ndarray, dict)
        Signal per :class:`~models.phantoms.tissues.Tissue` label (air 0) and the drawn parameters.

    Raises
    ------
    PhantomError
        If the family is unknown or ``jitter`` is negative.
    """
    if family not in FAMILIES:
        raise PhantomError(f"unknown MR sequence family {family!r}; expected one of {', '.join(FAMILIES)}")
    if not jitter >= 0:
        raise PhantomError(f"jitter must be >= 0; found {jitter}")
    pd, t1, t2 = (property_lookup(name) for name in ("pd_relative", "t1_ms", "t2_ms"))
    n = len(pd)
    # Field strength 1.5-3 T: T1 longer, T2 a little shorter [6]; then per-tissue biological/vendor jitter.
    field_t1 = rng.uniform(1.0, 1.35)
    t1 = t1 * field_t1 * np.exp(jitter * rng.standard_normal(n))
    t2 = t2 * rng.uniform(0.9, 1.0) * np.exp(jitter * rng.standard_normal(n))
    pd = np.clip(pd * np.exp(0.5 * jitter * rng.standard_normal(n)), 0.0, 1.0)
    fat = _table(FAT_FRACTION)
    params: dict[str, float] = {"t1_scale": field_t1}

    def t1_weighted(t1_values: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            tr, te = rng.uniform(350, 800), rng.uniform(8, 20)
            params.update(tr_ms=tr, te_ms=te)
            return _spin_echo(pd, t1_values, t2, tr, te)
        tr, te, flip = rng.uniform(4, 12), rng.uniform(1.5, 4.5), rng.uniform(8, 25)
        params.update(tr_ms=tr, te_ms=te, flip_deg=flip)
        return _spoiled_gre(pd, t1_values, t2, tr, te, flip)

    if family == RANDOM_FAMILY:
        signal = rng.uniform(0.05, 1.0, n)
        signal[int(Tissue.CORTICAL_BONE)] = rng.uniform(0.0, 0.1)
        params["random"] = 1.0
    elif family == "t1_se":
        tr, te = rng.uniform(350, 800), rng.uniform(8, 20)
        params.update(tr_ms=tr, te_ms=te)
        signal = _spin_echo(pd, t1, t2, tr, te)
    elif family == "t1_gre":
        tr, te, flip = rng.uniform(4, 12), rng.uniform(1.5, 4.5), rng.uniform(8, 25)
        params.update(tr_ms=tr, te_ms=te, flip_deg=flip)
        signal = _spoiled_gre(pd, t1, t2, tr, te, flip)
    elif family == "pd":
        tr, te = rng.uniform(2000, 4000), rng.uniform(8, 30)
        params.update(tr_ms=tr, te_ms=te)
        signal = _spin_echo(pd, t1, t2, tr, te)
    elif family == "t2":
        tr, te = rng.uniform(3000, 6000), rng.uniform(80, 120)
        params.update(tr_ms=tr, te_ms=te)
        signal = _spin_echo(pd, t1, t2, tr, te)
    elif family == "t1_fs":
        residual = rng.uniform(0.03, 0.25)
        params["fat_residual"] = residual
        signal = t1_weighted(t1) * (1.0 - fat * (1.0 - residual))
    elif family in ("dixon_water", "dixon_fat"):
        tr, te, flip = rng.uniform(4, 12), rng.uniform(1.5, 4.5), rng.uniform(8, 25)
        leak = rng.uniform(0.0, 0.1)
        params.update(tr_ms=tr, te_ms=te, flip_deg=flip, leakage=leak)
        full = _spoiled_gre(pd, t1, t2, tr, te, flip)
        share = (1.0 - fat) if family == "dixon_water" else fat
        signal = full * (share + leak * (1.0 - share))
    else:  # t1_post_contrast
        r1 = rng.uniform(3.5, 5.0)  # /mM/s
        uptake = _table(CONTRAST_UPTAKE_MM) * rng.uniform(0.5, 1.5, n)
        params["r1_per_mm_s"] = r1
        signal = t1_weighted(1.0 / (1.0 / t1 + r1 * uptake / 1000.0))
    signal = np.where(pd > 0, signal, 0.0)
    signal[int(Tissue.OUTSIDE_AIR)] = signal[int(Tissue.AIR_CAVITY)] = 0.0
    return signal.astype(np.float64), params


def draw_appearance(rng: np.random.Generator, families: Iterable[str] = TRAINING_FAMILIES, *,
                    jitter: float = 0.1) -> AppearanceDraw:
    """A random appearance: a family (uniformly), its signal, a point spread function, bias field and noise level.

    The ranges: in-plane PSF 0.3-1.5 mm and through-plane 0.3-3 mm (resolution and slice thickness), bias
    amplitude 0-0.4 (strong coil non-uniformity), noise 0.3-4 % of the bright-tissue signal.
    """
    families = tuple(families)
    if not families:
        raise PhantomError("draw_appearance needs at least one sequence family; found none")
    family = families[int(rng.integers(len(families)))]
    signal, params = tissue_signal(family, rng, jitter=jitter)
    in_plane = float(rng.uniform(0.3, 1.5))
    return AppearanceDraw(family=family, parameters=params, signal=signal,
                          psf_sigma_mm=(in_plane, in_plane, float(rng.uniform(0.3, 3.0))),
                          bias_amplitude=float(rng.uniform(0.0, 0.4)),
                          noise_fraction=float(rng.uniform(0.003, 0.04)))


def render_appearance(labels: np.ndarray, spacing_mm: tuple[float, float, float], draw: AppearanceDraw,
                      rng: np.random.Generator, full_scale: float = 2000.0) -> np.ndarray:
    """Render ``labels`` (``(z, y, x)`` uint8 tissue labels) with one appearance: ``float32`` MR magnitudes.

    The noise is Rician (Gaussian on both channels of a complex signal), its level relative to the 99th
    percentile of the noiseless signal inside the body, so a dark contrast is not drowned.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 3:
        raise PhantomError(f"labels must be a (z, y, x) uint8 array; found {labels.dtype} {labels.shape}")
    signal = (full_scale * draw.signal).astype(np.float32)[labels]
    sigma_zyx = [np.sqrt((s_mm / sp) ** 2 + 1.0 / 12.0) for s_mm, sp in zip(draw.psf_sigma_mm[::-1], spacing_mm[::-1])]
    signal = ndimage.gaussian_filter(signal, sigma_zyx, mode="nearest", truncate=3.0)
    signal *= bias_field(labels.shape, rng, min(draw.bias_amplitude, 0.95))
    inside = signal[labels > 0]
    bright = float(np.percentile(inside, 99.0)) if inside.size else full_scale
    sigma = np.float32(draw.noise_fraction * max(bright, 1e-3 * full_scale))
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imag).astype(np.float32)
