"""The input guard: one series against one model's envelope, a verdict with reasons, and what a policy refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from models.body_mask import body_mask_from_mr
from models.envelope.acquisition import _KEYWORDS, Acquisition, acquisition_from_header
from models.envelope.signature import (
    intensity_histogram,
    orientation_of,
)
from models.envelope.training import Envelope, Range, _geometry
from models.errors import ModelError
from models.volume import Volume

__all__ = ["FIELD_TOLERANCE_FRACTION", "FOV_TOLERANCE_FACTOR", "GUARD_POLICIES", "INTENSITY_HARD_FACTOR",
           "PARAMETER_TOLERANCE_FRACTION", "SPACING_TOLERANCE_FACTOR", "Finding", "GuardResult", "guard",
           "refuses"]

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
    missing: tuple[str, ...]
    if header_or_fields is None:
        acquisition, missing = Acquisition(), ("(no header)",)
    elif isinstance(header_or_fields, Acquisition):
        acquisition, missing = header_or_fields, ()
    else:
        acquisition, missing = acquisition_from_header(header_or_fields)
    findings: list[Finding] = []
    judged_missing: list[str] = []

    def categorical(check: str, found: Any, allowed: tuple[Any, ...] | None, severity: Literal["soft", "hard"],
                    describe: Callable[[Any, tuple[Any, ...]], str]) -> None:
        """A finding when ``found`` is not among ``allowed``; ``describe(found, allowed)`` says why."""
        if allowed is None:
            return
        if found is None:
            judged_missing.append(_KEYWORDS[check])
            return
        if found not in allowed:
            findings.append(Finding(check, severity, describe(found, allowed)))

    def listing(values: tuple[Any, ...]) -> str:
        return ", ".join(str(v) for v in values)

    categorical("weighting", acquisition.weighting, envelope.weightings, "hard",
                lambda v, seen: f"{v}-weighted (from TR/TE) but the model was trained on {listing(seen)} only")
    categorical("scanning_sequence", acquisition.sequence_family, envelope.sequence_families, "hard",
                lambda v, seen: f"sequence family {v} (Scanning Sequence) not among the training's {listing(seen)}")
    categorical("body_site", acquisition.body_site, envelope.body_sites, "hard",
                lambda v, seen: f"body part {v} not among the training's {listing(seen)}")
    categorical("fat_suppressed", acquisition.fat_suppressed, envelope.fat_suppressed, "hard",
                lambda v, _: "fat-suppressed (Scan Options / STIR) but no training case was" if v
                else "not fat-suppressed, but every training case was")
    categorical("dixon", acquisition.dixon, envelope.dixon, "hard",
                lambda v, _: "a Dixon image (Image Type)" if v else "not a Dixon image, but every training case was")
    categorical("contrast_agent", acquisition.contrast_agent, envelope.contrast_agent, "soft",
                lambda v, _: "contrast-enhanced (Contrast/Bolus Agent) but the training cases were not" if v
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
