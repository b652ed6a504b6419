"""The notice a node sends when its input guard refused a series: no sCT, but an SR and a PDF saying why.

A refused series must not vanish silently: the physicist who expects an sCT in the planning system gets, in the
MR's patient and study, an Enhanced SR (the same QA template as every report, overall verdict FAIL, one check:
``input_envelope``) and an Encapsulated PDF of one page that names the model, the route's policy, every reason
the guard gave, what it could not judge (header fields missing), and how to generate an sCT anyway. Both
reference the MR series as their evidence. ``sct-node status`` shows the same reason on the job.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from dosimetry.qa import input_envelope_check
from dosimetry.qa_result import GuardJudgement, QaResult, result_record
from dosimetry.verdict import Verdict
from models.envelope import GuardResult
from models.fileio import write_atomic
from sct_node import __version__
from sct_node.dicom.encapsulated_pdf import write_encapsulated_pdf
from sct_node.dicom.qa_sr import write_qa_sr
from sct_node.dicom.uids import derive_uid
from sct_node.errors import OutputError

__all__ = ["REFUSAL_PDF", "write_refusal_notice"]

REFUSAL_PDF = "sCT-refused.pdf"
_PAGE_IN = (8.27, 11.69)  # A4 portrait, as the QA report


def _refusal_qa(result: GuardResult, model_name: str, policy: str) -> QaResult:
    """A QA of one check, ``input_envelope``, and no other step (there is no sCT to measure)."""
    check = input_envelope_check((result.verdict, tuple(result.reasons)))
    headline = (f"no sCT was generated: the input guard found a {result.verdict} mismatch between this MR and the "
                f"training envelope of model {model_name}, and the route refuses it (on_input_outside_envelope = "
                f"\"{policy}\")")
    return QaResult(Verdict.FAIL, (headline, *result.reasons), (check,),
                    input_guard=GuardJudgement(result.verdict, tuple(result.reasons)))


def _render_pdf(path: Path, *, header: pydicom.Dataset, volume: np.ndarray, result: GuardResult,
                model_identity: str, policy: str, job_id: int | None) -> Path:
    figure = Figure(figsize=_PAGE_IN)
    y = [0.95]

    def line(text: str, size: float = 9.0, bold: bool = False, width: int = 100, gap: float = 0.004) -> None:
        for part in textwrap.wrap(text, width) or [""]:
            figure.text(0.08, y[0], part, fontsize=size, fontweight="bold" if bold else "normal", va="top")
            y[0] -= size / 72 / _PAGE_IN[1] * 1.35
        y[0] -= gap

    line("Synthetic CT not generated: input outside the model's training envelope", 14, bold=True, width=70)
    line("Verdict: FAIL (no sCT). This notice replaces the sCT and its QA report.", 10, bold=True)
    y[0] -= 0.01
    description = str(header.get("SeriesDescription", "") or "(no description)")
    line(f"Patient: {header.get('PatientName', '')}   ID: {header.get('PatientID', '')}", 9)
    line(f"Study: {header.get('StudyDescription', '') or '(no description)'}   date {header.get('StudyDate', '')}", 9)
    line(f"MR series: {description}   (number {header.get('SeriesNumber', '')}, UID "
         f"{header.get('SeriesInstanceUID', '')})", 9)
    line(f"Model: {model_identity}", 9)
    line(f"Route policy: on_input_outside_envelope = \"{policy}\"" + (f"   Node job: {job_id}" if job_id else ""), 9)
    y[0] -= 0.01
    line(f"What the input guard found ({result.verdict} mismatch)", 11, bold=True)
    for reason in result.reasons or ("(no finding recorded)",):
        line(f"- {reason}", 9, width=95)
    for note in result.notes:
        line(f"- {note}", 9, width=95)
    if result.fields_missing:
        line(f"Judged without {', '.join(result.fields_missing)}: not in the header (anonymised or exported "
             "series); the guard judged what was there.", 9, width=95)
    y[0] -= 0.01
    line("What this means", 11, bold=True)
    line("The model was trained on MR of a different kind. A model that meets an unfamiliar contrast, site or "
         "geometry can produce a synthetic CT that looks plausible and is wrong (for example, brain tissue "
         "assigned fat CT numbers), and photon dose checks barely notice such errors. The node therefore did not "
         "generate one.", 9, width=100)
    line(f"To proceed, choose one: acquire or route an MR that matches the model (see its model card); use a "
         "model trained on this kind of MR; or, after review, set the route's on_input_outside_envelope to "
         f"\"mark\" and retry the job (`sct-node retry {job_id or 'JOB'}`): the sCT is then generated and its QA can at best "
         "WARN (soft mismatch) or FAIL (hard mismatch). `sct-node translate --allow-outside-envelope` does the "
         "same for one series and prints the override on the sCT.", 9, width=100)
    # The MR's central axial slice: which series was judged, at a glance.
    top = y[0] - 0.02
    size = min(top - 0.08, 0.38)
    if size > 0.1 and volume.ndim == 3 and volume.size:
        ax = figure.add_axes((0.5 - size * _PAGE_IN[1] / _PAGE_IN[0] / 2, top - size,
                              size * _PAGE_IN[1] / _PAGE_IN[0], size))
        middle = volume[volume.shape[0] // 2]
        low, high = np.percentile(middle, [1, 99.5]) if middle.size else (0, 1)
        ax.imshow(middle, cmap="gray", vmin=low, vmax=high if high > low else low + 1, origin="upper")
        ax.set_title("MR, central slice (as received)", fontsize=8)
        ax.set_axis_off()
    figure.text(0.5, 0.025, f"sct-node {__version__}: input guard notice, not for diagnosis", fontsize=7,
                ha="center")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(stream: BinaryIO) -> None:
        with PdfPages(stream, metadata={"Title": "sCT not generated: input outside the training envelope",
                                        "Creator": f"sct-node {__version__}"}) as pdf:
            pdf.savefig(figure)

    try:
        write_atomic(path, write)  # the project's one atomic write (fsync, then rename)
    except OSError as error:
        raise OutputError(f"cannot write the refusal notice {path}: {error}") from error
    return path


def write_refusal_notice(*, mr_files: Iterable[Path | str], volume: np.ndarray, result: GuardResult,
                         model_identity: str, model_name: str, policy: str, folder: Path, job_id: int | None = None,
                         now: _dt.datetime | None = None) -> tuple[Path, Path, Path]:
    """Write the refusal notice into ``folder``: the PDF, its Encapsulated PDF instance and the SR.

    Parameters
    ----------
    mr_files : sequence of path
        The refused MR series' files (headers become the evidence, patient and study the notice's).
    volume : numpy.ndarray
        The MR volume (its central slice is shown).
    result : GuardResult
        The guard's judgement (verdict soft or hard).

    Returns
    -------
    (pathlib.Path, pathlib.Path, pathlib.Path)
        The PDF, the Encapsulated PDF instance and the SR.

    Raises
    ------
    OutputError
        If a file cannot be written or the MR headers cannot be read.
    """
    folder = Path(folder)
    try:
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in mr_files]
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise OutputError(f"cannot read the refused MR series' headers for the notice: {error}") from error
    if not headers:
        raise OutputError("the refusal notice needs the refused MR series' headers; found none")
    qa = _refusal_qa(result, model_name, policy)
    source = str(headers[0].SeriesInstanceUID)
    digest = hashlib.sha256(repr((result_record(qa), model_identity)).encode()).hexdigest()[:16]

    def uids(role: str) -> tuple[str, str]:
        return (derive_uid(source, "guard-refusal", role, digest, "instance"),
                derive_uid(source, "guard-refusal", role, digest, "series"))

    pdf = _render_pdf(folder / REFUSAL_PDF, header=headers[0], volume=np.asarray(volume), result=result,
                      model_identity=model_identity, policy=policy, job_id=job_id)
    sr_uid, sr_series = uids("sr")
    sr = write_qa_sr(qa=qa, sct_headers=headers, path=folder / "SR.refused.dcm", sop_instance_uid=sr_uid,
                     series_instance_uid=sr_series, series_description="FAIL: sCT refused, input outside envelope",
                     model_identity=model_identity, now=now)
    doc_uid, doc_series = uids("pdf")
    doc = write_encapsulated_pdf(pdf_path=pdf, sct_headers=headers, path=folder / "DOC.refused.dcm",
                                 sop_instance_uid=doc_uid, series_instance_uid=doc_series,
                                 series_description="FAIL: sCT refused, input outside envelope",
                                 document_title="sCT not generated: input outside envelope", now=now)
    return pdf, doc, sr
