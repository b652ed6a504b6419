"""The physicist's QA report as a PDF, drawn with matplotlib without pyplot's global state.

The report is read from one :class:`~sct_node.report.data.ReportData` and laid
out on A4 portrait pages, in this order:

1. summary: the overall verdict and its reasons, the identifiers, and a table of
   every check (name, value, limits, verdict, source), flowing onto further
   pages when long, with the table header repeated;
2. MR, sCT and real CT (those present) in three planes with the body outline;
3. HU histogram inside the body with the expected tissue peaks, and the
   model's uncertainty map;
4. dose on the sCT with isodoses, dose difference and gamma maps;
5. DVH curves, reference solid and sCT dashed;
6. what the absent parts are and why, and the limitations of the QA.

Every page carries the verdict in its header and ``page i of n`` in its footer:
the pages are planned first (text is wrapped and paginated from measured font
metrics), then drawn. Verdicts are always written as words and shaded in grey,
and curves differ in line style, so a black-and-white print reads the same.
Images are displayed on their own voxel grids in millimetres along the grid
axes (``direction.T @ position``), so the coarser dose grid overlays the sCT
where it lies and thick slices are not squashed.

References
----------
W. Schneider, T. Bortfeld, W. Schlegel, "Correlation between CT numbers and
tissue parameters needed for Monte Carlo simulations of clinical dose
distributions", Phys. Med. Biol. 45:459-478 (2000) (HU of body tissues).
ICRU Report 44, "Tissue substitutes in radiation dosimetry and measurement"
(1989) (composition and density of the reference tissues).
D. A. Low et al., "A technique for the quantitative evaluation of dose
distributions", Med. Phys. 25:656-661 (1998) (gamma index).
DICOM PS3.3, Synthetic Data (0008,001C).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.textpath import TextToPath

from dosimetry.qa_result import QaResult
from dosimetry.verdict import Check, Verdict
from models.fileio import write_atomic
from models.volume import Volume
from sct_node.errors import InputError, OutputError
from sct_node.report.data import ReportData

__all__ = ["EXPECTED_TISSUE_PEAKS_HU", "render_report_pdf"]

#: Typical CT numbers (HU) of the tissues a body CT shows, marked on the histogram. Approximate values
#: from Schneider et al., Phys. Med. Biol. 45:459 (2000), for tissues of ICRU Report 44 composition;
#: the measured peaks shift with scanner, kVp and reconstruction.
EXPECTED_TISSUE_PEAKS_HU: tuple[tuple[str, float], ...] = (
    ("air", -1000.0),
    ("lung", -800.0),
    ("fat", -100.0),
    ("soft tissue", 40.0),
    ("cancellous bone", 350.0),
    ("cortical bone", 1200.0),
)

_PAGE_IN = (8.27, 11.69)  # A4 portrait
_MARGIN_X_IN = 0.55
_CONTENT_TOP_IN = 0.8  # below the page top, under the header
_CONTENT_BOTTOM_IN = 0.75  # above the page bottom, over the footer
_CONTENT_W_IN = _PAGE_IN[0] - 2 * _MARGIN_X_IN
_DPI = 150  # raster resolution of the images inside the PDF
_MAX_DISPLAY_PX = 256  # images are strided down to at most this many pixels a side for display
_CT_WINDOW_HU = (-1000.0, 1500.0)
_ISODOSE_PERCENT = (20.0, 50.0, 95.0)  # of prescription, drawn dotted, dashed, solid
_ISODOSE_STYLES = (":", "--", "-")
_ISODOSE_COLOURS = ("tab:blue", "tab:green", "tab:red")
_GAMMA_MAX = 2.0
_VERDICT_SHADE = {Verdict.PASS: None, Verdict.WARN: "0.85", Verdict.FAIL: "0.65"}
_VERDICT_MEANING = {
    Verdict.PASS: "every check is within its pass limit",
    Verdict.WARN: "at least one check lies between its pass and fail limits: review before use",
    Verdict.FAIL: "at least one check is beyond its fail limit: do not use without review",
}
_OUTLINE_COLOUR = "tab:orange"
_GRID_HSPACE = 0.45  # between rows of image panels, in units of a row's height
_RC = {
    "pdf.fonttype": 3,
    "font.family": "DejaVu Sans",
    "font.size": 7.0,
    "axes.titlesize": 7.0,
    "axes.labelsize": 6.5,
    "xtick.labelsize": 6.0,
    "ytick.labelsize": 6.0,
    "legend.fontsize": 6.5,
    "hatch.color": "black",
    "hatch.linewidth": 0.6,
    "image.interpolation": "nearest",
}
_PageDrawer = Callable[[Figure], None]
#: rc_context changes matplotlib's process-wide settings: one report is drawn at a time.
_RENDER_LOCK = threading.Lock()


def render_report_pdf(data: ReportData, path: Path) -> Path:
    """Write the QA report of one sCT as a PDF.

    Parameters
    ----------
    data : ReportData
        Everything the report shows; optional parts (MR, real CT, uncertainty, dose, DVH) that are
        ``None`` or empty are replaced by a sentence that says why they are absent.
    path : pathlib.Path
        The PDF to write. It is written to a temporary file in the same folder, fsynced and renamed
        into place, so ``path`` is either absent or complete. Missing parent folders are created.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If the volumes of ``data`` do not share the sCT grid (images, masks) or the dose grid's
        directions, or ``data.qa`` lacks its verdict or checks.
    OutputError
        If the folder or the file cannot be written.

    Notes
    -----
    PDF metadata: Title "sCT QA report", Subject the verdict, Creator "sct-node <version>"; the
    patient's name and ID are shown on the first page only, never in the metadata.
    """
    data = _require_consistent(data)
    path = Path(path)
    metadata = {"Title": "sCT QA report", "Subject": data.verdict,
                "Creator": f"sct-node {data.software_version}", "Keywords": "synthetic CT; QA; not for diagnosis"}
    with _RENDER_LOCK, matplotlib.rc_context(_RC):
        pages = _plan_pages(data)

        def write(stream) -> None:
            with PdfPages(stream, metadata=metadata) as pdf:
                for number, draw in enumerate(pages, start=1):
                    figure = Figure(figsize=_PAGE_IN)
                    draw(figure)
                    _draw_header_footer(figure, data, number, len(pages))
                    pdf.savefig(figure, dpi=_DPI)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, write, suffix=".pdf.tmp")
        except OSError as error:
            raise OutputError(f"cannot write the QA report {path}: {error.strerror or error}") from error
    return path


# --------------------------------------------------------------------------------------------- checks


def _require_consistent(data: ReportData) -> ReportData:
    """``data`` with a boolean body mask, or an InputError naming what does not fit."""
    if not isinstance(data.qa, QaResult):
        raise InputError(f"report data: qa must be a QaResult (dosimetry.qa_result.read_qa); found "
                         f"{type(data.qa).__name__}")
    grid = data.sct.shape
    named = [("body_mask", data.body_mask)] + [(f"structure {s.name!r}", s.mask) for s in data.structures]
    named += [(name, volume.array) for name, volume in
              (("mr", data.mr), ("reference_ct", data.reference_ct), ("uncertainty_hu", data.uncertainty_hu))
              if volume is not None]
    for name, array in named:
        if array is not None and tuple(np.shape(array)) != grid:
            raise InputError(f"report data: {name} has shape {tuple(np.shape(array))}; expected the sCT grid {grid}")
    if data.body_mask is not None and data.body_mask.dtype != bool:
        data = dataclasses.replace(data, body_mask=np.asarray(data.body_mask) != 0)
    if data.dose_sct_gy is None:
        return data
    if not np.allclose(data.dose_sct_gy.direction, data.sct.direction, atol=1e-6):
        raise InputError("report data: the dose grid's directions differ from the sCT's; "
                         "the dose must be computed on a grid aligned with the sCT")
    for name in ("dose_reference_gy", "dose_difference_percent", "gamma"):
        volume = getattr(data, name)
        if volume is not None and not volume.same_grid(data.dose_sct_gy):
            raise InputError(f"report data: {name} is not on the grid of dose_sct_gy "
                             f"(shape {volume.shape} vs {data.dose_sct_gy.shape})")
    return data


# ------------------------------------------------------------------------------------- text flow


@dataclass(frozen=True)
class _Block:
    """A piece of a text page: ``draw(figure, top_in)`` draws it with its top ``top_in`` above the page bottom."""

    height_in: float
    draw: Callable[[Figure, float], None]
    keep_with_next: bool = False
    #: A table's header row, repeated at the top of a page on which the table continues.
    repeat: _Block | None = None


@dataclass(frozen=True)
class _Cell:
    text: str
    size_pt: float = 7.5
    bold: bool = False
    shade: str | None = None


@functools.lru_cache(maxsize=16384)
def _width_in(text: str, size_pt: float, bold: bool) -> float:
    properties = FontProperties(family=_RC["font.family"], size=size_pt, weight="bold" if bold else "normal")
    width_pt, _, _ = _TEXT_TO_PATH.get_text_width_height_descent(text, properties, ismath=False)
    return 1.03 * width_pt / 72.0  # unhinted advance widths, as the PDF draws them, and a little slack


_TEXT_TO_PATH = TextToPath()


def _line_height_in(size_pt: float) -> float:
    return 1.3 * size_pt / 72.0


def _wrap(text: str, width_in: float, size_pt: float, bold: bool = False) -> list[str]:
    """Greedy word wrap from font metrics; a word wider than the line (a UID) is cut between characters."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _width_in(candidate, size_pt, bold) <= width_in:
                current = candidate
                continue
            if current:
                lines.append(current)
            while len(word) > 1 and _width_in(word, size_pt, bold) > width_in:
                cut = 1
                while cut < len(word) and _width_in(word[:cut + 1], size_pt, bold) <= width_in:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def _text(figure: Figure, x_in: float, y_in: float, text: str, size_pt: float, bold: bool = False,
          **kwargs) -> None:
    kwargs.setdefault("ha", "left")
    kwargs.setdefault("va", "top")
    figure.text(x_in / _PAGE_IN[0], y_in / _PAGE_IN[1], text, fontsize=size_pt,
                fontweight="bold" if bold else "normal", parse_math=False, **kwargs)


