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

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.body_mask import body_mask_from_mr
from models.errors import ModelError
from models.volume import Volume

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

#: Version of the envelope's JSON layout (``Envelope.to_json``).
ENVELOPE_SCHEMA = 1
#: Per-case acquisition description next to ``mr.mha`` in a SynthRAD-layout case folder.
SIDECAR_FILE = "acquisition.json"
#: Bins of the intensity histogram over the normalised range [-1, 1] (0.03125 wide).
HISTOGRAM_BINS = 64
#: Log compression of histogram masses: ``log(1 + p / LOG_FLOOR)``; masses well below it barely count.
LOG_FLOOR = 1e-3
#: The intensity threshold is this many times the largest leave-one-out nearest-case distance of the training
#: cases: a new case of the training distribution lies a little farther than the farthest training case does
#: from its neighbours, since it was not among them.
INTENSITY_MARGIN = 1.5
#: ... and never below this (normalised units, [-1, 1] scale): a set of near-identical training cases must not
#: make noise alone a mismatch.
INTENSITY_FLOOR = 0.02
#: A distance this many times the threshold is a hard mismatch: farther from every training case than most
#: other-weighting and contrast-changed images are (benchmarks/input_guard.py gives the rates).
INTENSITY_HARD_FACTOR = 2.0
#: Sequence timing (TR, TE, TI, flip angle) may lie this fraction outside the training range before it counts.
PARAMETER_TOLERANCE_FRACTION = 0.2
#: Field strength may differ by this fraction from the training range (1.5 T vs 3 T always counts).
FIELD_TOLERANCE_FRACTION = 0.1
#: Voxel sizes within this factor of the training range (either way) count as inside it.
SPACING_TOLERANCE_FACTOR = 1.5
#: Field-of-view extents within this factor of the training range (either way) count as inside it.
FOV_TOLERANCE_FACTOR = 1.25

Verdict = Literal["ok", "soft", "hard", "unjudged"]
#: What a node route (``on_input_outside_envelope``) or ``translate`` does with a verdict; see :func:`refuses`.
GUARD_POLICIES = ("refuse-hard", "refuse", "mark")

#: Body Part Examined values (upper case) that mean one of the sites the phantoms have; others are kept as given.
_SITE_SYNONYMS = {
    "head": ("HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK", "CRANIUM", "NEURO"),
    "pelvis": ("PELVIS", "PROSTATE", "BLADDER", "RECTUM", "CERVIX", "UTERUS", "HIP", "PELVIC"),
}
#: Scan Options / Sequence Variant / Image Type values that mean fat suppression or a Dixon image.
_FAT_SUPPRESSION_OPTIONS = {"FS", "SFS", "FSA", "FSS", "FSI", "FSP", "FSW", "SPAIR", "SPIR", "WE", "FATSAT"}
_DIXON_IMAGE_TYPES = {"DIXON", "WATER", "FAT", "IN_PHASE", "OUT_PHASE", "OPP_PHASE", "W", "F", "IP", "OP"}
#: Enhanced MR (multi-frame) Echo Pulse Sequence -> the Scanning Sequence family it corresponds to.
_ECHO_PULSE = {"SPIN": "SE", "GRADIENT": "GR", "BOTH": "SE+GR"}
#: The DICOM keyword behind each acquisition field (what ``fields_missing`` names).
_KEYWORDS = {
    "scanning_sequence": "ScanningSequence", "sequence_variant": "SequenceVariant",
    "repetition_time_ms": "RepetitionTime", "echo_time_ms": "EchoTime", "inversion_time_ms": "InversionTime",
    "flip_angle_deg": "FlipAngle", "field_strength_t": "MagneticFieldStrength", "fat_suppressed": "ScanOptions",
    "dixon": "ImageType", "contrast_agent": "ContrastBolusAgent", "body_site": "BodyPartExamined",
    "weighting": "RepetitionTime/EchoTime",
}


# ------------------------------------------------------------------------------------------------ acquisition


