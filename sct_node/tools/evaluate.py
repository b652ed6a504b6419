"""Evaluate a model on SynthRAD-layout cases: the challenge's image metrics, MAE per tissue, runtime.

Metrics are those of :mod:`dosimetry.image_metrics`, exactly as SynthRAD
defines them: MAE inside the case's mask (unclipped); PSNR and SSIM on images
clipped to [-1024, 3000] HU with data range 4024 (see ../shared/REFERENCE.md);
plus MAE and mean error per tissue class of the real CT (air, lung, fat, soft
tissue, bone), and seconds per volume (model only, I/O excluded).

This lives in ``sct_node`` because it joins the two lower packages (``models``
makes the sCT, ``dosimetry`` measures it), which never import each other's
internals for this.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dosimetry.image_metrics import image_metrics
from models.base import ProgressCallback, TranslationModel
from models.errors import ModelError

if TYPE_CHECKING:
    from models.learned.data import Case

__all__ = ["CaseResult", "Evaluation", "evaluate_cases", "evaluate_model", "format_table"]

#: Tissue classes shown in the table (the others are in the JSON).
TABLE_TISSUES = ("air", "soft_tissue", "bone")


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    mae_hu: float
    psnr_db: float
    ssim: float
    mae_per_tissue_hu: dict[str, float | None]
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    model: str
    cases: tuple[CaseResult, ...]
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "summary": self.summary,
                "cases": [case.__dict__ for case in self.cases]}


def evaluate_model(model: TranslationModel, data_dir: Path, *, max_cases: int | None = None,
                   progress: ProgressCallback | None = None) -> Evaluation:
    """Translate every case's MR and compare with its CT inside its mask.

    Raises
    ------
    ModelError
        No case with a CT.
    """
    from models.learned.data import load_cases

    cases = [case for case in load_cases(Path(data_dir)) if case.ct is not None][: max_cases or None]
    if not cases:
        raise ModelError(f"{data_dir}: no case with a CT to evaluate against")
    return evaluate_cases(model, cases, progress=progress)


def evaluate_cases(model: TranslationModel, cases: Sequence[Case], *,
                   progress: ProgressCallback | None = None) -> Evaluation:
    """:func:`evaluate_model` on cases already in memory (``models.learned.data.Case``: id, MR, CT, body mask).

    Raises
    ------
    ModelError
        No cases, or a case without a CT.
    """
    if not cases or any(case.ct is None for case in cases):
        raise ModelError("evaluation needs at least one case, each with a CT")
    results = []
    for index, case in enumerate(cases):
        assert case.ct is not None  # checked above, before any case is translated
        started = time.perf_counter()
        sct = model.translate(case.mr)
        seconds = time.perf_counter() - started
        metrics = image_metrics(case.ct, sct.hu, case.body)
        per_tissue = {str(t.tissue): t.mae_hu for t in metrics.per_tissue}
        results.append(CaseResult(case.case_id, metrics.mae_hu, metrics.psnr_db, metrics.ssim, per_tissue, seconds))
        if progress is not None:
            progress(index + 1, len(cases))
    return Evaluation(model.card.identity, tuple(results), _summary(results))


def _summary(results: list[CaseResult]) -> dict[str, Any]:
    def mean(values: Iterable[float | None]) -> float | None:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(finite)) if finite else None

    tissues = sorted({t for r in results for t in r.mae_per_tissue_hu})
    return {"cases": len(results), "mae_hu": mean(r.mae_hu for r in results),
            "psnr_db": mean(r.psnr_db for r in results), "ssim": mean(r.ssim for r in results),
            "mae_per_tissue_hu": {t: mean(r.mae_per_tissue_hu.get(t) for r in results) for t in tissues},
            "seconds_per_volume": mean(r.seconds for r in results)}


def format_table(evaluation: Evaluation) -> str:
    """A plain-text table: one row per case and the mean."""
    header = f"{'case':20} {'MAE HU':>8} {'PSNR dB':>8} {'SSIM':>6} " + " ".join(
        f"{'MAE ' + t:>16}" for t in TABLE_TISSUES) + f" {'s/volume':>9}"
    lines = [f"model {evaluation.model}", header]

    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    for r in evaluation.cases:
        lines.append(f"{r.case_id[:20]:20} {number(r.mae_hu):>8} {number(r.psnr_db, 2):>8} {number(r.ssim, 3):>6} "
                     + " ".join(f"{number(r.mae_per_tissue_hu.get(t)):>16}" for t in TABLE_TISSUES)
                     + f" {number(r.seconds, 2):>9}")
    s = evaluation.summary
    lines.append(f"{'mean':20} {number(s['mae_hu']):>8} {number(s['psnr_db'], 2):>8} {number(s['ssim'], 3):>6} "
                 + " ".join(f"{number(s['mae_per_tissue_hu'].get(t)):>16}" for t in TABLE_TISSUES)
                 + f" {number(s['seconds_per_volume'], 2):>9}")
    return "\n".join(lines)


def write_json(evaluation: Evaluation, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation.as_dict(), indent=2, default=float))
    return path
