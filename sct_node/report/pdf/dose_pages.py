"""The dose pages: dose on the sCT with isodoses, dose difference and gamma maps, and the DVH curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sct_node.report.data import DvhCurve, ReportData
from sct_node.report.pdf.layout import _CONTENT_BOTTOM_IN, _CONTENT_TOP_IN, _MARGIN_X_IN, _PAGE_IN, _grid, _page_title
from sct_node.report.pdf.planes import (
    _CT_WINDOW_HU,
    _OUTLINE_COLOUR,
    _PLANES,
    _centre_mm,
    _frame,
    _grid_origin_mm,
    _outline,
    _show,
    _Slice,
    _slice,
)

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

_ISODOSE_PERCENT = (20.0, 50.0, 95.0)  # of prescription, drawn dotted, dashed, solid
_ISODOSE_STYLES: tuple[LineStyleType, ...] = (":", "--", "-")
_ISODOSE_COLOURS = ("tab:blue", "tab:green", "tab:red")
_GAMMA_MAX = 2.0


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
    handles: list[Artist] = [Line2D([], [], color=c, linestyle=s, label=f"{p:g} % isodose")
               for p, s, c in zip(_ISODOSE_PERCENT, _ISODOSE_STYLES, _ISODOSE_COLOURS)]
    handles.append(Line2D([], [], color=_OUTLINE_COLOUR, label="body outline"))
    if targets:
        handles.append(Line2D([], [], color="black", linestyle="-.", label="target"))
    handles.append(Patch(facecolor="none", hatch="////", edgecolor="black", label="gamma > 1"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                  bbox_to_anchor=(0.5, (_CONTENT_BOTTOM_IN - 0.05) / _PAGE_IN[1]))


def _isodoses(ax: Axes, part: _Slice, reference_gy: float) -> None:
    values = np.nan_to_num(part.image.astype(np.float32))
    if min(values.shape) < 2:
        return
    for percent, style, colour in zip(_ISODOSE_PERCENT, _ISODOSE_STYLES, _ISODOSE_COLOURS):
        level = percent / 100.0 * reference_gy
        if values.min() < level < values.max():
            ax.contour(part.h_mm, part.v_mm, values, levels=[level], colors=colour, linestyles=style,
                       linewidths=0.9)


def _gamma_failures(ax: Axes, part: _Slice) -> None:
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


def _dvh_groups(data: ReportData) -> list[tuple[str, list[DvhCurve]]]:
    """DVH curves in panels: targets, then organs, at most five structures a panel."""
    groups: list[tuple[str, list[DvhCurve]]] = []
    for role, title in (("target", "Targets"), ("organ", "Organs at risk")):
        curves = [c for c in data.dvh_curves if c.role == role]
        groups += [(title, curves[i:i + 5]) for i in range(0, len(curves), 5)]
    others = [c for c in data.dvh_curves if c.role not in ("target", "organ")]
    groups += [("Other structures", others[i:i + 5]) for i in range(0, len(others), 5)]
    return groups


def _draw_dvh_page(figure: Figure, data: ReportData, groups: list[tuple[str, list[DvhCurve]]]) -> None:
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