@dataclass(frozen=True)
class Acquisition:
    """How one MR series (or one training case) was acquired; every field None where it is not known.

    Attributes
    ----------
    weighting : str or None
        ``T1``, ``T2``, ``PD``, ``T2*``, ``FLAIR``, ``STIR`` or ``mixed`` (:func:`infer_weighting`).
    sequence_family : str or None
        Scanning Sequence values, sorted and joined by ``+`` (``SE``, ``GR``, ``GR+IR``).
    sequence_variant : tuple of str or None
        Sequence Variant values (``NONE``, ``SK``, ``SP``, ...).
    repetition_time_ms, echo_time_ms, inversion_time_ms, flip_angle_deg : float or None
        Sequence timing and flip angle.
    field_strength_t : float or None
        Magnetic Field Strength, tesla.
    fat_suppressed, dixon, contrast_agent : bool or None
        Fat saturation (Scan Options, or an STIR inversion), a Dixon image (Image Type), a contrast agent given.
    body_site : str or None
        ``head``, ``pelvis`` or the lower-case Body Part Examined (:func:`body_site`).
    """

    weighting: str | None = None
    sequence_family: str | None = None
    sequence_variant: tuple[str, ...] | None = None
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    field_strength_t: float | None = None
    fat_suppressed: bool | None = None
    dixon: bool | None = None
    contrast_agent: bool | None = None
    body_site: str | None = None


def infer_weighting(sequence_family: str | None, repetition_time_ms: float | None, echo_time_ms: float | None,
                    inversion_time_ms: float | None = None, flip_angle_deg: float | None = None) -> str | None:
    """The contrast weighting that the sequence timing implies (the radiographer's rule of thumb).

    Spin echo (and unknown families): TR <= 1000 ms and TE <= 40 ms -> ``T1``; TR >= 1500 ms and TE >= 60 ms ->
    ``T2``; TR >= 1500 ms and TE < 40 ms -> ``PD``; otherwise ``mixed``. Inversion recovery: TI >= 1500 ms ->
    ``FLAIR``, TI <= 300 ms -> ``STIR``, a gradient-echo readout with a TI between -> ``T1`` (MPRAGE). Gradient
    echo: TE >= 15 ms -> ``T2*``; a flip angle >= 20 degrees (or none given) with TE < 15 ms -> ``T1``; else ``PD``.

    Returns
    -------
    str or None
        None when TR or TE is unknown.

    References
    ----------
    McRobbie D. W. et al., "MRI from Picture to Proton", 3rd ed., Cambridge 2017, ch. 4 and 7.
    """
    if repetition_time_ms is None or echo_time_ms is None:
        return None
    parts = set((sequence_family or "").split("+"))
    tr, te = repetition_time_ms, echo_time_ms
    if "IR" in parts and inversion_time_ms is not None:
        if inversion_time_ms >= 1500:
            return "FLAIR"
        if inversion_time_ms <= 300:
            return "STIR"
        if "GR" in parts:
            return "T1"
    if "GR" in parts and "SE" not in parts:
        if te >= 15:
            return "T2*"
        return "T1" if flip_angle_deg is None or flip_angle_deg >= 20 else "PD"
    if tr <= 1000 and te <= 40:
        return "T1"
    if tr >= 1500 and te >= 60:
        return "T2"
    if tr >= 1500 and te < 40:
        return "PD"
    return "mixed"


def body_site(body_part: str | None) -> str | None:
    """``head`` or ``pelvis`` for the Body Part Examined values that mean them; other values in lower case."""
    if body_part is None or not str(body_part).strip():
        return None
    value = str(body_part).strip().upper().replace(" ", "")
    for site, names in _SITE_SYNONYMS.items():
        if value in names:
            return site
    return value.lower()


