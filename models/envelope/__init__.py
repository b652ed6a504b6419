"""The training envelope of a model, and the input guard that checks a series against it.

A model trained on one kind of MR (the bundled ones: spin-echo T1w phantoms of the head and the pelvis) makes
confident nonsense from another (a skull-stripped brain came out mostly fat). The envelope records what a
checkpoint was trained on; :func:`guard` compares one series with it before the model runs and says how far
outside it lies, and why.

The envelope has two parts:

* **acquisition** (from DICOM): weighting, sequence family (Scanning Sequence), sequence variants, repetition,
  echo and inversion time and flip-angle ranges, fat suppression (Scan Options, STIR), Dixon images (Image
  Type), contrast agent, field strength and body site. Training cases in the SynthRAD layout carry no DICOM
  header, so each case may hold an ``acquisition.json`` sidecar (:data:`SIDECAR_FILE`, the keys of
  :func:`acquisition_from_sidecar`); ``sct-node phantom`` writes one describing the simulated sequence. A field
  no training case records stays unknown in the envelope, and the guard does not judge it.
* **images**: voxel size, field of view and slice orientation (from the images themselves), and an intensity
  signature of the MR inside the body mask after the model's own
  normalisation (:func:`models.learned.normalisation.normalise_mr`): a normalised histogram of
  :data:`HISTOGRAM_BINS` bins over [-1, 1], one per training case.

The intensity distance of a series is the Wasserstein-1 distance (in normalised units) between its body
histogram and that of the nearest training case, both first *log-compressed* (``log(1 + p / LOG_FLOOR)``,
renormalised): the compression weighs every occupied intensity nearly alike, so the distance follows *where*
the tissue intensities lie (the contrast) more than *how much* of each tissue there is (the anatomy, which
varies between patients). Measured on the phantoms (benchmarks/input_guard.py), the plain histogram's W1 put
two pelvis phantoms 0.13 apart and a gamma-changed T1w only 0.09 from its nearest training case; compressed,
in-distribution phantoms lie at most 0.016 from their nearest training case and every shift at 0.04 or more.
For 1D distributions W1 is the L1 distance of the cumulative distributions [1]. The threshold is set from the
training cases themselves: each case's distance to its nearest *other* case (leave-one-out) says how far apart
cases of the training distribution lie; the threshold is :data:`INTENSITY_MARGIN` times the largest of them,
and at least :data:`INTENSITY_FLOOR`.

References
----------
.. [1] Villani C., "Optimal Transport: Old and New", Springer 2009, Remark 2.19 (W1 in 1D as the L1
   distance between cumulative distribution functions).
.. [2] DICOM PS3.3 C.8.3.1 (MR Image Module: Scanning Sequence, Sequence Variant, Scan Options, Repetition,
   Echo and Inversion Time, Flip Angle, Magnetic Field Strength), C.7.3.1 (Body Part Examined), C.7.6.4
   (Contrast/Bolus Agent), C.8.13.5.1 (MR Image Frame Type, Enhanced MR).
.. [3] Mitchell M. et al., "Model Cards for Model Reporting", FAT* 2019 (the envelope is part of the card).
"""

from __future__ import annotations

from models.envelope.acquisition import (
    SIDECAR_FILE,
    Acquisition,
    acquisition_from_header,
    acquisition_from_sidecar,
    body_site,
    infer_weighting,
    read_sidecar,
)
from models.envelope.guard import (
    GUARD_POLICIES,
    INTENSITY_HARD_FACTOR,
    Finding,
    GuardResult,
    guard,
    refuses,
)
from models.envelope.signature import (
    HISTOGRAM_BINS,
    LOG_FLOOR,
    IntensitySignature,
    intensity_distance,
    intensity_histogram,
    orientation_of,
)
from models.envelope.training import (
    ENVELOPE_SCHEMA,
    INTENSITY_FLOOR,
    INTENSITY_MARGIN,
    Envelope,
    Range,
    envelope_from_cases,
)

__all__ = [
    "ENVELOPE_SCHEMA",
    "GUARD_POLICIES",
    "HISTOGRAM_BINS",
    "INTENSITY_FLOOR",
    "INTENSITY_HARD_FACTOR",
    "INTENSITY_MARGIN",
    "LOG_FLOOR",
    "SIDECAR_FILE",
    "Acquisition",
    "Envelope",
    "Finding",
    "GuardResult",
    "IntensitySignature",
    "Range",
    "acquisition_from_header",
    "acquisition_from_sidecar",
    "body_site",
    "envelope_from_cases",
    "guard",
    "infer_weighting",
    "intensity_distance",
    "intensity_histogram",
    "orientation_of",
    "read_sidecar",
    "refuses",
]
