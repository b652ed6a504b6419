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

The modules: ``layout`` (page set-up, text flow, tables, page breaks), ``planes`` (slice
geometry), ``summary`` (page 1 on), ``pages`` (images, histogram, uncertainty), ``dose_pages``
(dose, gamma, DVH) and ``limitations`` (the closing pages); this one plans and writes the pages.

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
import functools
import io
import threading
from pathlib import Path
from typing import BinaryIO

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dosimetry.qa_result import QaResult
from models.fileio import write_atomic
from sct_node.errors import InputError, OutputError
from sct_node.report.data import ReportData
from sct_node.report.pdf.dose_pages import _draw_dose_page, _draw_dvh_page, _dvh_groups
from sct_node.report.pdf.layout import _MARGIN_X_IN, _PAGE_IN, _RC, _PageDrawer, _paginate, _text, _text_page
from sct_node.report.pdf.limitations import _closing_blocks
from sct_node.report.pdf.pages import EXPECTED_TISSUE_PEAKS_HU, _draw_histogram_page, _draw_images_page
from sct_node.report.pdf.summary import _summary_blocks

__all__ = ["EXPECTED_TISSUE_PEAKS_HU", "render_report_pages", "render_report_pdf"]

_DPI = 150  # raster resolution of the images inside the PDF
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

        def write(stream: BinaryIO) -> None:
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


def render_report_pages(data: ReportData, folder: Path, dpi: int = 90) -> list[Path]:
    """Write the report's pages as PNG images (``page-01.png``, ...), as the PDF draws them: for a screen
    (the console). Each file is written atomically. Returns the files in page order.

    Raises
    ------
    InputError, OutputError
        As :func:`render_report_pdf`.
    """
    data = _require_consistent(data)
    folder = Path(folder)
    written = []
    with _RENDER_LOCK, matplotlib.rc_context(_RC):
        pages = _plan_pages(data)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for number, draw in enumerate(pages, start=1):
                figure = Figure(figsize=_PAGE_IN)
                draw(figure)
                _draw_header_footer(figure, data, number, len(pages))
                path = folder / f"page-{number:02d}.png"
                image = io.BytesIO()
                figure.savefig(image, format="png", dpi=dpi)
                write_atomic(path, image.getvalue(), suffix=".png.tmp")
                written.append(path)
        except OSError as error:
            raise OutputError(f"cannot write the report's pages in {folder}: {error.strerror or error}") from error
    return written


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


# ---------------------------------------------------------------------------------- page plan


def _plan_pages(data: ReportData) -> list[_PageDrawer]:
    pages = [_text_page(p) for p in _paginate(_summary_blocks(data))]
    pages.append(lambda figure: _draw_images_page(figure, data))
    pages.append(lambda figure: _draw_histogram_page(figure, data))
    if data.has_dose:
        pages.append(lambda figure: _draw_dose_page(figure, data))
        groups = _dvh_groups(data)
        for start in range(0, len(groups), 3):
            pages.append(functools.partial(_draw_dvh_page, data=data, groups=groups[start:start + 3]))
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