def _box(figure: Figure, x_in: float, top_in: float, width_in: float, height_in: float, shade: str | None,
         linewidth: float = 0.4) -> None:
    figure.add_artist(Rectangle((x_in / _PAGE_IN[0], (top_in - height_in) / _PAGE_IN[1]), width_in / _PAGE_IN[0],
                                height_in / _PAGE_IN[1], transform=figure.transFigure, facecolor=shade or "none",
                                edgecolor="0.45", linewidth=linewidth))


def _paragraph(text: str, size_pt: float = 8.5, bold: bool = False, indent_in: float = 0.0,
               bullet: str | None = None, space_after_in: float = 0.05) -> list[_Block]:
    """One block per line, so that a long paragraph flows across pages."""
    lines = _wrap(text, _CONTENT_W_IN - indent_in, size_pt, bold)
    blocks = []
    for number, line in enumerate(lines):
        def draw(figure: Figure, top_in: float, line: str = line, first: bool = number == 0) -> None:
            if bullet and first:
                _text(figure, _MARGIN_X_IN + indent_in - 0.14, top_in, bullet, size_pt)
            _text(figure, _MARGIN_X_IN + indent_in, top_in, line, size_pt, bold)
        last = number == len(lines) - 1
        blocks.append(_Block(_line_height_in(size_pt) + (space_after_in if last else 0.0), draw))
    return blocks


