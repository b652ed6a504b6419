"""The QA of one sCT as one typed object, written to a folder and read back by one function.

:func:`dosimetry.qa.run_qa` returns a :class:`QaRecord`: the :class:`QaResult`
(verdict, reasons, checks and every measurement, each a frozen dataclass; a
step that did not run is ``None``) and the :class:`QaMaps` a report draws (body
outline, uncertainty map, dose grids, gamma map, DVH curves). :func:`write_qa`
stores them as ``qa.json`` and ``qa_arrays.npz``; :func:`read_qa` is the one
reader, used by the report, the SR writer, the node and the tests. Nothing
downstream reads ``qa.json`` as a dict.

``qa.json`` layout (``schema_version`` 2)::

    {"schema_version": 2, "verdict": "PASS", "reasons": [...], "checks": [...],
     "site": "pelvis",
     "measurements": {"hu": ..., "composition": ..., "outline": ..., "dose": ..., ...},
     "context": {...}}

``measurements`` holds one entry per step that ran, named as the fields of
:class:`QaResult`; values are :func:`dosimetry.records.to_record` of the
dataclasses (non-finite numbers as ``"NaN"``/``"Infinity"``). ``context`` is
the caller's (the node's inputs, model card, date), kept as it was given. A
``qa.json`` of an earlier layout (no ``schema_version``) is refused with the
command that remakes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from dosimetry.coverage import FieldOfViewTruncation, SliceCoverage
from dosimetry.dvh import DoseMetricDifference, DvhComparison
from dosimetry.errors import DosimetryError
from dosimetry.hu_statistics import HuStatistics
from dosimetry.image_metrics import ImageMetrics
from dosimetry.outline import MaskAgreement
from dosimetry.plans import PhotonPlan
from dosimetry.records import from_record, to_record
from dosimetry.tissue_composition import TissueComposition
from dosimetry.uncertainty import UncertaintyRegion
from dosimetry.verdict import Check, Verdict
from models.fileio import fsync_directory, write_atomic
from models.volume import Volume

__all__ = [
    "QA_ARRAYS", "QA_JSON", "SCHEMA_VERSION", "CompositionMeasurement", "DoseComparison", "DvhCurve",
    "GammaSummary", "GuardJudgement", "HuReferenceDistance", "Normalisation", "QaMaps", "QaRecord", "QaResult",
    "StructureDvh", "read_qa", "result_from_record", "result_record", "write_qa",
]

SCHEMA_VERSION = 2
QA_JSON = "qa.json"
QA_ARRAYS = "qa_arrays.npz"


@dataclass(frozen=True)
class CompositionMeasurement:
    """The tissue composition of the sCT body and what its soft-tissue peak is judged against."""

    site: str
    soft_tissue_expected_hu: float
    tissue: TissueComposition


@dataclass(frozen=True)
class HuReferenceDistance:
    """Distance of the body HU distribution from the nearest CT of the site's reference (dosimetry.hu_reference)."""

    distance_hu: float
    nearest_case: str
    cases: int
    #: Each reference CT's distance to its nearest other one: the reference's own spread.
    leave_one_out_hu: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class GuardJudgement:
    """The input guard's judgement of the MR for the model that made the sCT (models.envelope.GuardResult)."""

    #: ok, soft, hard (a mismatch the route generated anyway) or unjudged.
    verdict: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Normalisation:
    """Where the plan's dose was made the prescription, and by what factor (dosimetry.qa._normalise)."""

    method: str
    #: "isocentre" or "median dose of <structure>".
    at: str
    structure: str | None
    point_mm: tuple[float, float, float] | None
    #: The reference dose there after scaling, and what it should be.
    reference_dose_gy: float
    prescription_gy: float
    percent_of_prescription: float
    #: The factor applied to both doses (a template plan's MU were scaled by it too); 1: unscaled.
    dose_scale: float
    #: The reference dose there before scaling, in percent of the reference's maximum.
    percent_of_maximum: float


