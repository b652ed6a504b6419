"""The image pages: MR, sCT and real CT in three planes, the HU histogram and the model's uncertainty map."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from dosimetry.qa_result import QaResult
from models.volume import Volume
from sct_node.report.data import ReportData
from sct_node.report.pdf.layout import (
    _CONTENT_BOTTOM_IN,
    _CONTENT_TOP_IN,
    _CONTENT_W_IN,
    _GRID_HSPACE,
    _MARGIN_X_IN,
    _PAGE_IN,
    _grid,
    _notes,
    _page_title,
    _text,
    _wrap,
)
from sct_node.report.pdf.planes import _CT_WINDOW_HU, _OUTLINE_COLOUR, _PLANES, _centre_mm, _outline, _show, _slice
from sct_node.report.pdf.summary import _TISSUE_NAMES

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


# ------------------------------------------------------------------------------------ images


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
    if qa.hu is not None:
        parts.append("Inside the body: " + ", ".join(
            f"{_TISSUE_NAMES.get(t.tissue.value, t.tissue.value)} {t.percent:.1f} %"
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