def _heading(text: str, size_pt: float = 11.0) -> _Block:
    gap_in = 0.1

    def draw(figure: Figure, top_in: float) -> None:
        _text(figure, _MARGIN_X_IN, top_in - gap_in, text, size_pt, bold=True)
    return _Block(_line_height_in(size_pt) + gap_in + 0.03, draw, keep_with_next=True)


def _row(cells: Sequence[_Cell], widths_in: Sequence[float], repeat: _Block | None = None,
         keep_with_next: bool = False) -> _Block:
    pad_in = 0.04
    wrapped = [_wrap(c.text, w - 2 * pad_in, c.size_pt, c.bold) for c, w in zip(cells, widths_in, strict=True)]
    height_in = max(len(lines) * _line_height_in(c.size_pt) for c, lines in zip(cells, wrapped)) + 2 * pad_in

    def draw(figure: Figure, top_in: float) -> None:
        x_in = _MARGIN_X_IN
        for cell, width_in, lines in zip(cells, widths_in, wrapped):
            _box(figure, x_in, top_in, width_in, height_in, cell.shade)
            for number, line in enumerate(lines):
                _text(figure, x_in + pad_in, top_in - pad_in - number * _line_height_in(cell.size_pt), line,
                      cell.size_pt, cell.bold)
            x_in += width_in
    return _Block(height_in, draw, keep_with_next=keep_with_next, repeat=repeat)


def _table(rows: Sequence[Sequence[_Cell]], widths_in: Sequence[float],
           header: Sequence[_Cell] | None = None) -> list[_Block]:
    head = _row(header, widths_in, keep_with_next=True) if header else None
    return ([head] if head else []) + [_row(cells, widths_in, repeat=head) for cells in rows]


def _paginate(blocks: Sequence[_Block]) -> list[list[tuple[_Block, float]]]:
    """Place blocks top-down; returns per page the blocks with their offsets below the content top (in)."""
    height_in = _PAGE_IN[1] - _CONTENT_TOP_IN - _CONTENT_BOTTOM_IN
    pages: list[list[tuple[_Block, float]]] = [[]]
    used_in = 0.0
    for index, block in enumerate(blocks):
        needed_in = block.height_in
        if block.keep_with_next and index + 1 < len(blocks):
            needed_in += blocks[index + 1].height_in
        if pages[-1] and used_in + needed_in > height_in:
            pages.append([])
            used_in = 0.0
            if block.repeat is not None:
                pages[-1].append((block.repeat, 0.0))
                used_in = block.repeat.height_in
        pages[-1].append((block, used_in))
        used_in += block.height_in
    return pages


def _text_page(placed: list[tuple[_Block, float]]) -> _PageDrawer:
    def draw(figure: Figure) -> None:
        for block, offset_in in placed:
            block.draw(figure, _PAGE_IN[1] - _CONTENT_TOP_IN - offset_in)
    return draw


# ---------------------------------------------------------------------------------- page plan


def _plan_pages(data: ReportData) -> list[_PageDrawer]:
    pages = [_text_page(p) for p in _paginate(_summary_blocks(data))]
    pages.append(lambda figure: _draw_images_page(figure, data))
    pages.append(lambda figure: _draw_histogram_page(figure, data))
    if data.has_dose:
        pages.append(lambda figure: _draw_dose_page(figure, data))
        groups = _dvh_groups(data)
        for start in range(0, len(groups), 3):
            pages.append(lambda figure, chunk=groups[start:start + 3]: _draw_dvh_page(figure, data, chunk))
    pages += [_text_page(p) for p in _paginate(_closing_blocks(data))]
    return pages


def _draw_header_footer(figure: Figure, data: ReportData, number: int, count: int) -> None:
    width_in, height_in = _PAGE_IN
    _text(figure, _MARGIN_X_IN, height_in - 0.35, "Synthetic CT QA report", 8)
    _text(figure, width_in - _MARGIN_X_IN, height_in - 0.35, f"Verdict: {data.verdict}", 8.5, bold=True, ha="right")
    figure.add_artist(Line2D([_MARGIN_X_IN / width_in, 1 - _MARGIN_X_IN / width_in], [1 - 0.55 / height_in] * 2,
                             transform=figure.transFigure, color="0.3", linewidth=0.5))
    description = data.identifiers.sct_series_description or "sCT"
    footer = (f"sct-node {data.software_version} — {description} — page {number} of {count} — "
              "Synthetic CT QA, not for diagnosis")
    _text(figure, width_in / 2, 0.35, footer, 7, ha="center", va="bottom")


# ------------------------------------------------------------------------------------ summary


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


# ------------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class _Plane:
    name: str
    fixed_axis: int  # grid index axis held constant: 0 = x (columns), 1 = y (rows), 2 = z (slices)
    h_axis: int
    v_axis: int
    v_up: bool  # the vertical axis increases upwards (superior at the top)


_PLANES = (_Plane("axial", 2, 0, 1, False), _Plane("coronal", 1, 0, 2, True), _Plane("sagittal", 0, 1, 2, True))


@dataclass(frozen=True)
class _Slice:
    image: np.ndarray  # rows along the plane's vertical axis, columns along its horizontal one
    h_mm: np.ndarray  # pixel centres along the grid axes, mm
    v_mm: np.ndarray
    position_mm: float  # of the plane along its fixed axis
    plane: _Plane

    @property
    def extent(self) -> tuple[float, float, float, float]:
        dh = self.h_mm[1] - self.h_mm[0] if self.h_mm.size > 1 else 1.0
        dv = self.v_mm[1] - self.v_mm[0] if self.v_mm.size > 1 else 1.0
        left, right = self.h_mm[0] - dh / 2, self.h_mm[-1] + dh / 2
        low, high = self.v_mm[0] - dv / 2, self.v_mm[-1] + dv / 2
        return (left, right, low, high) if self.plane.v_up else (left, right, high, low)

    @property
    def origin(self) -> str:
        return "lower" if self.plane.v_up else "upper"