@dataclass(frozen=True)
class GammaSummary:
    """The gamma comparison of the sCT dose against the reference dose."""

    pass_rate_percent: float
    dose_percent: float
    distance_mm: float
    low_dose_cutoff_percent: float
    #: "global": the dose criterion is a share of the reference's maximum.
    normalisation: str
    max_gamma: float

    @property
    def criteria_text(self) -> str:
        return (f"{self.dose_percent:g} %/{self.distance_mm:g} mm, {self.normalisation}, "
                f"cut-off {self.low_dose_cutoff_percent:g} %")


@dataclass(frozen=True)
class StructureDvh:
    """The DVH metrics of one structure under the reference and the sCT dose."""

    #: "target" or "organ".
    role: str
    comparison: DvhComparison

    @property
    def structure(self) -> str:
        return self.comparison.structure

    @property
    def worst(self) -> DoseMetricDifference:
        """The dose metric with the largest difference: what the structure's check judges."""
        return max(self.comparison.dose_differences, key=lambda d: abs(d.difference_percent_of_prescription))


@dataclass(frozen=True)
class DoseComparison:
    """The plan computed on the sCT and on the reference: normalisation, maxima, gamma, DVHs."""

    plan: PhotonPlan
    #: "real CT" or "bulk-density sCT".
    reference: str
    #: Dose per fraction the differences are expressed against.
    prescription_gy: float
    grid_spacing_mm: tuple[float, float, float]
    normalisation: Normalisation
    max_dose_sct_gy: float
    max_dose_reference_gy: float
    gamma: GammaSummary
    #: sCT minus reference where the reference is at least 10 % of its maximum and both doses exist, signed.
    largest_difference_percent: float
    dvh: tuple[StructureDvh, ...] = ()

    @property
    def monitor_units(self) -> dict[str, float]:
        return {beam.name: beam.monitor_units for beam in self.plan.beams}

    def dvh_of(self, structure: str) -> StructureDvh | None:
        return next((d for d in self.dvh if d.structure == structure), None)


@dataclass(frozen=True)
class QaResult:
    """Verdict, reasons, checks and every measurement of one QA; ``None`` for a step that did not run.

    A refusal notice (no sCT) carries only its ``input_envelope`` check and ``input_guard``.
    """

    verdict: Verdict
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    site: str | None = None
    hu: HuStatistics | None = None
    composition: CompositionMeasurement | None = None
    hu_reference: HuReferenceDistance | None = None
    #: sCT outline (first) against the MR body mask (second).
    outline: MaskAgreement | None = None
    slice_coverage: SliceCoverage | None = None
    field_of_view: FieldOfViewTruncation | None = None
    uncertainty: UncertaintyRegion | None = None
    #: Against a real CT on the sCT's grid (commissioning).
    image_metrics: ImageMetrics | None = None
    input_guard: GuardJudgement | None = None
    dose: DoseComparison | None = None

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


#: The measurement fields of QaResult, in qa.json order.
_MEASUREMENTS = tuple(f.name for f in dataclasses.fields(QaResult)
                      if f.name not in ("verdict", "reasons", "checks", "site"))


@dataclass(frozen=True, eq=False)
class DvhCurve:
    """Cumulative DVHs of one structure under both doses, on common dose bins.

    ``dose_gy`` ascends; the volumes are the percent of the structure receiving at least that dose.
    """

    structure: str
    role: str
    dose_gy: np.ndarray
    reference_volume_percent: np.ndarray
    sct_volume_percent: np.ndarray


@dataclass(frozen=True, eq=False)
class QaMaps:
    """What a report draws: arrays on the sCT grid (body, uncertainty) and on the dose grid (doses, gamma).

    ``gamma`` is NaN where it was not evaluated (below the low-dose cut-off).
    """

    body_mask: np.ndarray | None = None
    uncertainty_hu: np.ndarray | None = None
    dose_sct_gy: Volume | None = None
    dose_reference_gy: Volume | None = None
    dose_difference_percent: Volume | None = None
    gamma: Volume | None = None
    dvh_curves: tuple[DvhCurve, ...] = ()


