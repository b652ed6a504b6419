"""Build the bundle that leaves the node with every synthetic CT.

From a QA folder and its sCT series this writes, all in the MR's study and
frame of reference:

========================  =======================================  ==========
object                    file                                     modality
========================  =======================================  ==========
RT Structure Set          ``rt/RS.sct.dcm``                        RTSTRUCT
RT Plan (template only)   ``rt/RP.qa-template.dcm``                RTPLAN
RT Dose on the sCT        ``rt/RD.sct.dcm`` (optional)             RTDOSE
Structured Report         ``report/SR.qa.dcm``                     SR
Encapsulated PDF          ``report/DOC.qa.dcm``                    DOC
the PDF itself            ``report/sct-qa-report.pdf``             (no DICOM)
========================  =======================================  ==========

The sCT series itself (``sct/``) is written by the node once, after the QA,
already marked with its verdict. The verdict is visible before anyone opens a
file: the Series Description of every object written here starts with
``QA FAIL`` (or ``QA WARN``) when that is the verdict, and the sCT's does too
(:func:`verdict_prefix`; :func:`mark_sct_series` marks a copied series,
``sct-node report``, and a held series from an older node when released).

UIDs are derived from the sCT series, the object's role and a hash of
``qa.json``: rebuilding the bundle from the same QA gives the same UIDs (a
re-delivery replaces rather than duplicates), a different QA result new ones.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dosimetry.verdict import Verdict
from sct_node.dicom.image_writer import write_dataset_atomic
from sct_node.dicom.uids import derive_uid
from sct_node.errors import OutputError
from sct_node.job_folder import JobFolder
from sct_node.report.context import QaFolder, load_qa_folder

__all__ = ["Bundle", "build_bundle", "mark_sct_series", "verdict_prefix"]

logger = logging.getLogger(__name__)

PDF_NAME = "sct-qa-report.pdf"


@dataclass(frozen=True)
class Bundle:
    """What :func:`build_bundle` wrote.

    Attributes
    ----------
    verdict : str
        PASS, WARN or FAIL.
    pdf : pathlib.Path
        The report as a plain PDF file.
    report_files : tuple of pathlib.Path
        DICOM report objects (SR, Encapsulated PDF): always delivered.
    rt_files : tuple of pathlib.Path
        DICOM RT objects on the sCT (structure set, plan, dose): delivered with the sCT.
    """

    verdict: Verdict
    pdf: Path
    report_files: tuple[Path, ...]
    rt_files: tuple[Path, ...]


def verdict_prefix(verdict: Verdict) -> str:
    """``"QA FAIL "`` / ``"QA WARN "`` / ``""``: what Series Descriptions start with."""
    return f"QA {verdict} " if verdict in (Verdict.FAIL, Verdict.WARN) else ""


def build_bundle(qa_dir: Path, output_dir: Path, *, rt_dose: bool = True, copy_sct: bool = False) -> Bundle:
    """Write the report bundle of one QA folder into ``output_dir``.

    Parameters
    ----------
    qa_dir : pathlib.Path
        Folder with ``qa.json`` (and ``qa_arrays.npz``), see :mod:`sct_node.report.context`.
    output_dir : pathlib.Path
        Gets ``report/`` and ``rt/`` (and ``sct/`` with ``copy_sct``).
    rt_dose : bool
        Write the dose on the sCT as RT Dose (with the template RT Plan it references) when a dose was computed.
    copy_sct : bool
        Copy the sCT series into ``output_dir/sct`` so the folder holds the whole bundle (``sct-node report``),
        marked with the verdict like the node's.

    Raises
    ------
    InputError
        The QA folder or its sCT cannot be read.
    OutputError
        An object cannot be written.
    """
    from sct_node.dicom.encapsulated_pdf import write_encapsulated_pdf
    from sct_node.dicom.qa_sr import write_qa_sr
    from sct_node.report.pdf import render_report_pdf
    from sct_node.report.structures import (
        qa_structure_rois,
        sct_rois,
        write_sct_structures,
    )

    folder = load_qa_folder(qa_dir)
    data, sct = folder.data, folder.sct
    output_dir = Path(output_dir)
    report_dir, rt_dir = output_dir / JobFolder.REPORT, output_dir / JobFolder.RT
    for stale in (report_dir, rt_dir):  # a rebuild replaces, never mixes two QA results
        shutil.rmtree(stale, ignore_errors=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    rt_dir.mkdir(parents=True, exist_ok=True)
    if copy_sct:
        _copy_series(sct.files, output_dir / JobFolder.SCT)

    verdict = data.verdict
    prefix = verdict_prefix(verdict)
    digest = folder.digest[:16]
    source = sct.series_instance_uid

    def uids(role: str) -> tuple[str, str]:
        return derive_uid(source, "qa-bundle", role, digest, "instance"), derive_uid(source, "qa-bundle", role,
                                                                                       digest, "series")

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sct.files]
    rt_files: list[Path] = []
    structure_uid = None
    roi_numbers: dict[str, int] = {}
    if data.body_mask is not None:
        flagged = (data.uncertainty_hu, data.qa.uncertainty.level_hu) \
            if data.uncertainty_hu is not None and data.qa.uncertainty is not None else ()
        rois = sct_rois(data.sct, data.body_mask, *flagged)
        # The structures behind the DVH checks.
        judged = {d.structure for d in data.qa.dose.dvh} if data.qa.dose is not None else set()
        rois += qa_structure_rois([s for s in data.structures if s.name in judged])
        roi_numbers = {roi.name: number for number, roi in enumerate(rois, start=1)}  # write_rtstruct's numbering
        if rois:
            structure_uid, series_uid = uids("rtstruct")
            rt_files.append(write_sct_structures(
                rois=rois, sct=data.sct, sct_files=sct.files, path=rt_dir / "RS.sct.dcm",
                sop_instance_uid=structure_uid, series_instance_uid=series_uid,
                series_description=f"{prefix}sCT structures (sct-node QA)"))
    if rt_dose and data.has_dose:
        rt_files.extend(_dose_objects(folder, headers, rt_dir, uids, prefix, structure_uid, roi_numbers))

    pdf = render_report_pdf(data, report_dir / PDF_NAME)
    sr_uid, sr_series = uids("sr")
    sr = write_qa_sr(qa=data.qa, sct_headers=headers, path=report_dir / "SR.qa.dcm", sop_instance_uid=sr_uid,
                     series_instance_uid=sr_series, series_description=f"{prefix}sCT QA {verdict} measurements",
                     model_identity=data.model_card.get("identity", ""))
    doc_uid, doc_series = uids("pdf")
    doc = write_encapsulated_pdf(pdf_path=pdf, sct_headers=headers, path=report_dir / "DOC.qa.dcm",
                                 sop_instance_uid=doc_uid, series_instance_uid=doc_series,
                                 series_description=f"{prefix}sCT QA {verdict} report",
                                 document_title=f"Synthetic CT QA report: {verdict}")
    if copy_sct:  # the copy is delivered as part of this bundle: mark it as the node marks its sCT
        mark_sct_series(sorted((output_dir / JobFolder.SCT).glob("*.dcm")), verdict)
    return Bundle(verdict, pdf, (sr, doc), tuple(rt_files))


def _dose_objects(folder: QaFolder, headers: Sequence[pydicom.Dataset], rt_dir: Path,
                  uids: Callable[[str], tuple[str, str]], prefix: str, structure_uid: str | None,
                  roi_numbers: dict[str, int]) -> list[Path]:
    from sct_node.dicom.rtdose_writer import write_rt_dose
    from sct_node.dicom.rtplan_writer import write_rt_plan

    data = folder.data
    dose = data.qa.dose
    plan = dose.plan if dose is not None else None
    files = []
    plan_uid = plan.sop_instance_uid if plan is not None else None
    if dose is not None and plan is not None and plan.is_template:
        plan_uid, plan_series = uids("rtplan")
        normalised_on = dose.normalisation.structure  # None: normalised at a point
        files.append(write_rt_plan(plan=plan, sct_headers=headers, path=rt_dir / "RP.qa-template.dcm",
                                   sop_instance_uid=plan_uid, series_instance_uid=plan_series,
                                   series_description=f"{prefix}QA template plan (not for treatment)",
                                   referenced_structure_set_uid=structure_uid,
                                   dose_reference_roi_number=roi_numbers.get(normalised_on)
                                   if structure_uid and normalised_on is not None else None))
    dose_uid, dose_series = uids("rtdose")
    assert data.dose_sct_gy is not None  # build_bundle asks for the dose objects only when data.has_dose
    files.append(write_rt_dose(
        dose_gy=data.dose_sct_gy, sct_headers=headers, path=rt_dir / "RD.sct.dcm", sop_instance_uid=dose_uid,
        series_instance_uid=dose_series, series_description=f"{prefix}QA dose on the sCT (not for treatment)",
        referenced_plan_uid=plan_uid,
        comment=f"{data.plan_label or 'plan'} on the sCT, per fraction; sct-node QA engine"))
    return files


def mark_sct_series(files: Iterable[Path], verdict: Verdict) -> int:
    """Put ``QA FAIL`` / ``QA WARN`` at the start of the sCT's Series Description (atomic rewrite per file).

    Returns the number of files changed; a PASS (or an already marked series) changes nothing.
    """
    prefix = verdict_prefix(verdict)
    if not prefix:
        return 0
    changed = 0
    for path in files:
        dataset = pydicom.dcmread(path)
        description = str(dataset.get("SeriesDescription", "") or "")
        if description.startswith(prefix):
            continue
        dataset.SeriesDescription = (prefix + description)[:64]
        write_dataset_atomic(dataset, Path(path))
        changed += 1
    return changed


def _copy_series(files: Iterable[Path], folder: Path) -> None:
    try:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in files:
            shutil.copy2(path, folder / Path(path).name)
    except OSError as error:
        raise OutputError(f"{folder}: cannot copy the sCT series ({error})") from None