def _grid_origin_mm(volume: Volume) -> np.ndarray:
    """The origin in the grid-axis frame (``direction.T @ origin``), in which index i lies at origin + i * spacing."""
    return volume.direction.T @ np.asarray(volume.origin_mm)


def _slice(volume: Volume, plane: _Plane, point_mm: np.ndarray, array: np.ndarray | None = None) -> _Slice:
    """The plane of ``volume`` nearest to ``point_mm`` (grid-axis frame), strided down for display."""
    array = volume.array if array is None else array
    origin, spacing = _grid_origin_mm(volume), np.asarray(volume.spacing_mm)
    axis = plane.fixed_axis
    count = volume.size_xyz[axis]
    index = int(np.clip(round(float((point_mm[axis] - origin[axis]) / spacing[axis])), 0, count - 1))
    image = np.take(array, index, axis=2 - axis)  # array axes are (z, y, x)
    stride = max(1, math.ceil(max(image.shape) / _MAX_DISPLAY_PX))
    image = image[::stride, ::stride]
    h_mm = origin[plane.h_axis] + np.arange(image.shape[1]) * stride * spacing[plane.h_axis]
    v_mm = origin[plane.v_axis] + np.arange(image.shape[0]) * stride * spacing[plane.v_axis]
    return _Slice(image, h_mm, v_mm, float(origin[axis] + index * spacing[axis]), plane)


_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def _axis_label(volume: Volume, axis: int) -> str:
    column = volume.direction[:, axis]
    patient = int(np.argmax(np.abs(column)))
    low, high = _LPS_LETTERS[patient]
    if column[patient] < 0:
        low, high = high, low
    return f"{low} → {high} (mm)"


def _show(ax, part: _Slice, volume: Volume, **kwargs):
    image = ax.imshow(part.image, extent=part.extent, origin=part.origin, rasterized=True, **kwargs)
    _frame(ax, part, volume)
    return image


def _frame(ax, part: _Slice, volume: Volume) -> None:
    left, right, bottom, top = part.extent
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.set_xlabel(_axis_label(volume, part.plane.h_axis))
    ax.set_ylabel(_axis_label(volume, part.plane.v_axis))


def _outline(ax, volume: Volume, mask: np.ndarray | None, plane: _Plane, point_mm: np.ndarray,
             colour: str = _OUTLINE_COLOUR, style: str = "-") -> None:
    if mask is None:
        return
    part = _slice(volume, plane, point_mm, array=mask)
    image = part.image.astype(np.float32)
    if image.shape[0] < 2 or image.shape[1] < 2 or image.min() == image.max():
        return
    ax.contour(part.h_mm, part.v_mm, image, levels=[0.5], colors=colour, linewidths=0.8, linestyles=style)


def _centre_mm(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """Centroid of ``mask`` (or the volume centre when there is none) in the grid-axis frame."""
    spacing = np.asarray(volume.spacing_mm)
    if mask is None or not np.any(mask):
        index_xyz = (np.asarray(volume.size_xyz) - 1) / 2.0
    else:
        total = float(np.count_nonzero(mask))
        index_zyx = [float(np.arange(n) @ mask.sum(axis=tuple(a for a in range(3) if a != axis)))
                     / total for axis, n in enumerate(mask.shape)]
        index_xyz = np.asarray(index_zyx[::-1])
    return _grid_origin_mm(volume) + index_xyz * spacing


def _page_title(figure: Figure, title: str, subtitle: str = "") -> None:
    top_in = _PAGE_IN[1] - _CONTENT_TOP_IN
    _text(figure, _MARGIN_X_IN, top_in, title, 12, bold=True)
    if subtitle:
        _text(figure, _MARGIN_X_IN, top_in - 0.25, "\n".join(_wrap(subtitle, _CONTENT_W_IN, 7.5)), 7.5)


def _notes(figure: Figure, notes: Sequence[str], top_in: float) -> None:
    """Sentences written from ``top_in`` (above the page bottom) down."""
    lines = [line for note in notes for line in _wrap(note, _CONTENT_W_IN, 8.5)]
    for number, line in enumerate(lines):
        _text(figure, _MARGIN_X_IN, top_in - number * _line_height_in(8.5), line, 8.5)


def _grid(figure: Figure, rows: int, top_in: float, bottom_in: float, columns: int = 3):
    return figure.add_gridspec(rows, columns + 1, left=(_MARGIN_X_IN + 0.3) / _PAGE_IN[0],
                               right=1 - (_MARGIN_X_IN + 0.35) / _PAGE_IN[0], top=1 - top_in / _PAGE_IN[1],
                               bottom=bottom_in / _PAGE_IN[1], width_ratios=(1,) * columns + (0.05,),
                               wspace=0.55, hspace=_GRID_HSPACE)


def _draw_images_page(figure: Figure, data: ReportData) -> None:
    centre = _centre_mm(data.sct, data.body_mask)
    where = "the body centre" if data.body_mask is not None and np.any(data.body_mask) else "the volume centre"
    _page_title(figure, "Images", f"Axial, coronal and sagittal planes through {where}; body outline "
                f"(MR body mask) in {_OUTLINE_COLOUR.removeprefix('tab:')}. CT window {_CT_WINDOW_HU[0]:g} to "
                f"{_CT_WINDOW_HU[1]:g} HU. Distances in mm along the image grid axes.")
    rows: list[tuple[str, Volume]] = []
    notes = []
    if data.mr is not None:
        rows.append(("MR", data.mr))
    else:
        notes.append("MR: not shown — no MR volume was given to the report.")
    rows.append(("sCT", data.sct))
    if data.reference_ct is not None:
        rows.append(("Real CT", data.reference_ct))
    else:
        notes.append("Real CT: not shown — no real CT was given (a real CT is only part of commissioning "
                     "data), so the sCT cannot be compared image to image.")
    grid_top_in, grid_bottom_in = _CONTENT_TOP_IN + 0.75, _CONTENT_BOTTOM_IN + 0.9
    grid = _grid(figure, 3, grid_top_in, grid_bottom_in)
    for row, (label, volume) in enumerate(rows):
        if label == "MR":
            low, high = _robust_range(volume.array, data.body_mask, 1.0, 99.5)
            style = {"cmap": "gray", "vmin": low, "vmax": high}
            bar_label = "MR signal (a.u.)"
        else:
            style = {"cmap": "gray", "vmin": _CT_WINDOW_HU[0], "vmax": _CT_WINDOW_HU[1]}
            bar_label = "HU"
        for column, plane in enumerate(_PLANES):
            ax = figure.add_subplot(grid[row, column])
            part = _slice(volume, plane, centre)
            image = _show(ax, part, volume, **style)
            _outline(ax, data.sct, data.body_mask, plane, centre)
            ax.set_title(f"{label}, {plane.name} at {part.position_mm:.1f} mm", parse_math=False)
        figure.colorbar(image, cax=figure.add_subplot(grid[row, 3]), label=bar_label)
    # Below the last image row (rows are 1 + hspace apart in units of a row's height).
    row_in = (_PAGE_IN[1] - grid_top_in - grid_bottom_in) / (3 + 2 * _GRID_HSPACE)
    _notes(figure, notes, _PAGE_IN[1] - grid_top_in - len(rows) * row_in * (1 + _GRID_HSPACE) + 0.1)


def _robust_range(array: np.ndarray, mask: np.ndarray | None, low_percent: float,
                  high_percent: float) -> tuple[float, float]:
    step = (slice(None, None, 2),) * 3  # a subsample is enough for display limits
    values = array[step][mask[step]] if mask is not None and np.any(mask[step]) else array[step].ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, (low_percent, high_percent)))
    return low, max(high, low + 1e-6)


