"""The opening text pages: verdict and reasons, identifiers, the checks table, dose and image metrics."""

from __future__ import annotations

import datetime as _dt
import math

from matplotlib.figure import Figure

from dosimetry.qa_result import QaResult
from dosimetry.verdict import Check, Verdict
from sct_node.report.data import ReportData
from sct_node.report.pdf.layout import (
    _CONTENT_W_IN,
    _MARGIN_X_IN,
    _Block,
    _box,
    _Cell,
    _heading,
    _paragraph,
    _table,
    _text,
    _wrap,
)

_VERDICT_SHADE = {Verdict.PASS: None, Verdict.WARN: "0.85", Verdict.FAIL: "0.65"}
_VERDICT_MEANING = {
    Verdict.PASS: "every check is within its pass limit",
    Verdict.WARN: "at least one check lies between its pass and fail limits: review before use",
    Verdict.FAIL: "at least one check is beyond its fail limit: do not use without review",
}


def _summary_blocks(data: ReportData) -> list[_Block]:
    def title(figure: Figure, top_in: float) -> None:
        _text(figure, _MARGIN_X_IN, top_in, "Synthetic CT QA report", 18, bold=True)
        _text(figure, _MARGIN_X_IN, top_in - 0.36, "MRI-only radiotherapy: synthetic CT from MR, with dosimetric "
              "QA. Synthetic images — not for diagnosis.", 8.5)

    verdict = data.verdict

    def banner(figure: Figure, top_in: float) -> None:
        _box(figure, _MARGIN_X_IN, top_in - 0.05, _CONTENT_W_IN, 0.7, _VERDICT_SHADE[verdict], linewidth=1.2)
        _text(figure, _MARGIN_X_IN + 0.15, top_in - 0.4, f"VERDICT: {verdict}", 26, bold=True, va="center")
        _text(figure, _MARGIN_X_IN + 3.6, top_in - 0.4, "\n".join(_wrap(_VERDICT_MEANING[verdict], 3.4, 9)), 9,
              va="center")

    blocks = [_Block(0.65, title), _Block(0.85, banner)]
    reasons = list(data.qa.reasons)
    if reasons:
        blocks += _paragraph("Reasons:", 9, bold=True, space_after_in=0.02)
        for reason in reasons:
            blocks += _paragraph(reason, 8.5, indent_in=0.25, bullet="•")
    else:
        blocks += _paragraph("Reasons: none — every check passed.", 9)
    if data.reference_notes:  # reference data fetched from the PACS, or not (sct_node.node.retrieve)
        blocks += _paragraph("Reference data from the PACS:", 9, bold=True, space_after_in=0.02)
        for note in data.reference_notes:
            blocks += _paragraph(note, 8.5, indent_in=0.25, bullet="•")

    ids, card = data.identifiers, data.model_card
    rows = [("Patient name", ids.patient_name), ("Patient ID", ids.patient_id),
            ("Birth date", _dicom_date(ids.patient_birth_date)), ("Study date", _dicom_date(ids.study_date)),
            ("Study description", ids.study_description), ("Study Instance UID", ids.study_instance_uid),
            ("MR series", ids.mr_series_description), ("MR Series Instance UID", ids.mr_series_instance_uid),
            ("sCT series", ids.sct_series_description), ("sCT Series Instance UID", ids.sct_series_instance_uid),
            ("Frame of Reference UID", ids.frame_of_reference_uid),
            ("Model", f"{card.get('name', '')} {card.get('version', '')}".strip()),
            ("Model identity", card.get("identity", "")), ("Model content hash", card.get("content_hash", "")),
            ("Intended use", card.get("intended_use", "")), ("sct-node version", data.software_version),
            ("QA run", data.created.strftime("%Y-%m-%d %H:%M")),
            ("Report date", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"))]
    blocks.append(_heading("Identifiers"))
    blocks += _table([[_Cell(label, bold=True), _Cell(str(value) if value else "—")] for label, value in rows],
                     (1.8, _CONTENT_W_IN - 1.8))

    checks = data.qa.checks
    blocks.append(_heading(f"Checks ({len(checks)})"))
    if not checks:
        return blocks + _paragraph("No check was recorded in the QA result.")
    header = [_Cell(text, bold=True, shade="0.93") for text in
              ("Check", "Value", "PASS if", "FAIL if", "Verdict", "Source of the limits")]
    widths = (1.75, 1.0, 0.95, 0.95, 0.6, _CONTENT_W_IN - 5.25)
    rows_cells = []
    for check in checks:
        higher = check.higher_is_better
        rows_cells.append([
            _Cell(check.name, bold=True),
            _Cell(_check_value_text(check, data.qa)),
            _Cell(_limit_text("≥" if higher else "≤", check.pass_limit, check.unit)),
            _Cell(_limit_text("<" if higher else ">", check.fail_limit, check.unit)),
            _Cell(check.verdict.value, bold=True, shade=_VERDICT_SHADE[check.verdict]),
            _Cell(check.source or "—", size_pt=6.0),
        ])
    blocks += _table(rows_cells, widths, header)
    blocks.append(_Block(0.06, lambda figure, top_in: None))
    blocks += _paragraph("Verdicts are written out; WARN cells are shaded light grey and FAIL cells dark grey. "
                         "A value between the PASS and FAIL limits warns.", 7)
    return blocks + _dose_summary_blocks(data) + _dvh_table_blocks(data) + _image_metrics_blocks(data)


def _check_value_text(check: Check, qa: QaResult) -> str:
    """The measured value as the physicist reads it: DVH rows name their metric, the soft-tissue peak shows
    the peak itself besides its distance from the expected value, gamma its criteria."""
    value = _value_text(check.value, check.unit)
    dvh = qa.dose.dvh_of(check.name.removeprefix("dvh_")) if qa.dose and check.name.startswith("dvh_") else None
    if dvh is not None:
        return f"{dvh.worst.name} {dvh.worst.difference_percent_of_prescription:+.2f} % of prescription"
    if check.name == "soft_tissue_peak" and qa.composition is not None:
        peak = qa.composition.tissue.soft_tissue_peak_hu
        if math.isfinite(peak):
            return f"peak {peak:.0f} HU ({value} from {qa.composition.soft_tissue_expected_hu:g})"
        return "no soft-tissue peak"
    if check.name == "gamma" and qa.dose is not None:
        return f"{value} at {qa.dose.gamma.criteria_text}"
    return value


def _dose_summary_blocks(data: ReportData) -> list[_Block]:
    """What the dose comparison was: plan, normalisation and MU, maxima, the largest difference, gamma."""
    dose = data.qa.dose
    if dose is None:
        return []
    prescription = dose.prescription_gy
    norm = dose.normalisation
    where = f"{norm.at} ({', '.join(f'{v:.1f}' for v in norm.point_mm)} mm)" if norm.point_mm else norm.at
    rows = [("Plan", dose.plan.label + (" (template: not a clinical plan)" if dose.plan.is_template else "")),
            ("Reference dose", dose.reference),
            *((("Fraction group", f"{dose.plan.fraction_group_number} of the RT Plan"),)
              if dose.plan.fraction_group_number is not None else ()),
            *((("Plan notes", "; ".join(dose.plan.notes)),) if dose.plan.notes else ()),
            ("Prescription", f"{prescription:.3g} Gy per fraction"),
            ("Normalisation", (f"{norm.method}: reference dose at the {where} {norm.reference_dose_gy:.3f} Gy "
                               f"({norm.percent_of_prescription:.1f} % of prescription)"))]
    if dose.monitor_units:
        rows.append(("Monitor units", ", ".join(f"{name} {mu:.1f}" for name, mu in dose.monitor_units.items())
                     + " (engine calibration: 1 cGy/MU at d_max, 10 x 10 cm, SSD 100 cm)"))
    for value, label in ((dose.max_dose_sct_gy, "Maximum dose, sCT"),
                         (dose.max_dose_reference_gy, "Maximum dose, reference")):
        rows.append((label, f"{value:.3f} Gy ({100 * value / prescription:.1f} % of prescription)"))
    rows.append(("Largest dose difference", (f"{dose.largest_difference_percent:+.2f} % of prescription (sCT − "
                                             "reference, in the body where the reference dose is at least "
                                             f"{dose.gamma.low_dose_cutoff_percent:g} % of its maximum)")))
    gamma = dose.gamma
    rows.append(("Gamma pass rate", (f"{gamma.pass_rate_percent:.2f} % at {gamma.dose_percent:g} %/"
                                     f"{gamma.distance_mm:g} mm, {gamma.normalisation} dose difference, "
                                     f"{gamma.low_dose_cutoff_percent:g} % low-dose cut-off")))
    rows.append(("Dose grid", " x ".join(f"{v:.2f}" for v in dose.grid_spacing_mm) + " mm (DVHs: every structure "
                 "voxel of the image grid, boundary super-sampled)"))
    return [_heading("Dose comparison")] + _table([[_Cell(label, bold=True), _Cell(text)] for label, text in rows],
                                                  (1.8, _CONTENT_W_IN - 1.8))


_DVH_TABLE_METRICS = ("D98%", "D95%", "D50%", "D2%", "Dmean")


def _dvh_table_blocks(data: ReportData) -> list[_Block]:
    """D98, D95, D50, D2 and Dmean per structure: reference, sCT and difference in % of prescription."""
    if data.qa.dose is None or not data.qa.dose.dvh:
        return []
    reference = data.dose_reference_name or "reference"
    header = [_Cell(text, bold=True, shade="0.93") for text in
              ("Structure", "Metric", f"{reference} (Gy)", "sCT (Gy)", "sCT − reference (% of prescription)")]
    rows = []
    for structure in data.qa.dose.dvh:
        metrics = [m for m in structure.comparison.dose_differences if m.name in _DVH_TABLE_METRICS]
        for index, metric in enumerate(metrics):
            difference = metric.difference_percent_of_prescription
            rows.append([_Cell(structure.structure if index == 0 else "", bold=True), _Cell(metric.name),
                         _Cell(f"{metric.reference_gy:.3f}"), _Cell(f"{metric.evaluated_gy:.3f}"),
                         _Cell(f"{difference:+.2f} %" if abs(difference) >= 0.005 else "0.00 %")])
    return ([_heading("Dose-volume metrics")] + _table(rows, (1.6, 0.8, 1.3, 1.1, _CONTENT_W_IN - 4.8), header)
            + _paragraph("D98% near-minimum, D50% median, D2% near-maximum dose (ICRU 83); the checks judge each "
                         "structure's largest difference.", 7))


_TISSUE_NAMES = {"air": "air", "lung": "lung-like", "fat": "fat", "soft_tissue": "soft tissue", "bone": "bone"}


def _image_metrics_blocks(data: ReportData) -> list[_Block]:
    """MAE, mean error per tissue class (of the real CT), PSNR and SSIM, when a real CT was given."""
    metrics = data.qa.image_metrics
    if metrics is None:
        return []
    header = [_Cell(text, bold=True, shade="0.93") for text in
              ("Region", "MAE (HU)", "Mean error sCT − CT (HU)", "Voxels")]
    rows = [[_Cell("body", bold=True), _Cell(f"{metrics.mae_hu:.1f}"), _Cell("—"), _Cell(f"{metrics.mask_voxel_count:,}")]]
    for tissue in metrics.per_tissue:
        rows.append([_Cell(_TISSUE_NAMES.get(tissue.tissue.value, tissue.tissue.value)),
                     _Cell(_value_text(tissue.mae_hu, "", ".1f")),
                     _Cell(_value_text(tissue.mean_error_hu, "", "+.1f")), _Cell(f"{tissue.voxel_count:,}")])
    return ([_heading("Image metrics against the real CT")]
            + _table(rows, (1.6, 1.2, 2.0, _CONTENT_W_IN - 4.8), header)
            + _paragraph(f"PSNR {metrics.psnr_db:.1f} dB, SSIM {metrics.ssim:.3f}, inside the body; tissue classes "
                         "by the real CT's HU.", 7))


def _dicom_date(value: str) -> str:
    value = str(value or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def _value_text(value: float | None, unit: str, spec: str = ".4g") -> str:
    """A measured value; NaN (could not be measured) or None (not applicable) as "not measured"."""
    if value is None or math.isnan(value):
        return "not measured"
    return f"{value:{spec}} {unit}".strip()


def _limit_text(sign: str, value: float, unit: str) -> str:
    return f"{sign} {value:g} {unit}".strip()