def _values(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        items = raw.replace("\\", " ").split()
    else:
        try:
            items = [str(v) for v in raw]
        except TypeError:
            items = [str(raw)]
    return tuple(s.strip().upper() for s in items if str(s).strip())


def _number(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        if not isinstance(raw, str | int | float):
            raw = next(iter(raw))  # multi-valued (e.g. several echo times): the first
        value = float(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return value if np.isfinite(value) else None


def _lookup(header: Any, keyword: str) -> tuple[bool, Any]:
    """(present, value) of a keyword at the top level or in the first shared / per-frame functional group item."""
    if _has(header, keyword):
        return True, _get(header, keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = _get(header, groups)
        if not sequence:
            continue
        for macro in sequence[0]:
            if getattr(macro, "VR", None) == "SQ" and macro.value:
                item = macro.value[0]
                if _has(item, keyword):
                    return True, _get(item, keyword)
    return False, None


def _has(header: Any, keyword: str) -> bool:
    try:
        return keyword in header
    except TypeError:
        return False


def _get(header: Any, keyword: str) -> Any:
    try:
        return header.get(keyword)
    except AttributeError:
        return None


def acquisition_from_header(header: Any) -> tuple[Acquisition, tuple[str, ...]]:
    """What a DICOM MR header says about the acquisition, and which keywords it lacks.

    Parameters
    ----------
    header : pydicom.Dataset or mapping
        The series' header (``ImageSeries.header``), or a mapping from DICOM keyword to value. Enhanced MR
        attributes are looked up in the first shared or per-frame functional group item.

    Returns
    -------
    tuple
        ``(acquisition, missing)``: the :class:`Acquisition` (None where the header is silent) and the DICOM
        keywords that were absent or empty. An absent Contrast/Bolus Agent means no contrast (the module is
        present only when one was given); an absent Scan Options means fat suppression is unknown.
    """
    missing: list[str] = []

    def value(keyword: str) -> Any:
        present, raw = _lookup(header, keyword)
        if not present or raw is None or (isinstance(raw, str) and not raw.strip()):
            missing.append(keyword)
            return None
        return raw

    sequence = _values(value("ScanningSequence"))
    if not sequence:
        present, pulse = _lookup(header, "EchoPulseSequence")
        if present and pulse:
            missing.remove("ScanningSequence")
            sequence = tuple(_ECHO_PULSE.get(str(pulse).upper(), str(pulse).upper()).split("+"))
            if str(_lookup(header, "InversionRecovery")[1] or "").upper() == "YES":
                sequence += ("IR",)
    family = "+".join(sorted(set(sequence))) or None
    variant = _values(value("SequenceVariant")) or None
    tr = _number(value("RepetitionTime"))
    te = _number(value("EchoTime"))
    if te is None:
        present, effective = _lookup(header, "EffectiveEchoTime")
        if present and _number(effective) is not None:
            missing.remove("EchoTime")
            te = _number(effective)
    ti = _number(_lookup(header, "InversionTime")[1])
    flip = _number(_lookup(header, "FlipAngle")[1])
    field_t = _number(value("MagneticFieldStrength"))
    present, options = _lookup(header, "ScanOptions")
    image_type = _values(value("ImageType"))
    frame_type = _values(_lookup(header, "FrameType")[1])
    fat = None
    if present or variant is not None:
        fat = bool((set(_values(options)) | set(variant or ())) & _FAT_SUPPRESSION_OPTIONS)
    weighting = infer_weighting(family, tr, te, ti, flip)
    if weighting == "STIR":
        fat = True
    dixon = bool((set(image_type) | set(frame_type)) & _DIXON_IMAGE_TYPES) if image_type or frame_type else None
    present_agent, agent = _lookup(header, "ContrastBolusAgent")
    contrast = bool(present_agent and agent is not None and str(agent).strip())
    site = body_site(value("BodyPartExamined"))
    return (Acquisition(weighting=weighting, sequence_family=family, sequence_variant=variant,
                        repetition_time_ms=tr, echo_time_ms=te, inversion_time_ms=ti, flip_angle_deg=flip,
                        field_strength_t=field_t, fat_suppressed=fat, dixon=dixon, contrast_agent=contrast,
                        body_site=site),
            tuple(missing))


def acquisition_from_sidecar(data: Mapping[str, Any], where: str = "acquisition.json") -> Acquisition:
    """An :class:`Acquisition` from a training case's sidecar (JSON object; every key optional).

    Keys: ``weighting`` (``T1``, ``T2``, ...; inferred from the timing when absent), ``scanning_sequence`` (list,
    e.g. ``["SE"]``), ``sequence_variant`` (list), ``repetition_time_ms``, ``echo_time_ms``,
    ``inversion_time_ms``, ``flip_angle_deg``, ``field_strength_t``, ``fat_suppressed``, ``dixon``,
    ``contrast_agent`` (booleans), ``body_part`` (Body Part Examined, e.g. ``PELVIS``).

    Raises
    ------
    ModelError
        If ``data`` is not an object, a key is unknown, or a value has the wrong type; the message names it.
    """
    known = {"weighting", "scanning_sequence", "sequence_variant", "repetition_time_ms", "echo_time_ms",
             "inversion_time_ms", "flip_angle_deg", "field_strength_t", "fat_suppressed", "dixon",
             "contrast_agent", "body_part", "note"}
    if not isinstance(data, Mapping):
        raise ModelError(f"{where}: expected a JSON object; found {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    numbers: dict[str, float | None] = {}
    for key in ("repetition_time_ms", "echo_time_ms", "inversion_time_ms", "flip_angle_deg", "field_strength_t"):
        raw = data.get(key)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0):
            raise ModelError(f"{where}: {key} must be a positive number or null; found {raw!r}")
        numbers[key] = None if raw is None else float(raw)
    flags: dict[str, bool | None] = {}
    for key in ("fat_suppressed", "dixon", "contrast_agent"):
        raw = data.get(key)
        if raw is not None and not isinstance(raw, bool):
            raise ModelError(f"{where}: {key} must be true, false or null; found {raw!r}")
        flags[key] = raw
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("scanning_sequence", "sequence_variant"):
        raw = data.get(key)
        if raw is not None and (not isinstance(raw, list) or not all(isinstance(v, str) for v in raw)):
            raise ModelError(f"{where}: {key} must be a list of strings or null; found {raw!r}")
        lists[key] = None if raw is None else tuple(v.strip().upper() for v in raw)
    family = "+".join(sorted(set(lists["scanning_sequence"]))) if lists["scanning_sequence"] else None
    weighting = data.get("weighting")
    if weighting is not None and not isinstance(weighting, str):
        raise ModelError(f"{where}: weighting must be a string or null; found {weighting!r}")
    weighting = weighting.strip().upper().replace("W", "") if weighting else \
        infer_weighting(family, numbers["repetition_time_ms"], numbers["echo_time_ms"],
                        numbers["inversion_time_ms"], numbers["flip_angle_deg"])
    return Acquisition(weighting=weighting, sequence_family=family, sequence_variant=lists["sequence_variant"],
                       repetition_time_ms=numbers["repetition_time_ms"], echo_time_ms=numbers["echo_time_ms"],
                       inversion_time_ms=numbers["inversion_time_ms"], flip_angle_deg=numbers["flip_angle_deg"],
                       field_strength_t=numbers["field_strength_t"], fat_suppressed=flags["fat_suppressed"],
                       dixon=flags["dixon"], contrast_agent=flags["contrast_agent"],
                       body_site=body_site(data.get("body_part")))


def read_sidecar(case_dir: Path) -> Acquisition | None:
    """The :data:`SIDECAR_FILE` of a case folder as an :class:`Acquisition`, or None when there is none.

    Raises
    ------
    ModelError
        If the file exists but is not valid JSON or not a valid sidecar.
    """
    path = Path(case_dir) / SIDECAR_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    return acquisition_from_sidecar(data, str(path))


# ------------------------------------------------------------------------------------------------ images


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
        from models.learned.normalisation import normalise_mr as normalise
    body = np.asarray(body, dtype=bool)
    values = np.asarray(normalise(np.asarray(mr, dtype=np.float32), body))[body]
    counts, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
    return counts / max(int(counts.sum()), 1)


def intensity_distance(histogram_a: Sequence[float], histogram_b: Sequence[float]) -> float:
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


# ------------------------------------------------------------------------------------------------ envelope


@dataclass(frozen=True)
class Range:
    """A closed interval ``[low, high]`` (units in the field's name)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low <= self.high):
            raise ModelError(f"a range needs finite low <= high; found [{self.low}, {self.high}]")

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Range | None:
        known = [float(v) for v in values if v is not None]
        return cls(min(known), max(known)) if known else None

    def text(self, unit: str) -> str:
        if self.low == self.high:
            return f"{self.low:g} {unit}"
        return f"{self.low:g}-{self.high:g} {unit}"


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

    def nearest(self, histogram: Sequence[float]) -> tuple[float, str]:
        """(distance, case id) of the nearest training case."""
        distances = [intensity_distance(histogram, h) for h in self.histograms]
        k = int(np.argmin(distances))
        return distances[k], self.case_ids[k]


@dataclass(frozen=True)
class Envelope:
    """What a checkpoint was trained on (see the module docstring); None in a field means "not recorded".

    Set-valued fields hold every value seen in training; ranges the smallest and largest.
    """

    cases: int
    intensity: IntensitySignature
    spacing_mm: tuple[Range, Range, Range]
    fov_mm: tuple[Range, Range, Range]
    orientations: tuple[str, ...]
    weightings: tuple[str, ...] | None = None
    sequence_families: tuple[str, ...] | None = None
    sequence_variants: tuple[str, ...] | None = None
    repetition_time_ms: Range | None = None
    echo_time_ms: Range | None = None
    inversion_time_ms: Range | None = None
    flip_angle_deg: Range | None = None
    field_strength_t: Range | None = None
    fat_suppressed: tuple[bool, ...] | None = None
    dixon: tuple[bool, ...] | None = None
    contrast_agent: tuple[bool, ...] | None = None
    body_sites: tuple[str, ...] | None = None
    cases_with_acquisition: int = 0
    source: str = ""
    schema: int = ENVELOPE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``envelope`` field of a model card); :meth:`from_json` reads it back."""
        return _jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: Any, where: str = "envelope") -> Envelope:
        """Read :meth:`to_json`'s output.

        Raises
        ------
        ModelError
            If a field is missing, unknown or malformed, or the schema is newer than this code.
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"{where}: expected a JSON object; found {type(data).__name__}")
        if data.get("schema") != ENVELOPE_SCHEMA:
            raise ModelError(f"{where}: schema {data.get('schema')!r}; this sct-node reads schema {ENVELOPE_SCHEMA}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {unknown}")
        try:
            intensity = dict(data["intensity"])
            signature = IntensitySignature(
                case_ids=tuple(str(c) for c in intensity["case_ids"]),
                histograms=tuple(tuple(float(v) for v in h) for h in intensity["histograms"]),
                leave_one_out=tuple(float(v) for v in intensity["leave_one_out"]),
                threshold=float(intensity["threshold"]),
                normalisation=str(intensity.get("normalisation", "")))
            if not signature.histograms or any(len(h) != HISTOGRAM_BINS for h in signature.histograms):
                raise ValueError(f"intensity.histograms must hold one or more vectors of {HISTOGRAM_BINS} values")
            if len(signature.case_ids) != len(signature.histograms) or not signature.threshold > 0:
                raise ValueError("intensity needs one case id per histogram and a positive threshold")

            def rng(value: Any) -> Range | None:
                return None if value is None else Range(float(value["low"]), float(value["high"]))

            def strings(value: Any) -> tuple[str, ...] | None:
                return None if value is None else tuple(str(v) for v in value)

            def flags(value: Any) -> tuple[bool, ...] | None:
                if value is None:
                    return None
                if not all(isinstance(v, bool) for v in value):
                    raise ValueError(f"expected booleans; found {value!r}")
                return tuple(value)

            return cls(
                cases=int(data["cases"]), intensity=signature,
                spacing_mm=tuple(rng(r) for r in data["spacing_mm"]), fov_mm=tuple(rng(r) for r in data["fov_mm"]),
                orientations=tuple(str(v) for v in data["orientations"]),
                weightings=strings(data.get("weightings")), sequence_families=strings(data.get("sequence_families")),
                sequence_variants=strings(data.get("sequence_variants")),
                repetition_time_ms=rng(data.get("repetition_time_ms")), echo_time_ms=rng(data.get("echo_time_ms")),
                inversion_time_ms=rng(data.get("inversion_time_ms")), flip_angle_deg=rng(data.get("flip_angle_deg")),
                field_strength_t=rng(data.get("field_strength_t")), fat_suppressed=flags(data.get("fat_suppressed")),
                dixon=flags(data.get("dixon")), contrast_agent=flags(data.get("contrast_agent")),
                body_sites=strings(data.get("body_sites")),
                cases_with_acquisition=int(data.get("cases_with_acquisition", 0)), source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise ModelError(f"{where}: malformed envelope ({type(exc).__name__}: {exc})") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    return value


def _geometry(volume: Volume) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    spacing = tuple(float(s) for s in volume.spacing_mm)
    fov = tuple(float(s * n) for s, n in zip(spacing, volume.size_xyz))
    return spacing, fov


def envelope_from_cases(cases: Sequence[tuple[str, Volume, Acquisition | None]], *,
                        bodies: Sequence[np.ndarray | None] | None = None,
                        normalise: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                        normalisation: str = "mr: p99.5 in body, [-1,1]", source: str = "") -> Envelope:
    """The envelope of a set of training cases.

    Parameters
    ----------
    cases : sequence of (case_id, mr, acquisition)
        Each case's id, MR volume and acquisition (its sidecar; None when it has none).
    bodies : sequence of numpy.ndarray or None
        Body masks for the intensity signature; default (and for None entries)
        :func:`~models.body_mask.body_mask_from_mr`, the mask the model and the guard use at inference.
    normalise : callable or None
        The model's MR normalisation (default ``normalise_mr``).
    normalisation : str
        Its name, recorded.
    source : str
        How the acquisition part was filled (recorded, shown in the docs and the card).

    Raises
    ------
    ModelError
        If there is no case.
    """
    if not cases:
        raise ModelError("an envelope needs at least one training case")
    bodies = list(bodies) if bodies is not None else [None] * len(cases)
    ids, histograms, spacings, fovs, orientations = [], [], [], [], set()
    for (case_id, mr, _), body in zip(cases, bodies):
        mask = body_mask_from_mr(mr) if body is None else np.asarray(body, dtype=bool)
        ids.append(str(case_id))
        histograms.append(intensity_histogram(mr.array, mask, normalise))
        spacing, fov = _geometry(mr)
        spacings.append(spacing)
        fovs.append(fov)
        orientations.add(orientation_of(mr))
    loo = []
    for i, h in enumerate(histograms):
        others = [intensity_distance(h, g) for j, g in enumerate(histograms) if j != i]
        loo.append(min(others) if others else 0.0)
    threshold = max(INTENSITY_MARGIN * max(loo), INTENSITY_FLOOR)
    signature = IntensitySignature(tuple(ids), tuple(tuple(float(v) for v in h) for h in histograms), tuple(loo),
                                   float(threshold), normalisation)
    acquisitions = [a for _, _, a in cases if a is not None]

    def seen(name: str) -> tuple | None:
        values = [getattr(a, name) for a in acquisitions if getattr(a, name) is not None]
        return tuple(sorted(set(values))) if values else None

    variants = [v for a in acquisitions if a.sequence_variant for v in a.sequence_variant]
    return Envelope(
        cases=len(cases), intensity=signature,
        spacing_mm=tuple(Range.of(s[i] for s in spacings) for i in range(3)),
        fov_mm=tuple(Range.of(f[i] for f in fovs) for i in range(3)),
        orientations=tuple(sorted(orientations)),
        weightings=seen("weighting"), sequence_families=seen("sequence_family"),
        sequence_variants=tuple(sorted(set(variants))) if variants else None,
        repetition_time_ms=Range.of(a.repetition_time_ms for a in acquisitions),
        echo_time_ms=Range.of(a.echo_time_ms for a in acquisitions),
        inversion_time_ms=Range.of(a.inversion_time_ms for a in acquisitions),
        flip_angle_deg=Range.of(a.flip_angle_deg for a in acquisitions),
        field_strength_t=Range.of(a.field_strength_t for a in acquisitions),
        fat_suppressed=seen("fat_suppressed"), dixon=seen("dixon"), contrast_agent=seen("contrast_agent"),
        body_sites=seen("body_site"), cases_with_acquisition=len(acquisitions), source=source,
    )


# ------------------------------------------------------------------------------------------------ guard


@dataclass(frozen=True)
class Finding:
    """One way a series lies outside the envelope.

    Attributes
    ----------
    check : str
        What was compared (``weighting``, ``echo_time_ms``, ``intensity``, ...).
    severity : str
        ``hard`` (another kind of image: the model's output means nothing) or ``soft`` (an image of the trained
        kind under conditions the model has not seen).
    message : str
        For a physicist, with the value found and the training range.
    """

    check: str
    severity: Literal["soft", "hard"]
    message: str


@dataclass(frozen=True)
class GuardResult:
    """The guard's judgement of one series against one model's envelope.

    Attributes
    ----------
    verdict : str
        ``hard`` if any finding is hard, ``soft`` if any is soft, ``ok`` if none; ``unjudged`` when the model
        has no envelope.
    score : float or None
        Intensity distance over its threshold (1 = at the edge of the training data); None when unjudged.
    findings : tuple of Finding
    fields_missing : tuple of str
        DICOM keywords the envelope could have been compared with but the header lacks: the series was judged
        without them.
    intensity_distance : float or None
        :func:`intensity_distance` to the nearest training case (normalised units).
    intensity_threshold : float or None
    nearest_case : str or None
        The training case the series is closest to in intensity.
    """

    verdict: Verdict
    score: float | None
    findings: tuple[Finding, ...] = ()
    fields_missing: tuple[str, ...] = ()
    intensity_distance: float | None = None
    intensity_threshold: float | None = None
    nearest_case: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def reasons(self) -> tuple[str, ...]:
        """The findings' messages, hard ones first."""
        ordered = sorted(self.findings, key=lambda f: f.severity != "hard")
        return tuple(f.message for f in ordered)

    def summary(self) -> str:
        """One line: the verdict, the reasons, the missing fields."""
        parts = list(self.reasons) + list(self.notes)
        if self.fields_missing:
            parts.append(f"judged without {', '.join(self.fields_missing)} (not in the header)")
        text = f"input guard: {self.verdict}"
        return text + (": " + "; ".join(parts) if parts else "")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``guard.json`` of a node job)."""
        return {"schema": 1, "verdict": self.verdict, "score": None if self.score is None else round(self.score, 4),
                "reasons": list(self.reasons),
                "findings": [asdict(f) for f in self.findings], "fields_missing": list(self.fields_missing),
                "intensity_distance": None if self.intensity_distance is None else round(self.intensity_distance, 5),
                "intensity_threshold": None if self.intensity_threshold is None else round(self.intensity_threshold, 5),
                "nearest_case": self.nearest_case, "notes": list(self.notes)}


def _outside(value: float, allowed: Range, tolerance_fraction: float) -> bool:
    return value < allowed.low * (1 - tolerance_fraction) or value > allowed.high * (1 + tolerance_fraction)


def guard(header_or_fields: Any, volume: Volume, envelope: Envelope | None, *,
          normalise: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
          body: np.ndarray | None = None, model_name: str = "the model") -> GuardResult:
    """Judge one MR series against a model's training envelope, before the model runs.

    Parameters
    ----------
    header_or_fields : pydicom.Dataset, mapping, Acquisition or None
        The series' DICOM header (or a keyword -> value mapping), an :class:`Acquisition` already read, or None
        (no header: judged on the images alone).
    volume : Volume
        The MR volume.
    envelope : Envelope or None
        The model's envelope; None gives an ``unjudged`` result saying so.
    normalise : callable or None
        The model's MR normalisation (default ``normalise_mr``).
    body : numpy.ndarray or None
        Body mask; default :func:`~models.body_mask.body_mask_from_mr` (what the model uses).
    model_name : str
        Named in the "no envelope" note.

    Returns
    -------
    GuardResult

    Rules (severity)
    ----------------
    hard: weighting, sequence family, body site, fat suppression or Dixon not among the training's; intensity
    distance above :data:`INTENSITY_HARD_FACTOR` x threshold. soft: TR, TE, TI, flip angle outside the training
    range by more than :data:`PARAMETER_TOLERANCE_FRACTION`, field strength by more than
    :data:`FIELD_TOLERANCE_FRACTION`; sequence variant or contrast agent not seen in training; voxel size
    beyond :data:`SPACING_TOLERANCE_FACTOR`, field of view beyond :data:`FOV_TOLERANCE_FACTOR` of the training
    range; another slice orientation; intensity distance above the threshold.
    """
    if envelope is None:
        return GuardResult(verdict="unjudged", score=None,
                           notes=(f"no envelope: cannot judge ({model_name} records no training envelope)",))
    if header_or_fields is None:
        acquisition, missing = Acquisition(), ("(no header)",)
    elif isinstance(header_or_fields, Acquisition):
        acquisition, missing = header_or_fields, ()
    else:
        acquisition, missing = acquisition_from_header(header_or_fields)
    findings: list[Finding] = []
    judged_missing: list[str] = []

    def categorical(check: str, found: Any, allowed: tuple | None, severity: str, describe: Callable[[Any], str]):
        if allowed is None:
            return
        if found is None:
            judged_missing.append(_KEYWORDS[check])
            return
        if found not in allowed:
            findings.append(Finding(check, severity, describe(found)))

    def listing(values: tuple) -> str:
        return ", ".join(str(v) for v in values)

    categorical("weighting", acquisition.weighting, envelope.weightings, "hard",
                lambda v: f"{v}-weighted (from TR/TE) but the model was trained on {listing(envelope.weightings)} only")
    categorical("scanning_sequence", acquisition.sequence_family, envelope.sequence_families, "hard",
                lambda v: f"sequence family {v} (Scanning Sequence) not among the training's "
                          f"{listing(envelope.sequence_families)}")
    categorical("body_site", acquisition.body_site, envelope.body_sites, "hard",
                lambda v: f"body part {v} not among the training's {listing(envelope.body_sites)}")
    categorical("fat_suppressed", acquisition.fat_suppressed, envelope.fat_suppressed, "hard",
                lambda v: "fat-suppressed (Scan Options / STIR) but no training case was" if v
                else "not fat-suppressed, but every training case was")
    categorical("dixon", acquisition.dixon, envelope.dixon, "hard",
                lambda v: "a Dixon image (Image Type)" if v else "not a Dixon image, but every training case was")
    categorical("contrast_agent", acquisition.contrast_agent, envelope.contrast_agent, "soft",
                lambda v: "contrast-enhanced (Contrast/Bolus Agent) but the training cases were not" if v
                else "without contrast agent but the training cases had one")
    if envelope.sequence_variants is not None and acquisition.sequence_variant is not None:
        new = [v for v in acquisition.sequence_variant if v not in envelope.sequence_variants]
        if new:
            findings.append(Finding("sequence_variant", "soft",
                                    f"sequence variant {listing(tuple(new))} not seen in training "
                                    f"({listing(envelope.sequence_variants)})"))
    for check, label, unit, tolerance in (
            ("repetition_time_ms", "repetition time", "ms", PARAMETER_TOLERANCE_FRACTION),
            ("echo_time_ms", "echo time", "ms", PARAMETER_TOLERANCE_FRACTION),
            ("inversion_time_ms", "inversion time", "ms", PARAMETER_TOLERANCE_FRACTION),
            ("flip_angle_deg", "flip angle", "deg", PARAMETER_TOLERANCE_FRACTION),
            ("field_strength_t", "field strength", "T", FIELD_TOLERANCE_FRACTION)):
        allowed, found = getattr(envelope, check), getattr(acquisition, check)
        if allowed is None:
            if found is not None and check == "inversion_time_ms":
                findings.append(Finding(check, "soft", f"inversion time {found:g} ms but no training case had an "
                                                       f"inversion pulse"))
            continue
        if found is None:
            if check != "inversion_time_ms" or "IR" in (acquisition.sequence_family or ""):
                judged_missing.append(_KEYWORDS[check])
            continue
        if _outside(found, allowed, tolerance):
            findings.append(Finding(check, "soft", f"{label} {found:g} {unit} outside the training range "
                                                   f"{allowed.text(unit)}"))
    spacing, fov = _geometry(volume)
    for axis, name in enumerate(("x", "y", "z")):
        allowed = envelope.spacing_mm[axis]
        if allowed is not None and not (allowed.low / SPACING_TOLERANCE_FACTOR <= spacing[axis]
                                        <= allowed.high * SPACING_TOLERANCE_FACTOR):
            findings.append(Finding("spacing_mm", "soft", f"voxel size along {name} {spacing[axis]:.3g} mm outside "
                                                          f"the training range {allowed.text('mm')}"))
        allowed = envelope.fov_mm[axis]
        if allowed is not None and not (allowed.low / FOV_TOLERANCE_FACTOR <= fov[axis]
                                        <= allowed.high * FOV_TOLERANCE_FACTOR):
            findings.append(Finding("fov_mm", "soft", f"field of view along {name} {fov[axis]:.0f} mm outside the "
                                                      f"training range {allowed.text('mm')}"))
    orientation = orientation_of(volume)
    if orientation not in envelope.orientations:
        findings.append(Finding("orientation", "soft", f"{orientation} slices; the model was trained on "
                                                       f"{listing(envelope.orientations)} slices"))
    mask = body_mask_from_mr(volume) if body is None else np.asarray(body, dtype=bool)
    histogram = intensity_histogram(volume.array, mask, normalise)
    distance, nearest = envelope.intensity.nearest(histogram)
    threshold = envelope.intensity.threshold
    if distance > threshold:
        hard = distance > INTENSITY_HARD_FACTOR * threshold
        findings.append(Finding(
            "intensity", "hard" if hard else "soft",
            f"intensity distribution distance {distance:.3f} > {threshold:.3f}: contrast unlike the training data"
            + (f" (more than {INTENSITY_HARD_FACTOR:g} times the threshold)" if hard else "")))
    verdict: Verdict = "hard" if any(f.severity == "hard" for f in findings) else \
        "soft" if findings else "ok"
    reported_missing = tuple(dict.fromkeys(judged_missing if header_or_fields is not None else missing))
    return GuardResult(verdict=verdict, score=distance / threshold, findings=tuple(findings),
                       fields_missing=reported_missing, intensity_distance=distance, intensity_threshold=threshold,
                       nearest_case=nearest)


def refuses(result: GuardResult, policy: str) -> bool:
    """Whether ``policy`` refuses to make an sCT for ``result``.

    ``refuse-hard`` (the default) refuses a ``hard`` verdict, ``refuse`` a ``hard`` or ``soft`` one, ``mark``
    none. ``unjudged`` (no envelope) and ``ok`` are never refused.

    Raises
    ------
    ModelError
        If the policy is not one of :data:`GUARD_POLICIES`.
    """
    if policy not in GUARD_POLICIES:
        raise ModelError(f"input guard policy must be one of {', '.join(GUARD_POLICIES)}; found {policy!r}")
    if policy == "mark":
        return False
    return result.verdict == "hard" or (policy == "refuse" and result.verdict == "soft")
