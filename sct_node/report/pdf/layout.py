"""Page set-up and text flow of the report: fonts, wrapped text, tables, page breaks and panel grids."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.gridspec import GridSpec
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextToPath

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

_PAGE_IN = (8.27, 11.69)  # A4 portrait
_MARGIN_X_IN = 0.55
_CONTENT_TOP_IN = 0.8  # below the page top, under the header
_CONTENT_BOTTOM_IN = 0.75  # above the page bottom, over the footer
_CONTENT_W_IN = _PAGE_IN[0] - 2 * _MARGIN_X_IN
_GRID_HSPACE = 0.45  # between rows of image panels, in units of a row's height
_RC: dict[RcKeyType, Any] = {
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
          **kwargs: Any) -> None:
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


def _grid(figure: Figure, rows: int, top_in: float, bottom_in: float, columns: int = 3) -> GridSpec:
    return figure.add_gridspec(rows, columns + 1, left=(_MARGIN_X_IN + 0.3) / _PAGE_IN[0],
                               right=1 - (_MARGIN_X_IN + 0.35) / _PAGE_IN[0], top=1 - top_in / _PAGE_IN[1],
                               bottom=bottom_in / _PAGE_IN[1], width_ratios=(1,) * columns + (0.05,),
                               wspace=0.55, hspace=_GRID_HSPACE)