_DOSE_MAPS = ("dose_sct_gy", "dose_reference_gy", "dose_difference_percent", "gamma")


@dataclass(frozen=True, eq=False)
class QaRecord:
    """A QA as run (:func:`dosimetry.qa.run_qa`) or read back (:func:`read_qa`).

    Attributes
    ----------
    result : QaResult
    maps : QaMaps
    context : mapping or None
        The caller's record of what the QA ran on (given to :func:`write_qa`); None for a fresh run.
    digest : str
        SHA-256 of the ``qa.json`` read ("" for a fresh run): identifies the content a report is made of.
    """

    result: QaResult
    maps: QaMaps = field(default_factory=QaMaps)
    context: Mapping | None = None
    digest: str = ""

    @property
    def verdict(self) -> Verdict:
        return self.result.verdict


def result_record(result: QaResult) -> dict:
    """``result`` as the JSON-ready dict ``qa.json`` holds (without ``context``)."""
    measurements = {name: to_record(getattr(result, name)) for name in _MEASUREMENTS
                    if getattr(result, name) is not None}
    return {"schema_version": SCHEMA_VERSION, "verdict": result.verdict.value, "reasons": list(result.reasons),
            "checks": to_record(result.checks), "site": result.site, "measurements": measurements}


def result_from_record(content: Any, what: str = "QA result") -> QaResult:
    """Inverse of :func:`result_record`.

    Raises
    ------
    DosimetryError
        For content of an earlier layout or any malformed field (named).
    """
    if not isinstance(content, Mapping):
        raise DosimetryError(f"{what} must be a JSON object; found {type(content).__name__}")
    version = content.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DosimetryError(f"{what} has layout version {version!r}, this sct-node reads {SCHEMA_VERSION}: it was "
                             "written by an earlier sct-node; run `sct-node qa` on the sCT again to remake it")
    measurements = content.get("measurements") or {}
    unknown = set(measurements) - set(_MEASUREMENTS)
    if unknown:
        raise DosimetryError(f"{what} has unknown measurements {sorted(unknown)}; known: {', '.join(_MEASUREMENTS)}")
    fields = {"verdict": content.get("verdict"), "reasons": content.get("reasons"), "checks": content.get("checks"),
              "site": content.get("site")} | dict(measurements)
    return from_record(QaResult, fields, what)


