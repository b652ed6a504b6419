"""PASS / WARN / FAIL for every QA check and overall, each with its reason.

A check compares one measured value with two thresholds: inside the PASS
limit it passes, between the PASS and FAIL limits it warns, beyond the FAIL
limit it fails. The overall verdict is the worst check; its reasons are the
checks that made it so. Default thresholds come from published sCT
validation practice; each carries its source so the report can cite it.

References
----------
J. Korsholm et al., Radiat. Oncol. 9:16, 2014 (MRI-only prostate: PTV DVH
points within 2 %). M. Maspero et al., Phys. Med. Biol. 63:185001, 2018
(pelvis cGAN sCT: gamma 2 %/2 mm pass rates above 91 %, DVH differences
within 2.5 %). M. Hussein, C. Clark, A. Nisbet, Phys. Med. 36:1-11, 2017
(gamma good practice: 95 % pass rate action levels). A. Thummerer et al.,
SynthRAD2023 (MAE of the best sCTs 60-70 HU; see shared REFERENCE.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from dosimetry.errors import DosimetryError

__all__ = ["Check", "Limit", "QaThresholds", "Verdict", "judge", "overall", "thresholds_from_mapping"]


class Verdict(enum.StrEnum):
    """Outcome of a check; ordered PASS < WARN < FAIL."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"

    @property
    def severity(self) -> int:
        return ("PASS", "WARN", "FAIL").index(self.value)


@dataclass(frozen=True)
class Limit:
    """Thresholds of one check.

    Attributes
    ----------
    pass_limit, fail_limit : float
        With ``higher_is_better`` the value passes at or above ``pass_limit`` and fails below
        ``fail_limit``; otherwise it passes at or below ``pass_limit`` and fails above ``fail_limit``.
    higher_is_better : bool
    unit : str
    source : str
        Where the default comes from.
    """

    pass_limit: float
    fail_limit: float
    higher_is_better: bool
    unit: str
    source: str

    def __post_init__(self) -> None:
        ordered = self.pass_limit >= self.fail_limit if self.higher_is_better else self.pass_limit <= self.fail_limit
        if not ordered:
            raise DosimetryError(f"threshold pass limit {self.pass_limit} is beyond its fail limit {self.fail_limit}")


@dataclass(frozen=True)
class Check:
    """One judged measurement."""

    name: str
    value: float
    unit: str
    verdict: Verdict
    reason: str
    pass_limit: float
    fail_limit: float
    higher_is_better: bool
    source: str


def judge(name: str, value: float, limit: Limit, description: str) -> Check:
    """Judge a value against its limit; the reason states value, threshold and what it means.

    A NaN value (a measurement that could not be made) fails.
    """
    value = float(value)
    if math.isnan(value):
        return Check(name, value, limit.unit, Verdict.FAIL, f"{description}: could not be measured",
                     limit.pass_limit, limit.fail_limit, limit.higher_is_better, limit.source)
    better = (lambda a, b: a >= b) if limit.higher_is_better else (lambda a, b: a <= b)
    word = "at least" if limit.higher_is_better else "at most"
    shown = f"{value:.4g} {limit.unit}".strip()
    if better(value, limit.pass_limit):
        verdict, reason = Verdict.PASS, f"{description} {shown} ({word} {limit.pass_limit:g} passes)"
    elif better(value, limit.fail_limit):
        verdict, reason = Verdict.WARN, (f"{description} {shown}: outside the pass limit {limit.pass_limit:g}, "
                                         f"within the fail limit {limit.fail_limit:g}")
    else:
        verdict, reason = Verdict.FAIL, f"{description} {shown}: beyond the fail limit {limit.fail_limit:g}"
    return Check(name, value, limit.unit, verdict, reason, limit.pass_limit, limit.fail_limit,
                 limit.higher_is_better, limit.source)


