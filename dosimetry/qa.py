"""The QA of one synthetic CT: HU checks, geometry, image metrics, dose comparison, verdict.

Steps (every measurement and threshold ends up in ``qa.json``):

1. HU checks inside the body (always): tissue fractions, values outside
   [-1024, 3071]; tissue plausibility (:mod:`dosimetry.tissue_composition`):
   the soft-tissue peak of the body histogram, the fat share against the
   site's limits, bone in every body slice; with a site HU reference
   (:mod:`dosimetry.hu_reference`), the distance of the body HU distribution
   from the nearest reference CT.
2. Geometry: the sCT outline against the MR body outline (Dice, 95th
   percentile surface distance), field-of-view truncation, slice coverage.
3. Uncertainty (when the model produced a map): share of the body above the level.
4. Image metrics against a real CT on the same grid (commissioning only).
5. Dose: the plan (a real RT Plan, or the site's template on the target or
   body centroid) is computed on the sCT and on the reference — the real CT
   when there is one, otherwise a bulk-density version of the same sCT (body
   water, bone 323.7 HU) — on a dose grid of ``dose_grid_mm``; then gamma and
   DVH differences per structure. The dose on a real CT does not need the
   sCT: :func:`reference_dose` computes it beforehand (the node does, while
   the model works) and ``QaInputs.reference_dose`` hands it to the QA.
6. Verdict: PASS/WARN/FAIL per check and overall (:mod:`dosimetry.verdict`).

References
----------
Bulk bone value: "Assessment of bulk density assignment for MR-only prostate
radiotherapy", Front. Oncol. 2019 (00997): bone 323.7 HU, tissue -32.7 HU
fitted best; here the body is water (0 HU) as in routine MRI-only checks.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dosimetry._grids import xyz_floats
from dosimetry.beam import ARC_GANTRY_BIN_DEG, Beam, beams_from_plan
from dosimetry.coverage import field_of_view_truncation, slice_coverage
from dosimetry.density import relative_electron_density_volume
from dosimetry.dose_sampling import DEFAULT_DOSE_GRID_MM
from dosimetry.dvh import compare_dvh_metrics, dvh_from_samples, dvh_metrics
from dosimetry.engine import compute_dose_and_points
from dosimetry.errors import DosimetryError
from dosimetry.gamma import gamma_volumes
from dosimetry.hu_reference import HuReference, hu_quantiles
from dosimetry.hu_statistics import hu_statistics
from dosimetry.image_metrics import image_metrics
from dosimetry.outline import body_outline_agreement, sct_body_outline
from dosimetry.plans import PhotonPlan, template_plan
from dosimetry.qa_result import (
    CompositionMeasurement,
    DoseComparison,
    DvhCurve,
    GammaSummary,
    GuardJudgement,
    HuReferenceDistance,
    Normalisation,
    QaMaps,
    QaRecord,
    QaResult,
    StructureDvh,
)
from dosimetry.structures import StructureMask
from dosimetry.tissue_composition import SLICE_BONE_MIN_PERCENT, tissue_composition
from dosimetry.uncertainty import uncertainty_region
from dosimetry.verdict import Check, QaThresholds, Verdict, judge, overall
from models.volume import Volume

__all__ = ["QaInputs", "ReferenceDose", "dose_grid_image", "input_envelope_check", "is_target", "reference_dose",
           "run_qa"]

logger = logging.getLogger(__name__)

BULK_BONE_HU = 323.7
BONE_FROM_HU = 200.0
#: The soft-tissue peak is judged by its distance from this typical value: brain white matter about 30,
#: grey matter about 40, muscle 40-50 HU (Bushberg et al. 2012; Schneider et al. 2000).
SOFT_TISSUE_EXPECTED_HU = 35.0
#: Sites the QA knows (template plans and the fat share's limits).
SITES = ("pelvis", "head")
#: Dose points of each DVH curve kept for the report (0 to 102 % of the highest dose).
DVH_CURVE_POINTS = 201
#: Sub-voxel points per axis in plane at structure boundaries for the DVHs (StructureMask.dose_samples).
STRUCTURE_SUPERSAMPLING = 4
#: The thresholds a QA judges by unless given others: the documented defaults (QaThresholds is frozen).
DEFAULT_THRESHOLDS = QaThresholds()


@dataclass(frozen=True)
class QaInputs:
    """What the QA of one sCT can use; only ``sct`` is required."""

    sct: Volume
    site: str = "pelvis"
    mr_body_mask: np.ndarray | None = None
    #: The MR's geometry (its array is not used): judged for slice coverage when given.
    mr_grid: Volume | None = None
    reference_ct: Volume | None = None
    plan: PhotonPlan | None = None
    structures: tuple[StructureMask, ...] = ()
    uncertainty_hu: Volume | None = None
    uncertainty_level_hu: float = 100.0
    prescription_gy: float = 2.0
    dose_grid_mm: float = DEFAULT_DOSE_GRID_MM
    compute_dose: bool = True
    #: The input guard's judgement of the MR for the model that made the sCT: (verdict, reasons) with verdict
    #: ok, soft, hard or unjudged (models.envelope.GuardResult). None or unjudged: no input_envelope check.
    input_guard: tuple[str, tuple[str, ...]] | None = None
    #: Real CTs of the site (dosimetry.hu_reference): adds the hu_distribution check. None: not run.
    hu_reference: HuReference | None = None
    #: The plan's dose on ``reference_ct``, computed before the sCT existed (:func:`reference_dose`). Used only
    #: when it was computed for these inputs (:meth:`ReferenceDose.mismatch`); otherwise the QA computes it.
    reference_dose: ReferenceDose | None = None


@dataclass(frozen=True, eq=False)
class _DoseSetup:
    """What both doses of the dose checks are computed with: the plan, its beams, the dose grid's zoom, and the
    points at which each evaluated structure's DVH samples the dose (the plan's isocentre last)."""

    plan: PhotonPlan
    beams: tuple[Beam, ...]
    zoom: np.ndarray
    #: (role, structure) of each structure with a voxel: targets first, then organs.
    evaluated: tuple[tuple[str, StructureMask], ...]
    #: Each evaluated structure's weights of its dose samples (StructureMask.dose_samples).
    weights: tuple[np.ndarray, ...]
    points_mm: np.ndarray
    #: Where each structure's points start and end in ``points_mm``.
    bounds: np.ndarray


@dataclass(frozen=True, eq=False)
class ReferenceDose:
    """The plan's dose on a real CT, computed before the sCT exists; see :func:`reference_dose`.

    ``dose_gy`` and ``points_gy`` are unscaled: the QA normalises both doses afterwards, as it does its own.
    """

    setup: _DoseSetup
    dose_gy: Volume
    #: The dose at ``setup.points_mm``.
    points_gy: np.ndarray
    # What it was computed for (checked by mismatch()).
    grid: Volume
    body: np.ndarray
    reference_ct: Volume
    plan: PhotonPlan | None
    structures: tuple[StructureMask, ...]
    site: str
    dose_grid_mm: float
    prescription_gy: float

    def mismatch(self, inputs: QaInputs, body: np.ndarray) -> str | None:
        """Why this dose was not computed for these QA inputs; None when it was (then it is what the QA would
        compute itself, bit for bit).

        The same objects are required for the reference CT, the plan and the structures; the same body mask
        (values); and exactly the sCT's grid: the geometry the plan's template and the sample points come from.
        """
        sct = inputs.sct
        checks = (
            (inputs.reference_ct is self.reference_ct, "another reference CT"),
            (inputs.plan is self.plan, "another plan"),
            (len(inputs.structures) == len(self.structures)
             and all(a is b for a, b in zip(inputs.structures, self.structures, strict=True)), "other structures"),
            ((inputs.site, inputs.dose_grid_mm, inputs.prescription_gy)
             == (self.site, self.dose_grid_mm, self.prescription_gy), "another site, dose grid or prescription"),
            (sct.shape == self.grid.shape and sct.spacing_mm == self.grid.spacing_mm
             and sct.origin_mm == self.grid.origin_mm and np.array_equal(sct.direction, self.grid.direction),
             "another grid than the sCT's"),
            (body is self.body or (body.shape == self.body.shape and np.array_equal(body, self.body)),
             "another body mask"),
        )
        return next((why for same, why in checks if not same), None)


def reference_dose(grid: Volume, body: np.ndarray, reference_ct: Volume, *, site: str = "pelvis",
                   plan: PhotonPlan | None = None, structures: tuple[StructureMask, ...] = (),
                   dose_grid_mm: float = DEFAULT_DOSE_GRID_MM, prescription_gy: float = 2.0) -> ReferenceDose:
    """The plan's dose on a real CT, before the sCT exists: what :func:`run_qa` computes as its reference.

    Parameters
    ----------
    grid : Volume
        The image grid the sCT will have (the MR's); only its geometry is used.
    body : numpy.ndarray
        The MR body mask the QA will be given (``QaInputs.mr_body_mask``): it places the template plan.
    reference_ct : Volume
        The real CT on that grid (``QaInputs.reference_ct``).
    site, plan, structures, dose_grid_mm, prescription_gy
        As the QA will be given them (:class:`QaInputs`).

    Returns
    -------
    ReferenceDose
        For ``QaInputs.reference_dose``; the QA uses it only for the inputs it was computed for.

    Raises
    ------
    DosimetryError
        As the QA would for the same inputs (e.g. a plan whose isocentre lies outside the image).
    """
    setup = _dose_setup(grid, body, site, plan, structures, dose_grid_mm, prescription_gy)
    dose, points = _dose_on(reference_ct, setup)
    return ReferenceDose(setup, dose, points, grid=grid, body=body, reference_ct=reference_ct, plan=plan,
                         structures=tuple(structures), site=site, dose_grid_mm=dose_grid_mm,
                         prescription_gy=prescription_gy)


def _dose_setup(image: Volume, body: np.ndarray, site: str, plan: PhotonPlan | None,
                structures: tuple[StructureMask, ...], dose_grid_mm: float, prescription_gy: float) -> _DoseSetup:
    """The plan (the given one, or the site's template on the targets or the body), checked against the image,
    and where its dose is computed and sampled."""
    targets, organs = _structure_roles(structures)
    plan = plan if plan is not None else _template_for(image, site, prescription_gy, body, targets)
    _require_isocentres_in_image(plan, image)
    # DVHs from the dose at each structure voxel of the image grid, read from the beams' 2 mm beam's-eye-view
    # doses (dosimetry.dose_sampling), never from structures down-sampled to the dose grid; the isocentre last.
    evaluated = tuple((role, structure) for role, group in (("target", targets), ("organ", organs))
                      for structure in group if structure.mask.any())
    samples = [structure.dose_samples(STRUCTURE_SUPERSAMPLING) for _, structure in evaluated]
    points = [image.index_to_patient(index) for index, _ in samples]
    bounds = np.cumsum([0] + [len(p) for p in points])
    points_mm = np.concatenate(points + [np.asarray([plan.isocentre_mm], dtype=np.float64)])
    return _DoseSetup(plan, tuple(beams_from_plan(plan, gantry_bin_deg=ARC_GANTRY_BIN_DEG)),
                      _dose_grid_zoom(image, dose_grid_mm), evaluated, tuple(w for _, w in samples), points_mm,
                      bounds)


def _dose_on(image_hu: Volume, setup: _DoseSetup) -> tuple[Volume, np.ndarray]:
    """The plan's dose on an image (HU), on the dose grid, and at the setup's points."""
    return compute_dose_and_points(relative_electron_density_volume(_resample(image_hu, setup.zoom, order=1)),
                                   setup.beams, setup.points_mm)


_GUARD_LEVELS = {"ok": 0.0, "soft": 1.0, "hard": 2.0}


def _hu_distribution_check(sct: Volume, body: np.ndarray, site: str, reference: HuReference,
                           thresholds: QaThresholds) -> tuple[Check, HuReferenceDistance]:
    """Distance of the body HU distribution from the nearest CT of the site's reference (dosimetry.hu_reference)."""
    if reference.site != site:
        raise DosimetryError(f"the HU reference is for site {reference.site!r} but the QA runs for {site!r}: "
                             "configure the reference built from CTs of this site")
    distance, nearest = reference.nearest(hu_quantiles(sct, body))
    measured = HuReferenceDistance(float(distance), str(nearest), len(reference.case_ids),
                                   tuple(float(v) for v in reference.leave_one_out_hu()), str(reference.source))
    return judge("hu_distribution", distance, thresholds.hu_distribution_distance_hu,
                 f"body HU distribution distance from the nearest of {len(reference.case_ids)} reference CT(s) "
                 f"({nearest})"), measured


def input_envelope_check(guard: tuple[str, tuple[str, ...]], thresholds: QaThresholds = DEFAULT_THRESHOLDS) -> Check:
    """The input guard's verdict as a check: an sCT made from input unlike the training data cannot PASS.

    Also the one check of the notice a node sends when its guard refused a series (sct_node.report.refusal).
    """
    verdict, reasons = guard
    check = judge("input_envelope", _GUARD_LEVELS[verdict], thresholds.input_envelope_level,
                  "input guard level (0 inside the training envelope, 1 soft, 2 hard mismatch)")
    if check.verdict != Verdict.PASS:
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        check = dataclasses.replace(check, reason=f"the MR lies outside the model's training envelope ({verdict} "
                                                  f"mismatch): {shown}")
    return check


def run_qa(inputs: QaInputs, thresholds: QaThresholds = DEFAULT_THRESHOLDS) -> QaRecord:
    """Run every applicable QA step (see the module docstring).

    Returns
    -------
    QaRecord
        The typed result (a step that did not run is None) and the maps a report draws; write it with
        :func:`dosimetry.qa_result.write_qa`.

    Raises
    ------
    DosimetryError
        For inputs on different grids or without a body.
    """
    sct = inputs.sct
    if inputs.site not in SITES:
        raise DosimetryError(f"QA site must be one of {', '.join(SITES)}; found {inputs.site!r}")
    body = inputs.mr_body_mask if inputs.mr_body_mask is not None else sct_body_outline(sct)
    if body.shape != sct.shape:
        raise DosimetryError(f"MR body mask shape {body.shape} differs from the sCT grid {sct.shape}")
    if not body.any():
        raise DosimetryError("the body mask is empty: nothing to check")
    checks: list[Check] = []
    measured: dict = {}

    stats = hu_statistics(sct, body)
    measured["hu"] = stats
    checks.append(judge("out_of_range", 100.0 * stats.invalid_fraction, thresholds.out_of_range_fraction_percent,
                        "voxels outside [-1024, 3071] HU or not finite"))
    checks.append(judge("bone_fraction", stats.tissue("bone").percent, thresholds.bone_fraction_percent,
                        f"bone (>= {BONE_FROM_HU:g} HU) inside the body"))
    composition_checks, measured["composition"] = _composition_checks(sct, body, inputs.site, thresholds)
    checks.extend(composition_checks)
    if inputs.hu_reference is not None:
        check, measured["hu_reference"] = _hu_distribution_check(sct, body, inputs.site, inputs.hu_reference,
                                                                 thresholds)
        checks.append(check)

    if inputs.mr_body_mask is not None:
        agreement = body_outline_agreement(sct, inputs.mr_body_mask)
        measured["outline"] = agreement
        checks.append(judge("body_dice", agreement.dice, thresholds.body_dice, "sCT vs MR body outline Dice"))
        # One voxel of disagreement is partial volume, not error: judge the distance beyond one in-plane voxel.
        voxel_mm = max(sct.spacing_mm[0], sct.spacing_mm[1])
        checks.append(judge("body_surface_distance_95", max(agreement.surface_distance_95_mm - voxel_mm, 0.0),
                            thresholds.body_surface_distance_95_mm,
                            f"sCT vs MR outline 95th percentile distance beyond one voxel ({voxel_mm:g} mm)"))
    if inputs.mr_grid is not None:
        coverage = slice_coverage(sct, inputs.mr_grid, tolerance_mm=0.01 * min(inputs.mr_grid.spacing_mm))
        measured["slice_coverage"] = coverage
        missing = len(coverage.mr_slices_without_sct) + (0 if coverage.in_plane_grid_matches else coverage.mr_slice_count)
        checks.append(judge("slice_coverage", missing, thresholds.slice_coverage_missing_slices,
                            "MR slices without an sCT slice at the same position and in-plane grid"))
    truncation = field_of_view_truncation(body)
    measured["field_of_view"] = truncation
    checks.append(judge("field_of_view", 100.0 * truncation.truncated_slice_fraction,
                        thresholds.field_of_view_truncated_percent,
                        "body slices touching the in-plane image border (truncated field of view)"))

    if inputs.uncertainty_hu is not None:
        region = uncertainty_region(inputs.uncertainty_hu, body, inputs.uncertainty_level_hu, sct)
        measured["uncertainty"] = region
        checks.append(judge("uncertainty", region.percent_above, thresholds.uncertainty_fraction_percent,
                            f"body voxels with ensemble std above {inputs.uncertainty_level_hu:g} HU"))

    if inputs.reference_ct is not None:
        metrics = image_metrics(inputs.reference_ct, sct, body)
        measured["image_metrics"] = metrics
        checks.append(judge("mae_body", metrics.mae_hu, thresholds.mae_body_hu, "MAE inside the body vs the real CT"))

    if inputs.input_guard is not None and inputs.input_guard[0] in _GUARD_LEVELS:
        verdict, reasons = inputs.input_guard
        measured["input_guard"] = GuardJudgement(str(verdict), tuple(str(r) for r in reasons))
        checks.append(input_envelope_check(inputs.input_guard, thresholds))
    # What the report draws besides the dose: the outline the checks used and the uncertainty map.
    maps = QaMaps(body_mask=body, uncertainty_hu=None if inputs.uncertainty_hu is None
                  else inputs.uncertainty_hu.array.astype(np.float32))
    if inputs.compute_dose:
        dose_checks, measured["dose"], maps = _dose_checks(inputs, body, thresholds, maps)
        checks.extend(dose_checks)
    verdict, reasons = overall(checks)
    return QaRecord(QaResult(verdict, reasons, tuple(checks), site=inputs.site, **measured), maps)


def _composition_checks(sct: Volume, body: np.ndarray, site: str,
                        thresholds: QaThresholds) -> tuple[list[Check], CompositionMeasurement]:
    """Soft-tissue peak, fat share (site limits) and bone per slice (:mod:`dosimetry.tissue_composition`)."""
    composition = tissue_composition(sct, body)
    peak = composition.soft_tissue_peak_hu
    shown = "none" if np.isnan(peak) else f"{peak:.0f} HU"
    fat_limit = thresholds.fat_share_head_percent if site == "head" else thresholds.fat_share_pelvis_percent
    missing = composition.slices_without_bone
    where = f"; slices without bone: {_index_ranges(missing)}" if missing else ""
    return [
        judge("soft_tissue_peak", abs(peak - SOFT_TISSUE_EXPECTED_HU), thresholds.soft_tissue_peak_hu_deviation,
              f"soft-tissue peak of the body histogram {shown}, deviation from {SOFT_TISSUE_EXPECTED_HU:g} HU"),
        judge("fat_share", composition.fat_share_percent, fat_limit,
              f"fat (-190...-30 HU) in a {site}"),
        judge("bone_slices", composition.bone_slice_percent, thresholds.bone_slices_percent,
              f"body slices holding bone (>= {BONE_FROM_HU:g} HU in >= {SLICE_BONE_MIN_PERCENT:g} % of the "
              f"section{where})"),
    ], CompositionMeasurement(site, SOFT_TISSUE_EXPECTED_HU, composition)


def _index_ranges(indices: tuple[int, ...]) -> str:
    """``(0, 1, 2, 7)`` as ``"0-2, 7"``."""
    ranges: list[list[int]] = []
    for k in indices:
        if ranges and k == ranges[-1][1] + 1:
            ranges[-1][1] = k
        else:
            ranges.append([k, k])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in ranges)


def is_target(structure: StructureMask) -> bool:
    """A target (PTV/CTV/GTV by RT ROI Interpreted Type, or a name holding PTV): the QA's and the report's rule."""
    return structure.interpreted_type.upper() in ("PTV", "CTV", "GTV") or "PTV" in structure.name.upper()


def _structure_roles(structures: tuple[StructureMask, ...]) -> tuple[list[StructureMask], list[StructureMask]]:
    """(targets, organs at risk): PTV/CTV/GTV by interpreted type or a name holding PTV; outlines and bones are
    neither."""
    targets = [s for s in structures if is_target(s)]
    organs = [s for s in structures if s not in targets and s.interpreted_type not in ("EXTERNAL",)
              and s.name.upper() not in ("BODY", "EXTERNAL", "BONES", "BONE")]
    return targets, organs


def _template_for(sct: Volume, site: str, prescription_gy: float, body: np.ndarray,
                  targets: list[StructureMask]) -> PhotonPlan:
    """The site's template on the target, or a central 6 cm field on the body centroid when there is none."""
    region = targets[0].mask if targets else body
    index = np.argwhere(region)
    centre_index = index.mean(axis=0)[::-1]  # (x, y, z)
    extent_mm = (index.max(axis=0) - index.min(axis=0) + 1)[::-1] * np.asarray(sct.spacing_mm)
    if not targets:  # no target: a central 6 cm field, not the whole body
        extent_mm = np.minimum(extent_mm, 60.0)
    return template_plan(site, tuple(sct.index_to_patient(centre_index)), tuple(extent_mm),
                         prescription_gy=prescription_gy)


#: A point normalisation needs a point in the high-dose region (ICRU 50's reference point): below this share of
#: the maximum the isocentre lies in a gradient or outside the fields.
NORMALISATION_POINT_MIN_SHARE = 0.8


def _normalise(plan: PhotonPlan, prescription: float, maximum: float, isocentre_dose: float,
               target: tuple[np.ndarray, np.ndarray, str] | None) -> tuple[float, Normalisation]:
    """(scale, record): the factor that puts the prescription at the plan's normalisation point or volume.

    The reference dose per fraction is made the prescription at a defined place: the median dose of the target
    when there is one (ICRU 83's D50%), else the isocentre (ICRU 50's reference point), which must lie in the
    high dose (at least ``NORMALISATION_POINT_MIN_SHARE`` of the maximum). A template plan has no MU of its
    own: the scale becomes its MU. A real plan keeps its MU, and its dose is scaled the same way, because the
    engine's calibration (1 cGy/MU at d_max, 10 x 10 cm, SSD 100 cm) is not that of the plan's machine (many
    are calibrated at 10 cm depth): the record keeps the factor, which compares the engine with the planning
    system. A real plan with neither a target nor an isocentre in the high dose is left unscaled.
    """
    target_name = None
    if target is not None:  # the target's reference doses, sample weights and name
        target_reference, target_weights, target_name = target
        where, point = f"median dose of {target_name}", None
        value = dvh_from_samples(target_reference, 1.0, target_name,  # D50% as reported
                                 target_weights).dose_at_volume_percent(50.0)
    else:
        where, point, value = "isocentre", plan.isocentre_mm, isocentre_dose
    usable = value > 0 and (target is not None or value >= NORMALISATION_POINT_MIN_SHARE * maximum)
    if plan.is_template and not usable:
        raise DosimetryError(f"plan {plan.label!r}: the reference dose at the {where} is {value:.3g} Gy, "
                             f"{100 * value / max(maximum, 1e-12):.0f} % of its maximum: not a place to normalise "
                             "the plan to (give a structure set with the target)")
    scale = prescription / value if usable else 1.0
    if plan.is_template:
        method = f"template: MU that put the prescription at the {where}"
    elif usable:
        method = (f"real plan: its dose scaled by {scale:.3f} to put the prescription at the {where} (its MU are "
                  "for its own machine's calibration, not the engine's)")
    else:
        method = f"real plan: its own MU with the engine's calibration (the {where} is not in the high dose)"
    return scale, Normalisation(
        method=method, at=where, structure=target_name,
        point_mm=xyz_floats(point) if point is not None else None,
        reference_dose_gy=float(value * scale), prescription_gy=float(prescription),
        percent_of_prescription=float(100.0 * value * scale / prescription), dose_scale=float(scale),
        percent_of_maximum=float(100.0 * value / max(maximum, 1e-12)))


#: The gamma comparison the QA judges: global 2 %/2 mm above 10 % of the reference maximum (Hussein et al. 2017).
GAMMA_DOSE_PERCENT, GAMMA_DISTANCE_MM, GAMMA_CUTOFF_PERCENT, GAMMA_MAX = 2.0, 2.0, 10.0, 2.0


def _dose_checks(inputs: QaInputs, body: np.ndarray, thresholds: QaThresholds,
                 maps: QaMaps) -> tuple[list[Check], DoseComparison, QaMaps]:
    sct = inputs.sct
    precomputed = inputs.reference_dose
    why = precomputed.mismatch(inputs, body) if precomputed is not None else None
    if precomputed is not None and why is None:
        setup, dose_reference, reference_points = precomputed.setup, precomputed.dose_gy, precomputed.points_gy
    else:
        if precomputed is not None:
            logger.debug("the reference dose computed beforehand is not used (%s); computing it", why)
        setup = _dose_setup(sct, body, inputs.site, inputs.plan, inputs.structures, inputs.dose_grid_mm,
                            inputs.prescription_gy)
        dose_reference, reference_points = _dose_on(
            inputs.reference_ct if inputs.reference_ct is not None else _bulk(sct, body), setup)
    plan = setup.plan
    prescription = plan.prescription_gy / max(plan.fractions, 1) if (plan.prescription_gy and not plan.is_template) \
        else inputs.prescription_gy
    grid = _resample(sct, setup.zoom, order=1)
    body_grid = _resample_mask(body, setup.zoom, grid.shape)
    reference_name = "real CT" if inputs.reference_ct is not None else "bulk-density sCT"
    dose_sct, sct_points = compute_dose_and_points(relative_electron_density_volume(grid), setup.beams,
                                                   setup.points_mm)
    limits = {"target": thresholds.target_dvh_difference_percent, "organ": thresholds.oar_dvh_difference_percent}
    bounds = setup.bounds
    sampled = [(role, limits[role], structure, reference_points[bounds[i]:bounds[i + 1]],
                sct_points[bounds[i]:bounds[i + 1]], setup.weights[i])
               for i, (role, structure) in enumerate(setup.evaluated)]
    target = next(((s[3], s[5], s[2].name) for s in sampled if s[0] == "target"), None)
    scale, normalisation = _normalise(plan, prescription, float(dose_reference.array.max()),
                                      float(reference_points[-1]), target)
    if scale != 1.0:
        if plan.is_template:  # its MU become those that deliver the prescription; a real plan keeps its own
            plan = plan.with_monitor_units_scaled(scale, normalisation.at, normalisation.point_mm)
        dose_sct = dose_sct.with_array(dose_sct.array * scale)
        dose_reference = dose_reference.with_array(dose_reference.array * scale)
        sampled = [(role, limit, structure, ref * scale, ev * scale, weights)
                   for role, limit, structure, ref, ev, weights in sampled]
    gamma = gamma_volumes(dose_reference, dose_sct, GAMMA_DOSE_PERCENT, GAMMA_DISTANCE_MM,
                          lower_percent_dose_cutoff=GAMMA_CUTOFF_PERCENT, max_gamma=GAMMA_MAX)
    difference = dose_sct.array - dose_reference.array
    # The largest difference where gamma looks (reference dose >= its 10 % cut-off) and both doses exist: at the
    # skin a voxel that is air on one image and tissue on the other holds dose on one side only (100 % apart),
    # which is the outline check's business, not a dose difference.
    region = body_grid & (dose_reference.array >= GAMMA_CUTOFF_PERCENT / 100 * float(dose_reference.array.max())) \
        & (dose_sct.array > 0) & (dose_reference.array > 0)
    in_body = difference[region] if region.any() else np.zeros(1)
    largest = int(np.argmax(np.abs(in_body)))
    checks = [judge("gamma", gamma.pass_rate_percent, thresholds.gamma_pass_rate_percent,
                    f"gamma {GAMMA_DOSE_PERCENT:g}%/{GAMMA_DISTANCE_MM:g} mm pass rate, sCT vs {reference_name}")]
    dvh: list[StructureDvh] = []
    curves: list[DvhCurve] = []
    top = max(float(dose_sct.array.max()), float(dose_reference.array.max()), 1e-9) * 1.02
    bins = np.linspace(0.0, top, DVH_CURVE_POINTS)
    voxel_cc = float(np.prod(sct.spacing_mm)) / 1000.0
    for role, limit, structure, reference_doses, sct_doses, weights in sampled:
        reference_dvh = dvh_from_samples(reference_doses, voxel_cc, structure.name, weights)
        sct_dvh = dvh_from_samples(sct_doses, voxel_cc, structure.name, weights)
        reference_metrics, sct_metrics = dvh_metrics(reference_dvh, prescription), dvh_metrics(sct_dvh, prescription)
        curves.append(DvhCurve(structure.name, role, bins,
                               np.asarray([reference_dvh.volume_percent_at_dose(d) for d in bins]),
                               np.asarray([sct_dvh.volume_percent_at_dose(d) for d in bins])))
        compared = StructureDvh(role, compare_dvh_metrics(reference_metrics, sct_metrics))
        dvh.append(compared)
        worst = compared.worst
        checks.append(judge(f"dvh_{structure.name}", abs(worst.difference_percent_of_prescription), limit,
                            f"{structure.name} {worst.name} difference (sCT vs {reference_name})"))
    measured = DoseComparison(
        plan=plan, reference=reference_name, prescription_gy=float(prescription),
        grid_spacing_mm=xyz_floats(grid.spacing_mm), normalisation=normalisation,
        max_dose_sct_gy=float(dose_sct.array.max()), max_dose_reference_gy=float(dose_reference.array.max()),
        gamma=GammaSummary(float(gamma.pass_rate_percent), GAMMA_DOSE_PERCENT, GAMMA_DISTANCE_MM,
                           GAMMA_CUTOFF_PERCENT, "global", GAMMA_MAX),
        largest_difference_percent=float(in_body[largest] / prescription * 100), dvh=tuple(dvh))
    maps = dataclasses.replace(
        maps, dose_sct_gy=dose_sct, dose_reference_gy=dose_reference,
        dose_difference_percent=dose_sct.with_array(difference / prescription * 100.0),
        gamma=dose_sct.with_array(gamma.gamma), dvh_curves=tuple(curves))
    return checks, measured, maps


def _require_isocentres_in_image(plan: PhotonPlan, image: Volume) -> None:
    """A plan whose isocentre lies outside the image belongs to another patient position (or patient)."""
    upper = np.asarray(image.shape[::-1], dtype=float) - 0.5
    for beam in plan.beams:
        for point in beam.control_points:
            index = image.patient_to_index(np.asarray(point.isocentre_mm, dtype=float))
            if np.any(index < -0.5) or np.any(index > upper):
                shown = ", ".join(f"{v:.1f}" for v in point.isocentre_mm)
                raise DosimetryError(f"plan {plan.label!r}: beam {beam.name} isocentre ({shown}) mm lies outside the "
                                     "image: the plan does not belong to this image's position")


def _bulk(sct: Volume, body: np.ndarray) -> Volume:
    hu = np.full(sct.shape, -1000.0, dtype=np.float32)
    hu[body] = 0.0
    hu[body & (sct.array >= BONE_FROM_HU)] = BULK_BONE_HU
    return sct.with_array(hu)


def dose_grid_image(image_hu: Volume, dose_grid_mm: float = DEFAULT_DOSE_GRID_MM) -> Volume:
    """An image (HU) resampled (linearly) onto the dose grid the QA computes on: ``dose_grid_mm`` spacing, never
    finer than the image's finest, same outer edges and orientation. ``sct-node dose`` uses it too."""
    return _resample(image_hu, _dose_grid_zoom(image_hu, dose_grid_mm), order=1)


def _dose_grid_zoom(image: Volume, dose_grid_mm: float) -> np.ndarray:
    return np.asarray(image.spacing_mm) / max(dose_grid_mm, min(image.spacing_mm))


def _resample(volume: Volume, zoom_xyz: np.ndarray, order: int) -> Volume:
    """The volume on a grid coarser by ``zoom`` (same origin corner and direction)."""
    factors = np.asarray(zoom_xyz)[::-1]  # (z, y, x)
    if np.allclose(factors, 1.0):
        return volume
    array = ndimage.zoom(volume.array.astype(np.float32), factors, order=order, mode="nearest", grid_mode=True)
    spacing = tuple(np.asarray(volume.spacing_mm) * np.asarray(volume.shape[::-1]) / np.asarray(array.shape[::-1]))
    # grid_mode keeps the outer voxel edges: the first centre moves by half the spacing change.
    shift_index = (np.asarray(spacing) / np.asarray(volume.spacing_mm) - 1.0) / 2.0
    origin = tuple(volume.index_to_patient(shift_index))
    return Volume(array, spacing, origin, volume.direction)


def _resample_mask(mask: np.ndarray, zoom_xyz: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    factors = np.asarray(zoom_xyz)[::-1]
    if np.allclose(factors, 1.0):
        return mask
    resampled = ndimage.zoom(mask.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True) >= 0.5
    return resampled[: shape[0], : shape[1], : shape[2]]
