"""Typed QA results built by hand, for tests of what reads them (the PDF, the SR, the bundle).

Every value is made up for the test that uses it; the types are the ones :func:`dosimetry.qa.run_qa` returns,
so a report test cannot pass on a shape the QA never writes.
"""

from __future__ import annotations

import math

from dosimetry.dvh import DoseMetricDifference, DvhComparison, VolumeMetricDifference
from dosimetry.hu_statistics import HuStatistics, TissueFraction
from dosimetry.image_metrics import ImageMetrics, TissueError
from dosimetry.plans import template_plan
from dosimetry.qa_result import (
    CompositionMeasurement,
    DoseComparison,
    GammaSummary,
    Normalisation,
    QaResult,
    StructureDvh,
)
from dosimetry.tissue_classes import TissueClass
from dosimetry.tissue_composition import TissueComposition
from dosimetry.uncertainty import UncertaintyRegion
from dosimetry.verdict import Check, Verdict, overall

DVH_METRICS = ("D98%", "D95%", "D50%", "D2%", "Dmean", "Dmax")


def check(name: str, value: float | None, verdict: str, unit: str = "%", higher: bool = False,
          pass_limit: float = 2.0, fail_limit: float = 3.0, source: str = "") -> Check:
    """A check as judge() makes it; ``value`` None is a measurement that could not be made (NaN)."""
    return Check(name, math.nan if value is None else float(value), unit, Verdict(verdict), f"{name} is {verdict}",
                 pass_limit, fail_limit, higher, source or f"source of {name} (Author et al. 2020)")


def qa_result(checks: tuple[Check, ...], verdict: str | None = None, reasons: tuple[str, ...] | None = None,
              **measurements) -> QaResult:
    """A QaResult of ``checks`` with the verdict and reasons overall() gives them, unless stated."""
    worst, why = overall(checks) if checks else (Verdict.PASS, ())
    return QaResult(Verdict(verdict) if verdict else worst, why if reasons is None else tuple(reasons),
                    tuple(checks), **measurements)


def uncertainty(level_hu: float, percent_above: float) -> UncertaintyRegion:
    return UncertaintyRegion(level_hu, 10_000, int(100 * percent_above), percent_above / 100, 40.0, 180.0,
                             None, None, None, None)


def hu_statistics(percent: dict[str, float]) -> HuStatistics:
    """Body HU statistics with these tissue shares (percent by class name)."""
    fractions = tuple(TissueFraction(TissueClass(name), -1024.0, 3071.0, int(100 * share), share / 100)
                      for name, share in percent.items())
    return HuStatistics(10_000, fractions, 40.0, 700.0, 0, 0, 0, -1000.0, 1500.0, 0, 0.0)


def composition(site: str, soft_tissue_peak_hu: float, fat_peak_hu: float = -95.0, fat_share_percent: float = 30.0,
                bone_slice_percent: float = 100.0, slices_without_bone: tuple[int, ...] = ()) -> CompositionMeasurement:
    tissue = TissueComposition(soft_tissue_peak_hu, fat_peak_hu, (fat_peak_hu, soft_tissue_peak_hu),
                               fat_share_percent, bone_slice_percent, 91, slices_without_bone)
    return CompositionMeasurement(site, 35.0, tissue)


def structure_dvh(name: str, role: str, values: dict[str, tuple[float, float]],
                  prescription_gy: float = 2.0) -> StructureDvh:
    """DVH metrics of one structure from (reference, sCT) doses in Gy per metric name."""
    def metric(label: str) -> DoseMetricDifference:
        reference, evaluated = values[label]
        return DoseMetricDifference(label, reference, evaluated, evaluated - reference,
                                    100.0 * (evaluated - reference) / prescription_gy)

    d98, d95, d50, d2, dmean, dmax = (metric(label) for label in DVH_METRICS)
    return StructureDvh(role, DvhComparison(name, prescription_gy, d98, d95, d50, d2, dmean, dmax,
                                            VolumeMetricDifference("V95%", 99.0, 98.5, -0.5)))


def dose_comparison(dvh: tuple[StructureDvh, ...] = (), *, reference: str = "real CT", prescription_gy: float = 2.0,
                    largest_difference_percent: float = -9.8, gamma_pass_rate_percent: float = 97.3,
                    normalised_at: str = "median dose of PTV") -> DoseComparison:
    """A template four-field box normalised as the QA does, with these DVHs."""
    plan = template_plan("pelvis", (0.0, 0.0, 120.0), (50.0, 50.0, 50.0), prescription_gy=prescription_gy)
    plan = plan.with_monitor_units_scaled(0.652, normalised_at)
    structure = normalised_at.removeprefix("median dose of ") if normalised_at.startswith("median") else None
    normalisation = Normalisation(f"template: MU that put the prescription at the {normalised_at}", normalised_at,
                                  structure, None if structure else (0.0, 0.0, 120.0), prescription_gy,
                                  prescription_gy, 100.0, 0.652, 92.0)
    return DoseComparison(plan, reference, prescription_gy, (2.5, 2.5, 2.5), normalisation, 2.13, 2.1,
                          GammaSummary(gamma_pass_rate_percent, 2.0, 2.0, 10.0, "global", 2.0),
                          largest_difference_percent, dvh)


def image_metrics(mae_hu: float, psnr_db: float, ssim: float,
                  per_tissue: dict[str, tuple[float, float, int]]) -> ImageMetrics:
    """Image metrics with (MAE, mean error, voxels) per tissue class name."""
    return ImageMetrics(mae_hu, psnr_db, ssim, 10_000, tuple(
        TissueError(TissueClass(name), -1024.0, 3071.0, voxels, mae, mean)
        for name, (mae, mean, voxels) in per_tissue.items()))