def overall(checks: Iterable[Check]) -> tuple[Verdict, tuple[str, ...]]:
    """The worst verdict and the reasons of the checks that have it (PASS: no reasons needed)."""
    checks = list(checks)
    if not checks:
        raise DosimetryError("no QA check was run; a verdict needs at least one")
    worst = max((c.verdict for c in checks), key=lambda v: v.severity)
    reasons = tuple(c.reason for c in checks if c.verdict == worst) if worst != Verdict.PASS else ()
    return worst, reasons


def _limit(pass_limit: float, fail_limit: float, higher: bool, unit: str, source: str) -> Limit:
    return field(default_factory=lambda: Limit(pass_limit, fail_limit, higher, unit, source))


@dataclass(frozen=True)
class QaThresholds:
    """Default thresholds of every check, with sources. Override any of them per site in the node's config.

    ``fat_share_head_percent`` and ``fat_share_pelvis_percent`` are the limits of one check, ``fat_share``;
    the QA uses the one of its site.
    """

    gamma_pass_rate_percent: Limit = _limit(
        95.0, 90.0, True, "%", "gamma 2 %/2 mm pass rate: 95 % action level (Hussein et al. 2017); "
                               "MRI-only sCTs reach >91-99 % (Maspero et al. 2018; SynthRAD2025)")
    target_dvh_difference_percent: Limit = _limit(
        2.0, 3.0, False, "% of prescription", "PTV DVH points within 2 % (Korsholm et al. 2014)")
    oar_dvh_difference_percent: Limit = _limit(
        2.0, 3.0, False, "% of prescription", "OAR DVH differences within 2-2.5 % (Maspero et al. 2018)")
    mae_body_hu: Limit = _limit(
        80.0, 120.0, False, "HU", "SynthRAD2023/2025: best MR->CT MAE 60-70 HU")
    body_dice: Limit = _limit(
        0.98, 0.95, True, "", "sCT outline must follow the MR outline; dose depends on the external contour")
    body_surface_distance_95_mm: Limit = _limit(
        2.0, 4.0, False, "mm", "1-2 voxels of outline disagreement (sCT vs MR)")
    bone_fraction_percent: Limit = _limit(
        1.0, 0.2, True, "% of body voxels",
        "head and pelvis hold 5-20 % bone; an sCT without bone misplaces dose by several % "
        "(Thomas, BJR 1999: >8 % bone density error for 1 % dose error)")
    soft_tissue_peak_hu_deviation: Limit = _limit(
        25.0, 50.0, False, "HU",
        "distance of the body histogram's soft-tissue peak from 35 HU: brain white matter about 30, grey matter "
        "about 40, muscle 40-50 HU (Bushberg et al. 2012, ch. 10; Schneider et al. 2000); pass 10-60, fail outside "
        "-15...85 HU; fat lies at -100 +/- 20 HU")
    fat_share_head_percent: Limit = _limit(
        30.0, 35.0, False, "% of fat and soft-tissue voxels",
        "head: brain (20-45 HU) and muscle dominate, fat is a thin scalp layer plus orbital fat (fat -100 HU, "
        "Schneider et al. 2000); head phantoms hold 15-28 % with partial volume at 1-5 mm voxels; half the brain "
        "turned to fat gives 38-44 %")
    fat_share_pelvis_percent: Limit = _limit(
        70.0, 85.0, False, "% of fat and soft-tissue voxels",
        "pelvis: subcutaneous and visceral fat may outweigh muscle and organs in obese patients, but muscle "
        "(gluteal, obturator, pelvic floor), bladder, prostate and rectum always remain (Kvist et al. 1988 "
        "adipose volumes); WARN for review above 70 %")
    bone_slices_percent: Limit = _limit(
        85.0, 60.0, True, "% of body slices",
        "every axial slice of a head (skull, skull base, mandible, spine) and of a pelvis (ilium, sacrum, "
        "acetabula, femoral heads) cuts bone; a slice holds bone when >= 1 % of its body section is >= 200 HU "
        "(spongiosa 200-400, cortical bone > 700 HU, Schneider et al. 2000)")
    hu_distribution_distance_hu: Limit = _limit(
        40.0, 80.0, False, "HU",
        "1-Wasserstein distance of the body HU distribution from the nearest CT of the site's HU reference "
        "(dosimetry.hu_reference; only with a reference). It is at most the voxel MAE against that CT (SynthRAD2025 "
        "best MAE 65 HU) and usually far below it. Measured on phantoms against a 3-CT phantom reference: held-out "
        "CTs 6-19 HU, head with half the brain as fat 41 HU, with 88 % 59 HU, all soft tissue -120 HU 91 HU, no "
        "bone 139 HU (head) and 53 HU (pelvis); the composition checks judge those cases too")
    input_envelope_level: Limit = _limit(
        0.5, 1.5, False, "level",
        "the input guard (models.envelope, docs/models.md): 0 = the MR lies inside the training envelope of the "
        "model that made the sCT, 1 = a soft mismatch (an sCT from unfamiliar input is not signed without "
        "review), 2 = a hard mismatch that a route generated anyway (on_input_outside_envelope = \"mark\")")
    uncertainty_fraction_percent: Limit = _limit(
        5.0, 15.0, False, "% of body voxels", "share of the body where the model's ensemble disagrees")
    slice_coverage_missing_slices: Limit = _limit(
        0.0, 0.0, False, "slices", "the sCT must have every MR slice at the MR's position (planning uses the MR's "
                                   "geometry; a missing slice is missing anatomy)")
    field_of_view_truncated_percent: Limit = _limit(
        0.0, 50.0, False, "% of body slices",
        "body touching the in-plane image border: tissue outside the field of view is missing from the sCT, so "
        "depths of lateral beams are too short")
    out_of_range_fraction_percent: Limit = _limit(
        0.0, 0.1, False, "% of voxels", "values outside [-1024, 3071] HU are invalid")


