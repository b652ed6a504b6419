"""Read a QA folder (and the series it names) into a :class:`~sct_node.report.data.ReportData`.

A QA folder holds ``qa.json`` — every measurement, check and verdict, plus a
``context`` section naming the inputs (sCT folder, MR files, reference CT,
plan, structures), the model card, the software version and the date — and
``qa_arrays.npz`` with the body outline, the uncertainty map, the dose grids,
the gamma map and the DVH curves. Together with the sCT series this is enough
to rebuild the whole report bundle without running the model or the QA again
(``sct-node report``).

Paths in the context are absolute; when the job folder has moved, the sCT is
looked for next to the QA folder (``../sct``), as the node lays jobs out.
Inputs that are optional for the report (MR, reference CT, structures) and no
longer exist are left out with a warning; a missing sCT is an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from dosimetry.errors import DosimetryError
from dosimetry.plans import PhotonPlan
from models.volume import Volume
from sct_node import __version__
from sct_node.dicom.reader import ImageSeries, read_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE
from sct_node.errors import InputError, SctNodeError
from sct_node.report.data import DvhCurve, Identifiers, ReportData, StructureOutline

__all__ = ["QaFolder", "load_qa_folder", "qa_context"]

logger = logging.getLogger(__name__)

_TARGET_TYPES = ("PTV", "CTV", "GTV")


@dataclass(frozen=True)
class QaFolder:
    """A QA folder read back: the report's data plus what the DICOM writers need.

    Attributes
    ----------
    data : ReportData
    sct : ImageSeries
        The sCT series (files and headers the bundle references).
    plan : PhotonPlan or None
        The plan the dose was computed with (None without a dose).
    qa_json : str
        The raw ``qa.json`` text (its hash identifies the report's content).
    """

    data: ReportData
    sct: ImageSeries
    plan: PhotonPlan | None
    qa_json: str


def qa_context(*, sct_dir: Path, model_card: dict | None, mr_files=(), mr_series_uid: str = "",
               mr_series_description: str = "", reference_ct_files=(), structures_file: Path | None = None,
               plan_file: Path | None = None, site: str = "pelvis") -> dict:
    """The ``context`` section of ``qa.json``: what the QA was run on (absolute paths)."""
    return {
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "software_version": __version__,
        "sct_dir": str(Path(sct_dir).resolve()),
        "mr_files": [str(Path(p).resolve()) for p in mr_files],
        "mr_series_uid": mr_series_uid,
        "mr_series_description": mr_series_description,
        "reference_ct_files": [str(Path(p).resolve()) for p in reference_ct_files],
        "structures_file": str(Path(structures_file).resolve()) if structures_file else None,
        "plan_file": str(Path(plan_file).resolve()) if plan_file else None,
        "site": site,
        "model_card": model_card,
    }


def load_qa_folder(qa_dir: Path) -> QaFolder:
    """Read ``qa.json``, ``qa_arrays.npz`` and the series they name.

    Raises
    ------
    InputError
        No ``qa.json``, unreadable content, or the sCT series cannot be found.
    """
    qa_dir = Path(qa_dir)
    json_path = qa_dir / "qa.json"
    try:
        text = json_path.read_text()
        qa = json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{json_path}: cannot read the QA result ({error})") from None
    for key in ("verdict", "checks", "measurements"):
        if key not in qa:
            raise InputError(f"{json_path}: not a QA result (no {key!r})")
    context = qa.get("context") or {}
    arrays = _arrays(qa_dir)
    sct = _sct_series(qa_dir, context)
    grid = sct.volume
    mr = _optional_series(context.get("mr_files") or [], "MR", grid)
    reference = _optional_series(context.get("reference_ct_files") or [], "reference CT", grid, ct=True)
    body = arrays.get("body_mask")
    body = body.astype(bool) if body is not None and body.shape == grid.shape else None
    uncertainty = arrays.get("uncertainty_hu")
    uncertainty = grid.with_array(uncertainty.astype(np.float32)) if uncertainty is not None else None

    dose = qa["measurements"].get("dose") or {}
    dose_volumes: dict[str, Volume | None] = {k: None for k in ("dose_sct_gy", "dose_reference_gy",
                                                                "dose_difference_percent", "gamma")}
    if "dose_sct_gy" in arrays:
        direction = arrays.get("dose_grid_direction", grid.direction)
        spacing = tuple(float(v) for v in arrays["dose_grid_spacing_mm"])
        origin = tuple(float(v) for v in arrays["dose_grid_origin_mm"])
        for key in dose_volumes:
            if key in arrays:
                dose_volumes[key] = Volume(arrays[key].astype(np.float32), spacing, origin, np.asarray(direction))
    plan = None
    if dose.get("plan_definition"):
        try:
            plan = PhotonPlan.from_dict(dose["plan_definition"])
        except DosimetryError as error:
            raise InputError(f"{json_path}: {error}") from None
    curves = tuple(DvhCurve(c["structure"], c["role"], arrays[c["array"]][0], arrays[c["array"]][1],
                            arrays[c["array"]][2])
                   for c in qa["measurements"].get("dvh_curves", []) if c.get("array") in arrays)
    outlines = ([StructureOutline("BODY", "body", body)] if body is not None else []) + _structures(context, grid)
    created = _created(context.get("created"))
    data = ReportData(
        qa=qa, identifiers=_identifiers(sct, context), model_card=_model_card(sct, context),
        software_version=str(context.get("software_version") or __version__), created=created,
        sct=grid, body_mask=body, mr=mr, reference_ct=reference, uncertainty_hu=uncertainty,
        dose_reference_name=str(dose.get("reference", "")), plan_label=dose.get("plan"),
        prescription_gy=dose.get("prescription_gy"), dvh_curves=curves, structures=tuple(outlines),
        **dose_volumes)
    return QaFolder(data, sct, plan, text)


def _arrays(qa_dir: Path) -> dict[str, np.ndarray]:
    path = qa_dir / "qa_arrays.npz"
    if not path.exists():
        return {}
    try:
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the QA arrays ({error})") from None


def _sct_series(qa_dir: Path, context: dict) -> ImageSeries:
    candidates = [Path(context["sct_dir"])] if context.get("sct_dir") else []
    candidates.append(qa_dir.parent / "sct")  # the node's job layout, after a move
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.dcm")):
            return read_series([folder], sop_classes=[CT_IMAGE_STORAGE])
    raise InputError(f"{qa_dir}: the synthetic CT series is not found (looked in "
                     f"{', '.join(str(c) for c in candidates)})")


def _optional_series(files: list[str], what: str, grid: Volume, ct: bool = False) -> Volume | None:
    present = [Path(f) for f in files if Path(f).exists()]
    if not files:
        return None
    if len(present) < len(files):
        logger.warning("the %s the QA used is no longer complete on disk (%d of %d files); the report leaves it out",
                       what, len(present), len(files))
        return None
    try:
        series = read_series(present, sop_classes=[CT_IMAGE_STORAGE]) if ct else read_series(present)
    except SctNodeError as error:
        logger.warning("the %s the QA used cannot be read (%s); the report leaves it out", what, error)
        return None
    if not series.volume.same_grid(grid):
        logger.warning("the %s is not on the sCT's grid; the report leaves it out", what)
        return None
    return series.volume


def _structures(context: dict, grid: Volume) -> list[StructureOutline]:
    from dosimetry.structures import read_structures

    path = context.get("structures_file")
    if not path or not Path(path).exists():
        return []
    try:
        masks = read_structures(Path(path), grid, allow_empty=True)
    except DosimetryError as error:
        logger.warning("the structures the QA used cannot be drawn (%s)", error)
        return []
    outlines = []
    for structure in masks:
        kind = structure.interpreted_type.upper()
        if kind == "EXTERNAL" or not structure.mask.any():
            continue
        role = "target" if kind in _TARGET_TYPES or "PTV" in structure.name.upper() else "organ"
        outlines.append(StructureOutline(structure.name, role, structure.mask, kind))
    return outlines


def _identifiers(sct: ImageSeries, context: dict) -> Identifiers:
    header = sct.header

    def text(keyword: str) -> str:
        return str(header.get(keyword, "") or "")

    return Identifiers(
        patient_name=text("PatientName"), patient_id=text("PatientID"), patient_birth_date=text("PatientBirthDate"),
        study_instance_uid=text("StudyInstanceUID"), study_date=text("StudyDate"),
        study_description=text("StudyDescription"),
        mr_series_instance_uid=str(context.get("mr_series_uid") or _source_series(header)),
        mr_series_description=str(context.get("mr_series_description") or ""),
        sct_series_instance_uid=text("SeriesInstanceUID"), sct_series_description=text("SeriesDescription"),
        frame_of_reference_uid=text("FrameOfReferenceUID"))


def _source_series(header: pydicom.Dataset) -> str:
    for item in header.get("ReferencedSeriesSequence", []) or []:
        return str(item.get("SeriesInstanceUID", ""))
    return ""


def _model_card(sct: ImageSeries, context: dict) -> dict:
    """The model card from the QA context, else what the sCT's Contributing Equipment says."""
    card = context.get("model_card")
    if card:
        return {str(k): str(v) for k, v in card.items()}
    for item in sct.header.get("ContributingEquipmentSequence", []) or []:
        description = str(item.get("ContributionDescription", "") or "")
        identity = description.rsplit("Model identity ", 1)[-1].rstrip(".") if "Model identity " in description else ""
        name = str(item.get("ManufacturerModelName", "") or "").removeprefix("sct-node model ")
        versions = item.get("SoftwareVersions", [])
        versions = [versions] if isinstance(versions, str) else list(versions)
        return {"name": name, "version": str(versions[-1]) if versions else "", "description": description,
                "content_hash": identity.rsplit(":", 1)[-1] if identity else "", "identity": identity,
                "intended_use": "not known here: the model card was not available to this report (hand-run QA)",
                "known": "header"}
    return {"name": "unknown", "version": "", "description": "", "content_hash": "", "identity": "unknown",
            "intended_use": "not known: no model card and no Contributing Equipment on the sCT", "known": "no"}


def _created(value) -> _dt.datetime:
    try:
        return _dt.datetime.fromisoformat(value) if value else _dt.datetime.now().astimezone()
    except ValueError:
        return _dt.datetime.now().astimezone()