# ----------------------------------------------------------------------- histogram, uncertainty


def _draw_histogram_page(figure: Figure, data: ReportData) -> None:
    inside = "inside the body" if data.body_mask is not None else "over the whole image (no body mask was given)"
    _page_title(figure, "HU histogram and model uncertainty",
                f"Share of voxels {inside} per 10 HU bin; dotted lines mark the expected tissue peaks "
                "(Schneider et al. 2000; ICRU Report 44), which shift with scanner and kVp.")
    ax = figure.add_axes(((_MARGIN_X_IN + 0.45) / _PAGE_IN[0], 0.6, 1 - (2 * _MARGIN_X_IN + 0.6) / _PAGE_IN[0],
                          0.26))
    edges = np.arange(-1100.0, 2110.0, 10.0)
    for label, volume, style in (("sCT", data.sct, "-"), ("real CT", data.reference_ct, "--")):
        if volume is None:
            continue
        values = volume.array[data.body_mask] if data.body_mask is not None else volume.array.ravel()
        values = values[np.isfinite(values)]
        counts, _ = np.histogram(values, bins=edges)
        ax.stairs(100.0 * counts / max(values.size, 1), edges, color="black" if label == "sCT" else "0.45",
                  linestyle=style, linewidth=1.0, label=label)
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 100.0)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("CT number (HU)")
    ax.set_ylabel("voxels per 10 HU bin (%)")
    for name, hu in EXPECTED_TISSUE_PEAKS_HU:
        ax.axvline(hu, color="0.35", linestyle=":", linewidth=0.8)
        ax.text(hu + 12, 0.97, f"{name} {hu:g}", transform=ax.get_xaxis_transform(), rotation=90, va="top",
                ha="left", fontsize=6, parse_math=False,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
    peak = data.qa.composition.tissue.soft_tissue_peak_hu if data.qa.composition is not None else math.nan
    if math.isfinite(peak):
        ax.axvline(peak, color="black", linestyle="-.", linewidth=1.0, label=f"sCT soft-tissue peak {peak:.0f} HU")
    ax.legend(loc="upper right")
    summary = _composition_text(data.qa)
    for i, line in enumerate(_wrap(summary, _CONTENT_W_IN, 7.5)):
        _text(figure, _MARGIN_X_IN, 0.6 * _PAGE_IN[1] - 0.42 - 0.13 * i, line, 7.5)
    if data.reference_ct is None:
        _text(figure, _MARGIN_X_IN, 0.515 * _PAGE_IN[1], "No real CT was given: only the sCT histogram is shown.",
              8.5)

    top_in = 0.49 * _PAGE_IN[1]
    _text(figure, _MARGIN_X_IN, top_in, "Model uncertainty", 11, bold=True)
    if data.uncertainty_hu is None:
        absent = ("No uncertainty map: the model produced no uncertainty map (it is not an ensemble), so where the "
                  "sCT is unreliable cannot be shown.")
        for i, line in enumerate(_wrap(absent, _CONTENT_W_IN, 8.5)):
            _text(figure, _MARGIN_X_IN, top_in - 0.3 - 0.16 * i, line, 8.5)
        return
    measured = data.qa.uncertainty
    caption = "Standard deviation across the model's ensemble, HU."
    if measured is not None:
        caption += f" {measured.percent_above:.2f} % of the body lies above {measured.level_hu:g} HU."
    level = measured.level_hu if measured is not None else None
    if level is not None:
        caption += " The level is drawn as a white contour and as a line on the scale."
    for i, line in enumerate(_wrap(caption, _CONTENT_W_IN, 7.5)):
        _text(figure, _MARGIN_X_IN, top_in - 0.25 - 0.13 * i, line, 7.5)
    grid = _grid(figure, 1, _PAGE_IN[1] - top_in + 0.55, top_in - 3.6)
    centre = _centre_mm(data.sct, data.body_mask)
    _, high = _robust_range(data.uncertainty_hu.array, data.body_mask, 0.0, 99.5)
    top = max(high, 1.0, 1.2 * level if level else 0.0)
    for column, plane in enumerate(_PLANES):
        ax = figure.add_subplot(grid[0, column])
        part = _slice(data.uncertainty_hu, plane, centre)
        image = _show(ax, part, data.uncertainty_hu, cmap="magma", vmin=0.0, vmax=top)
        _outline(ax, data.sct, data.body_mask, plane, centre, colour="cyan")
        values = np.nan_to_num(part.image.astype(np.float32))
        if level is not None and min(values.shape) >= 2 and values.min() < level < values.max():
            ax.contour(part.h_mm, part.v_mm, values, levels=[level], colors="white", linewidths=0.8)
        ax.set_title(f"uncertainty, {plane.name} at {part.position_mm:.1f} mm")
    bar = figure.colorbar(image, cax=figure.add_subplot(grid[0, 3]),
                          label="ensemble std (HU)" + (f"; line: level {level:g} HU" if level is not None else ""))
    if level is not None:
        bar.ax.axhline(level, color="cyan", linewidth=2.0)
        bar.ax.axhline(level, color="black", linewidth=0.8)


def _composition_text(qa: QaResult) -> str:
    """One paragraph on the tissue composition of the sCT body (what the QA measured of it)."""
    parts = []
    names = {"air": "air", "lung": "lung-like", "fat": "fat", "soft_tissue": "soft tissue", "bone": "bone"}
    if qa.hu is not None:
        parts.append("Inside the body: " + ", ".join(f"{names.get(t.tissue.value, t.tissue.value)} {t.percent:.1f} %"
                                                     for t in qa.hu.tissue_fractions) + ".")
    if qa.composition is not None:
        tissue = qa.composition.tissue

        def hu(value: float) -> str:
            return f"{value:.0f} HU" if math.isfinite(value) else "none"

        share = f"{tissue.fat_share_percent:.1f} %" if math.isfinite(tissue.fat_share_percent) else "not measurable"
        check = qa.check("soft_tissue_peak")
        expected = (f" (passes within {check.pass_limit:g} HU of {qa.composition.soft_tissue_expected_hu:g} HU)"
                    if check is not None else "")
        parts.append(f"Soft-tissue peak {hu(tissue.soft_tissue_peak_hu)}{expected}; fat peak "
                     f"{hu(tissue.fat_peak_hu)} (fat -100 ± 20 HU); fat share of fat and soft tissue {share} "
                     f"(site: {qa.composition.site}); bone in {tissue.bone_slice_percent:.0f} % of the body slices.")
    return " ".join(parts) or "No tissue composition was recorded in the QA result."


# ------------------------------------------------------------------------------------------ dose


def _draw_dose_page(figure: Figure, data: ReportData) -> None:
    dose = data.dose_sct_gy
    if dose is None:  # only planned when data.has_dose
        return
    prescription = data.prescription_gy
    finite = np.isfinite(dose.array)
    peak_gy = float(dose.array[finite].max()) if finite.any() else 0.0
    reference_gy = prescription if prescription else max(peak_gy, 1e-6)
    of_what = "of prescription" if prescription else "of the maximum sCT dose (no prescription given)"
    targets = [s for s in data.structures if s.role == "target" and np.any(s.mask)]
    if targets:
        point, through = _centre_mm(data.sct, targets[0].mask), f"the centre of {targets[0].name}"
    elif finite.any():
        index_zyx = np.unravel_index(int(np.argmax(np.where(finite, dose.array, -np.inf))), dose.shape)
        point = _grid_origin_mm(dose) + np.asarray(index_zyx[::-1], dtype=float) * np.asarray(dose.spacing_mm)
        through = "the dose maximum"
    else:
        point, through = _centre_mm(data.sct, data.body_mask), "the body centre (the dose holds no finite value)"
    plan = data.plan_label or "unnamed plan"
    reference = data.dose_reference_name or "reference"
    shown = f"{prescription:.2f} Gy per fraction" if prescription else "not given"
    difference = data.dose_difference_percent
    scale_note = ""
    if difference is not None and np.isfinite(difference.array).any():
        limit = _symmetric_limit(difference.array)
        if float(np.nanmax(np.abs(difference.array))) > limit:
            scale_note = f" The difference scale spans ±{limit:.1f} % (99.5th percentile); arrows mark larger ones"
            judged = data.qa.dose
            scale_note += (f" (the largest where the reference dose is at least "
                           f"{judged.gamma.low_dose_cutoff_percent:g} %: {judged.largest_difference_percent:+.1f} %; "
                           "at the skin, air on one image and tissue on the other differ by up to 100 %)."
                           if judged is not None else ".")
    _page_title(figure, f"Dose: {plan}, sCT vs {reference}",
                f"Planes through {through}. Prescription {shown}; the dose scale runs to the maximum, "
                f"{peak_gy:.2f} Gy. Isodoses 95 / 50 / 20 % {of_what} drawn solid / dashed / dotted. Dose "
                f"difference = sCT − reference dose.{scale_note} Gamma 0 to 2: gamma > 1 hatched and outlined; "
                "uncoloured = not evaluated (NaN, below the low-dose cut-off).")
    grid = _grid(figure, 3, _CONTENT_TOP_IN + 0.85, _CONTENT_BOTTOM_IN + 0.35)
    rows = (("dose on sCT", dose), ("dose difference", data.dose_difference_percent), ("gamma", data.gamma))
    for row, (label, volume) in enumerate(rows):
        if volume is None:
            ax = figure.add_subplot(grid[row, :3])
            ax.set_axis_off()
            ax.text(0.0, 0.5, f"No {label} map: it was not given with the doses.", fontsize=8.5,
                    transform=ax.transAxes, parse_math=False)
            continue
        for column, plane in enumerate(_PLANES):
            ax = figure.add_subplot(grid[row, column])
            background = _slice(data.sct, plane, point)
            _show(ax, background, data.sct, cmap="gray", vmin=_CT_WINDOW_HU[0], vmax=_CT_WINDOW_HU[1])
            part = _slice(volume, plane, point)
            values = part.image.astype(np.float32)
            if label == "dose on sCT":
                image = ax.imshow(np.ma.masked_less(values, 0.05 * reference_gy), extent=part.extent,
                                  origin=part.origin, cmap="turbo", alpha=0.45, vmin=0.0,
                                  vmax=max(peak_gy, reference_gy), rasterized=True)
                _isodoses(ax, part, reference_gy)
                bar_label = "dose (Gy)"
            elif label == "dose difference":
                limit = _symmetric_limit(volume.array)
                image = ax.imshow(values, extent=part.extent, origin=part.origin, cmap="RdBu_r", vmin=-limit,
                                  vmax=limit, alpha=0.85, rasterized=True)
                bar_label = "sCT − reference (% of prescription)"
                extend = "both" if np.nanmax(np.abs(volume.array)) > limit else "neither"
            else:
                image = ax.imshow(np.ma.masked_invalid(values), extent=part.extent, origin=part.origin,
                                  cmap="viridis", vmin=0.0, vmax=_GAMMA_MAX, alpha=0.85, rasterized=True)
                _gamma_failures(ax, part)
                bar_label = "gamma (2 %/2 mm)"
            _frame(ax, background, data.sct)
            _outline(ax, data.sct, data.body_mask, plane, point)
            for target in targets:
                _outline(ax, data.sct, target.mask, plane, point, colour="black", style="-.")
            ax.set_title(f"{label}, {plane.name} at {background.position_mm:.1f} mm", parse_math=False)
        figure.colorbar(image, cax=figure.add_subplot(grid[row, 3]), label=bar_label,
                        extend=extend if label == "dose difference" else "neither")
    handles = [Line2D([], [], color=c, linestyle=s, label=f"{p:g} % isodose")
               for p, s, c in zip(_ISODOSE_PERCENT, _ISODOSE_STYLES, _ISODOSE_COLOURS)]
    handles.append(Line2D([], [], color=_OUTLINE_COLOUR, label="body outline"))
    if targets:
        handles.append(Line2D([], [], color="black", linestyle="-.", label="target"))
    handles.append(Patch(facecolor="none", hatch="////", edgecolor="black", label="gamma > 1"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                  bbox_to_anchor=(0.5, (_CONTENT_BOTTOM_IN - 0.05) / _PAGE_IN[1]))


def _isodoses(ax, part: _Slice, reference_gy: float) -> None:
    values = np.nan_to_num(part.image.astype(np.float32))
    if min(values.shape) < 2:
        return
    for percent, style, colour in zip(_ISODOSE_PERCENT, _ISODOSE_STYLES, _ISODOSE_COLOURS):
        level = percent / 100.0 * reference_gy
        if values.min() < level < values.max():
            ax.contour(part.h_mm, part.v_mm, values, levels=[level], colors=colour, linestyles=style,
                       linewidths=0.9)


def _gamma_failures(ax, part: _Slice) -> None:
    failing = np.nan_to_num(part.image.astype(np.float32), nan=0.0) > 1.0
    if min(failing.shape) < 2 or not failing.any():
        return
    ax.contourf(part.h_mm, part.v_mm, failing.astype(np.float32), levels=[0.5, 1.5], colors="none",
                hatches=["////"])
    ax.contour(part.h_mm, part.v_mm, failing.astype(np.float32), levels=[0.5], colors="black", linewidths=0.7)


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return max(float(np.percentile(finite, 99.5)) if finite.size else 0.0, 1.0)


_DVH_MARKERS = ("o", "s", "^", "D", "v")


def _dvh_groups(data: ReportData) -> list[tuple[str, list]]:
    """DVH curves in panels: targets, then organs, at most five structures a panel."""
    groups = []
    for role, title in (("target", "Targets"), ("organ", "Organs at risk")):
        curves = [c for c in data.dvh_curves if c.role == role]
        groups += [(title, curves[i:i + 5]) for i in range(0, len(curves), 5)]
    others = [c for c in data.dvh_curves if c.role not in ("target", "organ")]
    groups += [("Other structures", others[i:i + 5]) for i in range(0, len(others), 5)]
    return groups


def _draw_dvh_page(figure: Figure, data: ReportData, groups: list[tuple[str, list]]) -> None:
    reference = data.dose_reference_name or "reference"
    _page_title(figure, "Dose-volume histograms",
                f"Cumulative DVHs: dose on the {reference} solid with open markers, dose on the sCT dashed with "
                "filled markers; one colour and one marker shape per structure (readable in black and white).")
    height = 0.78 / 3
    for number, (title, curves) in enumerate(groups):
        ax = figure.add_axes(((_MARGIN_X_IN + 0.45) / _PAGE_IN[0], 0.86 - (number + 1) * height + 0.04,
                              0.58, height - 0.08))
        for index, curve in enumerate(curves):
            colour, marker = f"C{index}", _DVH_MARKERS[index % len(_DVH_MARKERS)]
            # A marker per structure (every 20th point, offset per curve) reads in black and white too.
            every = (index * 3, 20)
            ax.plot(curve.dose_gy, curve.reference_volume_percent, color=colour, linestyle="-", marker=marker,
                    markevery=every, markersize=4, markerfacecolor="white", label=f"{curve.structure} — {reference}")
            ax.plot(curve.dose_gy, curve.sct_volume_percent, color=colour, linestyle="--", marker=marker,
                    markevery=every, markersize=4, label=f"{curve.structure} — sCT")
        if data.prescription_gy:
            ax.axvline(data.prescription_gy, color="0.4", linestyle=":", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)")
        ax.set_ylim(0, 102)
        ax.set_xlim(left=0)
        ax.grid(True, linewidth=0.3, color="0.8")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


# --------------------------------------------------------------------------- absent parts, limits


def _closing_blocks(data: ReportData) -> list[_Block]:
    blocks: list[_Block] = []
    if not data.has_dose:
        blocks.append(_heading("Dose"))
        blocks += _paragraph("No dose was computed — dose comparison not run: the QA ran without a dose "
                             "calculation (dose switched off for this run or route), so there is no dose, "
                             "dose-difference or gamma map and no DVH curve. The verdict rests on the image checks "
                             "alone.")
    elif not data.dvh_curves:
        blocks.append(_heading("DVH"))
        template = data.qa.dose is not None and data.qa.dose.plan.is_template
        blocks += _paragraph("No DVH curves: the QA had no target or organ at risk (no RT Structure Set was routed "
                             "with the MR or given to `sct-node qa --structures`)"
                             + (", so the template plan was placed on the body centre and normalised at its "
                                "isocentre." if template else "."))
    card = data.model_card
    sources = []
    for check in data.qa.checks:
        if check.source and check.source not in [s for _, s in sources]:
            sources.append((check.name, check.source))
    if data.has_dose:
        plan = f"The doses here come from {data.plan_label or 'an unnamed plan'}."
        reference = f"This report's dose reference: {data.dose_reference_name or 'not named'}."
    else:
        plan = reference = "No dose was computed for this report."
    if card.get("known") == "no" or card.get("identity", "unknown") == "unknown":
        synthetic = ("It was computed from an MR by a model this report does not know (the QA was run by hand, "
                     "without the model card); it is marked Synthetic Data and was not measured. Check the model "
                     "and its intended use before relying on it.")
    elif card.get("known") == "header":
        synthetic = (f"It was computed from the MR by the model {card.get('name', '?')} {card.get('version', '')} "
                     f"({card.get('identity', '')}), as the sCT's Contributing Equipment says; the model card itself "
                     "was not available to this report (hand-run qa/report), so its intended use is not shown here. "
                     "It is marked Synthetic Data; it was not measured.")
    else:
        synthetic = (f"It was computed from the MR by the model {card.get('name', '?')} {card.get('version', '')} "
                     f"({card.get('identity', '')}) and is marked Synthetic Data; it was not measured. Intended use "
                     f"of the model: {card.get('intended_use', 'not stated')}")
    items = [
        ("The sCT is synthetic.", synthetic),
        ("The dose engine is for relative comparison only.",
         ("It is a fast pencil-beam-like engine that computes the same plan on two images: ray-traced "
          "water-equivalent (radiological) depth through the density, the measured 6 MV depth dose of an Elekta "
          "Agility, inverse square, jaw and MLC apertures per control point with a head-scatter factor each, and "
          "depth-dependent Gaussian penumbra and phantom scatter fitted to measured profiles and output factors "
          "(docs/qa.md: output factors 2 x 2 to 40 x 40 cm within 0.5 %, depth doses within 0.8 %, penumbrae "
          "within 0.6 mm of the commissioning data). It does not model electron transport (no build-down or "
          "build-up at interfaces, no lateral electron disequilibrium in lung), full heterogeneity scatter "
          "(lateral scaling of scatter with density), MLC transmission and tongue-and-groove, wedges, FFF beams "
          "or energies other than 6 MV. Do not use its absolute doses for planning; use its differences between "
          "two images of the same patient.")),
        ("Template plans are not clinical plans.",
         (f"{plan} A sCT that passes with a box may still differ for a highly modulated plan near bone or "
          "air.")),
        ("The bulk-density reference checks bone and soft-tissue assignment only.",
         ("It shares the sCT's body outline and bone mask, so it cannot detect an outline or bone-shape error; "
          f"only the real-CT comparison (commissioning) and the outline checks can. {reference}")),
        ("HU checks judge plausibility, not truth.",
         ("Tissue fractions, the soft-tissue peak, the fat share, bone in every slice and out-of-range values say "
          "whether the sCT looks like a CT of its site; "
          + ("the HU errors themselves are measured here only because a real CT was given (image metrics "
             "table); a routine sCT has none. " if data.reference_ct is not None or
             data.qa.image_metrics is not None else
             "without a real CT, as here, no HU error can be measured. ")
          + "Tissue classes and thresholds are generic defaults for head and pelvis: commission your own per site "
            "and scanner.")),
        ("Gamma and DVH thresholds.",
         ("Gamma 2 %/2 mm (global, 10 % low-dose cut-off) and DVH differences in % of the prescription are judged "
          "against the limits in the checks table; the sources of every check's limits follow.")),
    ]
    blocks.append(_heading("Limitations"))
    for lead, body in items:
        blocks += _paragraph(f"{lead} {body}", 8.5, indent_in=0.25, bullet="•")
    for name, source in sources:
        blocks += _paragraph(f"{name}: {source}", 7.5, indent_in=0.5, bullet="–", space_after_in=0.02)
    blocks += _paragraph("This report is a quality-assurance aid for a medical physicist; the images are "
                         "synthetic and not for diagnosis.", 8.5, bold=True)
    return blocks