#: Threshold names of checks that were replaced, with what replaced them (a clear error instead of "unknown").
_REPLACED = {
    "soft_tissue_mean_hu_deviation": (
        "the soft-tissue check now judges the body histogram's soft-tissue peak, not the mean of the voxels already "
        "in the soft-tissue window; use soft_tissue_peak_hu_deviation (docs/qa.md)"),
}


def thresholds_from_mapping(overrides: dict, base: QaThresholds | None = None) -> QaThresholds:
    """Thresholds with some limits replaced, e.g. from a TOML table.

    Parameters
    ----------
    overrides : dict
        ``{check: {"pass_limit": x, "fail_limit": y}}`` for any field of :class:`QaThresholds`;
        either limit may be left out.
    base : QaThresholds or None
        What is not overridden (default: the published defaults).

    Raises
    ------
    DosimetryError
        For an unknown check or key, a non-numeric limit, or limits in the wrong order.
    """
    import dataclasses

    base = base or QaThresholds()
    known = {f.name for f in dataclasses.fields(QaThresholds)}
    changes = {}
    for name, values in overrides.items():
        if name in _REPLACED:
            raise DosimetryError(f"QA threshold {name!r} no longer exists: {_REPLACED[name]}")
        if name not in known:
            raise DosimetryError(f"unknown QA threshold {name!r}; known: {', '.join(sorted(known))}")
        if not isinstance(values, dict) or not set(values) <= {"pass_limit", "fail_limit"} or not values:
            raise DosimetryError(f"QA threshold {name!r} takes pass_limit and/or fail_limit; found {values!r}")
        current = getattr(base, name)
        try:
            limits = {key: float(value) for key, value in values.items()}
        except (TypeError, ValueError):
            raise DosimetryError(f"QA threshold {name!r}: limits must be numbers; found {values!r}") from None
        changes[name] = Limit(limits.get("pass_limit", current.pass_limit), limits.get("fail_limit", current.fail_limit),
                              current.higher_is_better, current.unit, current.source + " (overridden locally)")
    return dataclasses.replace(base, **changes)
