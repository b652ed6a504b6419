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
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from dosimetry.errors import DosimetryError
from dosimetry.qa_result import QaRecord, read_qa
from dosimetry.records import from_record
from models.volume import Volume
from sct_node import __version__
from sct_node.dicom.reader import ImageSeries, read_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE
from sct_node.errors import InputError, SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.report.data import Identifiers, ReportData, StructureOutline

__all__ = ["QaContext", "QaFolder", "load_qa_folder", "qa_context"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class QaFolder:
    """A QA folder read back: the report's data plus what the DICOM writers need.

    Attributes
    ----------
    data : ReportData
    sct : ImageSeries
        The sCT series (files and headers the bundle references).
    digest : str
        SHA-256 of ``qa.json``: identifies the report's content (the bundle's UIDs derive from it).
    """

    data: ReportData
    sct: ImageSeries
    digest: str


@dataclass(frozen=True)
class QaContext:
    """The ``context`` section of ``qa.json``: what the QA was run on (absolute paths), by whom, when."""

    created: str
    software_version: str
    sct_dir: str
    mr_files: tuple[str, ...] = ()
    mr_series_uid: str = ""
    mr_series_description: str = ""
    reference_ct_files: tuple[str, ...] = ()
    structures_file: str | None = None
    plan_file: str | None = None
    site: str = "pelvis"
    #: The model card of the model that made the sCT (name, version, identity, ...); None for a hand-run QA.
    model_card: dict[str, str] | None = field(default=None)
    #: What fetching reference data from the PACS did: fetched, or could not be and what the QA used instead
    #: (sct_node.node.retrieve). Empty when nothing was fetched for.
    reference_notes: tuple[str, ...] = ()


def qa_context(*, sct_dir: Path, model_card: Mapping[str, object] | None, mr_files: Iterable[str | Path] = (),
               mr_series_uid: str = "", mr_series_description: str = "",
               reference_ct_files: Iterable[str | Path] = (), structures_file: Path | None = None,
               plan_file: Path | None = None, site: str = "pelvis",
               reference_notes: Iterable[str] = ()) -> QaContext:
    """What the QA was run on, for ``qa.json`` (:func:`dosimetry.qa_result.write_qa`'s ``context``)."""
    return QaContext(
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        software_version=__version__,
        sct_dir=str(Path(sct_dir).resolve()),
        mr_files=tuple(str(Path(p).resolve()) for p in mr_files),
        mr_series_uid=mr_series_uid,
        mr_series_description=mr_series_description,
        reference_ct_files=tuple(str(Path(p).resolve()) for p in reference_ct_files),
        structures_file=str(Path(structures_file).resolve()) if structures_file else None,
        plan_file=str(Path(plan_file).resolve()) if plan_file else None,
        site=site,
        model_card={str(k): str(v) for k, v in model_card.items()} if model_card else None,
        reference_notes=tuple(str(note) for note in reference_notes),
    )


def load_qa_folder(qa_dir: Path) -> QaFolder:
    """Read the QA (:func:`dosimetry.qa_result.read_qa`) and the series it names.

    Raises
    ------
    InputError
        No ``qa.json``, unreadable or malformed content, or the sCT series cannot be found.
    """
    qa_dir = Path(qa_dir)
    try:
        record = read_qa(qa_dir)
        context = (from_record(QaContext, dict(record.context), f"{qa_dir / 'qa.json'} context")
                   if record.context is not None else None)
    except DosimetryError as error:
        raise InputError(str(error)) from None
    return _folder(qa_dir, record, context)


def _folder(qa_dir: Path, record: QaRecord, context: QaContext | None) -> QaFolder:
    maps, qa = record.maps, record.result
    sct = _sct_series(qa_dir, context)
    grid = sct.volume
    mr = _optional_series(context.mr_files if context else (), "MR", grid)
    reference = _optional_series(context.reference_ct_files if context else (), "reference CT", grid, ct=True)
    body = maps.body_mask if maps.body_mask is not None and maps.body_mask.shape == grid.shape else None
    uncertainty = grid.with_array(maps.uncertainty_hu.astype(np.float32)) \
        if maps.uncertainty_hu is not None and maps.uncertainty_hu.shape == grid.shape else None
    outlines = ([StructureOutline("BODY", "body", body)] if body is not None else []) + _structures(context, grid)
    data = ReportData(
        qa=qa, identifiers=_identifiers(sct, context), model_card=_model_card(sct, context),
        software_version=context.software_version if context else __version__,
        created=_created(context.created if context else None),
        sct=grid, body_mask=body, mr=mr, reference_ct=reference, uncertainty_hu=uncertainty,
        dose_sct_gy=maps.dose_sct_gy, dose_reference_gy=maps.dose_reference_gy,
        dose_difference_percent=maps.dose_difference_percent, gamma=maps.gamma,
        dvh_curves=maps.dvh_curves, structures=tuple(outlines),
        reference_notes=context.reference_notes if context else ())
    return QaFolder(data, sct, record.digest)


def _sct_series(qa_dir: Path, context: QaContext | None) -> ImageSeries:
    candidates = [Path(context.sct_dir)] if context is not None and context.sct_dir else []
    candidates.append(qa_dir.parent / JobFolder.SCT)  # the node's job layout, after a move
    candidates.append(qa_dir.parent / JobFolder.HELD / JobFolder.SCT)  # held back after a QA FAIL
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.dcm")):
            return read_series([folder], sop_classes=[CT_IMAGE_STORAGE])
    raise InputError(f"{qa_dir}: the synthetic CT series is not found (looked in "
                     f"{', '.join(str(c) for c in candidates)})")


def _optional_series(files: tuple[str, ...], what: str, grid: Volume, ct: bool = False) -> Volume | None:
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


def _structures(context: QaContext | None, grid: Volume) -> list[StructureOutline]:
    from dosimetry.qa import is_target
    from dosimetry.structures import read_structures

    path = context.structures_file if context is not None else None
    if not path or not Path(path).exists():
        return []
    try:
        masks = read_structures(Path(path), grid, allow_empty=True)
    except DosimetryError as error:
        logger.warning("the structures the QA used cannot be drawn (%s)", error)
        return []
    outlines: list[StructureOutline] = []
    for structure in masks:
        kind = structure.interpreted_type.upper()
        if kind == "EXTERNAL" or not structure.mask.any():
            continue
        role = "target" if is_target(structure) else "organ"
        outlines.append(StructureOutline(structure.name, role, structure.mask, kind))
    return outlines


def _identifiers(sct: ImageSeries, context: QaContext | None) -> Identifiers:
    header = sct.header

    def text(keyword: str) -> str:
        return str(header.get(keyword, "") or "")

    return Identifiers(
        patient_name=text("PatientName"), patient_id=text("PatientID"), patient_birth_date=text("PatientBirthDate"),
        study_instance_uid=text("StudyInstanceUID"), study_date=text("StudyDate"),
        study_description=text("StudyDescription"),
        mr_series_instance_uid=(context.mr_series_uid if context else "") or _source_series(header),
        mr_series_description=context.mr_series_description if context else "",
        sct_series_instance_uid=text("SeriesInstanceUID"), sct_series_description=text("SeriesDescription"),
        frame_of_reference_uid=text("FrameOfReferenceUID"))


def _source_series(header: pydicom.Dataset) -> str:
    for item in header.get("ReferencedSeriesSequence", []) or []:
        return str(item.get("SeriesInstanceUID", ""))
    return ""


def _model_card(sct: ImageSeries, context: QaContext | None) -> dict[str, str]:
    """The model card from the QA context, else what the sCT's Contributing Equipment says."""
    if context is not None and context.model_card:
        return dict(context.model_card)
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


def _created(value: str | None) -> _dt.datetime:
    try:
        return _dt.datetime.fromisoformat(value) if value else _dt.datetime.now().astimezone()
    except ValueError:
        return _dt.datetime.now().astimezone()