def write_qa(record: QaRecord, output_dir: Path, context: Any = None) -> Path:
    """Write ``qa.json`` (and ``qa_arrays.npz`` with the maps) into ``output_dir``, each atomically and durably
    (:func:`models.fileio.write_atomic`; raises OSError).

    Parameters
    ----------
    context : dataclass, mapping or None
        What the caller knows and the QA does not (input paths, model card, software version, date);
        stored under ``"context"`` so a report can be rebuilt from the folder alone.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    arrays = _map_arrays(record.maps)
    if arrays:  # the arrays first: a qa.json never names arrays that are not there
        # numpy's stub lets **kwds fill its allow_pickle: bool too, so a dict of arrays does not type-check
        write_atomic(output_dir / QA_ARRAYS,
                     lambda stream: np.savez_compressed(stream, **arrays))  # type: ignore[arg-type]
    content = result_record(record.result)
    if context is not None:
        content["context"] = to_record(context)
    path = output_dir / QA_JSON
    write_atomic(path, json.dumps(content, indent=2, allow_nan=False).encode("utf-8"))
    fsync_directory(output_dir)
    return path


def read_qa(folder: Path, *, maps: bool = True) -> QaRecord:
    """The QA a folder holds (``qa.json``, and ``qa_arrays.npz`` unless ``maps`` is False).

    Raises
    ------
    DosimetryError
        No ``qa.json``, unreadable or malformed content (the field is named), or unreadable arrays.
    """
    path = Path(folder) / QA_JSON
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DosimetryError(f"{path}: cannot read the QA result ({error})") from None
    result = result_from_record(content, str(path))
    context = content.get("context")
    if context is not None and not isinstance(context, Mapping):
        raise DosimetryError(f"{path}: 'context' must be an object; found {type(context).__name__}")
    return QaRecord(result, _read_maps(Path(folder) / QA_ARRAYS) if maps else QaMaps(), context,
                    hashlib.sha256(text.encode("utf-8")).hexdigest())


def _map_arrays(maps: QaMaps) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if maps.body_mask is not None:
        arrays["body_mask"] = np.asarray(maps.body_mask, dtype=bool)
    if maps.uncertainty_hu is not None:
        arrays["uncertainty_hu"] = np.asarray(maps.uncertainty_hu, dtype=np.float32)
    doses = {name: getattr(maps, name) for name in _DOSE_MAPS if getattr(maps, name) is not None}
    if doses:
        grid = next(iter(doses.values()))
        for name, volume in doses.items():
            if not volume.same_grid(grid):
                raise DosimetryError(f"QA map {name} is not on the dose grid of the others")
            arrays[name] = np.asarray(volume.array, dtype=np.float32)
        arrays.update(dose_grid_spacing_mm=np.asarray(grid.spacing_mm), dose_grid_origin_mm=np.asarray(grid.origin_mm),
                      dose_grid_direction=np.asarray(grid.direction))
    if maps.dvh_curves:
        arrays["dvh_curve_structures"] = np.asarray([c.structure for c in maps.dvh_curves], dtype=str)
        arrays["dvh_curve_roles"] = np.asarray([c.role for c in maps.dvh_curves], dtype=str)
        for index, curve in enumerate(maps.dvh_curves):  # Gy, % volume (reference), % volume (sCT)
            arrays[f"dvh_curve_{index}"] = np.stack([curve.dose_gy, curve.reference_volume_percent,
                                                     curve.sct_volume_percent]).astype(np.float64)
    return arrays


def _read_maps(path: Path) -> QaMaps:
    if not path.exists():
        return QaMaps()
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise DosimetryError(f"{path}: cannot read the QA arrays ({error})") from None
    doses: dict[str, Volume] = {}
    if "dose_sct_gy" in arrays:
        try:
            # As read; Volume checks there are three of each (a GeometryError otherwise).
            spacing = cast("tuple[float, float, float]", tuple(float(v) for v in arrays["dose_grid_spacing_mm"]))
            origin = cast("tuple[float, float, float]", tuple(float(v) for v in arrays["dose_grid_origin_mm"]))
            direction = np.asarray(arrays["dose_grid_direction"], dtype=np.float64)
        except KeyError as error:
            raise DosimetryError(f"{path}: the dose maps lack their grid ({error})") from None
        doses = {name: Volume(arrays[name].astype(np.float32), spacing, origin, direction)
                 for name in _DOSE_MAPS if name in arrays}
    names, roles = list(arrays.get("dvh_curve_structures", [])), list(arrays.get("dvh_curve_roles", []))
    curves = []
    for index, (name, role) in enumerate(zip(names, roles)):
        stacked = arrays.get(f"dvh_curve_{index}")
        if stacked is None or stacked.shape[0] != 3:
            raise DosimetryError(f"{path}: DVH curve {index} ({name}) is missing or malformed")
        curves.append(DvhCurve(str(name), str(role), stacked[0], stacked[1], stacked[2]))
    body = arrays.get("body_mask")
    return QaMaps(body_mask=body.astype(bool) if body is not None else None, uncertainty_hu=arrays.get("uncertainty_hu"),
                  dvh_curves=tuple(curves), **doses)
