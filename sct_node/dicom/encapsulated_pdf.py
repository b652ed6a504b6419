"""Wrap the QA report PDF in an Encapsulated PDF instance in the sCT's study.

The PDF goes to archives and PACS next to the sCT it judges (planning
systems do not read it). It is one instance of a new DOC series in the sCT's
patient and study, and says where it comes from: the Source Instance
Sequence lists every sCT instance, Synthetic Data = YES because its content
derives from a synthetic image, and Burned In Annotation = YES because the
report prints patient identifiers.

The modules are exactly those of the Encapsulated PDF IOD (PS3.3 A.45.1):
Patient, General Study, Encapsulated Document Series, General Equipment, SC
Equipment, Encapsulated Document and SOP Common (the optional Clinical Trial
and Patient Study modules are not written). There is no Frame of Reference
and no General Image module in this IOD, so none of their attributes are
written. The PDF is stored as found; the value is padded with one 0x00 to
an even length (PS3.5 7.1.1) and Encapsulated Document Length gives the
unpadded byte count, so a reader gets the exact bytes back.

References
----------
DICOM PS3.3 A.45.1 (Encapsulated PDF IOD), C.24.1 (Encapsulated Document
Series Module), C.24.2 (Encapsulated Document Module), C.8.6.1 (SC Equipment
Module), C.7.5.1 (General Equipment Module), C.12.1.1.10 (Synthetic Data);
PS3.5 7.1.1 (even value lengths); PS3.16 CID 7021 (Measurement Report
Document Titles).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EncapsulatedPDFStorage

from sct_node import __version__
from sct_node.dicom.image_writer import (
    PATIENT_KEYWORDS,
    STUDY_KEYWORDS,
    copy_attributes,
    dicom_date_time,
    new_dataset,
    write_dataset_atomic,
)
from sct_node.dicom.sct_writer import MANUFACTURER, code_item
from sct_node.errors import OutputError

__all__ = ["DOCUMENT_CONCEPT", "PDF_SERIES_NUMBER_OFFSET", "write_encapsulated_pdf"]

#: The report's series number is the sCT's plus this (the RT Structure Set uses +100, the QA SR +200).
PDF_SERIES_NUMBER_OFFSET = 300
#: Concept Name Code Sequence of the document (C.24.2, Type 2): (126000, DCM, "Imaging Measurement Report")
#: from CID 7021 "Measurement Report Document Titles". The PDF reports measurements made on images (the
#: sCT's HU, outline and dose checks) with their verdicts, which is what this title means; it is also the
#: title of the TID 1500 SR that carries the same measurements, so an archive can pair the two. The LOINC
#: report titles of CID 7000 (e.g. 18748-4 "Diagnostic Imaging Report") claim a diagnostic report, which
#: this is not.
DOCUMENT_CONCEPT = ("126000", "DCM", "Imaging Measurement Report")
_PDF_MAGIC = b"%PDF-"


def write_encapsulated_pdf(
    *,
    pdf_path: Path,
    sct_headers: Sequence[pydicom.Dataset],
    path: Path,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_description: str,
    document_title: str,
    now: _dt.datetime | None = None,
) -> Path:
    """Write a PDF report as an Encapsulated PDF instance in the sCT's patient and study.

    Parameters
    ----------
    pdf_path : pathlib.Path
        The PDF file to encapsulate (stored byte for byte).
    sct_headers : sequence of pydicom.Dataset
        Headers of every instance of the sCT series the report is about (pixel data not needed); patient
        and study attributes are copied from the first, and all are listed in the Source Instance Sequence.
    path : pathlib.Path
        Output file.
    sop_instance_uid, series_instance_uid : str
        Identity of the new instance and its series.
    series_description : str
        Series Description (at most 64 characters are kept).
    document_title : str
        Document Title (at most 64 characters are kept).
    now : datetime or None
        Content, acquisition and creation date/time (default: the current local time).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        If the PDF cannot be read or is not a PDF, no sCT header is given, the headers belong to more than
        one series, or the file cannot be written.

    References
    ----------
    DICOM PS3.3 A.45.1 (Encapsulated PDF IOD), C.24.2 (Encapsulated Document Module).
    """
    first = _check_headers(sct_headers)
    document = _read_pdf(Path(pdf_path))
    date, time = dicom_date_time(now or _dt.datetime.now())

    dataset = new_dataset(EncapsulatedPDFStorage, sop_instance_uid,
                          character_set=first.get("SpecificCharacterSet", "ISO_IR 100"))
    # SOP Common
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    dataset.SyntheticData = "YES"  # a report on a synthetic image derives from it
    # Patient and General Study: the sCT's, which are the MR's.
    copy_attributes(first, dataset, PATIENT_KEYWORDS,
                    required_type2=("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    copy_attributes(first, dataset, STUDY_KEYWORDS,
                    required_type2=("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"))
    # Encapsulated Document Series
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = series_instance_uid
    dataset.SeriesNumber = _series_number(first) + PDF_SERIES_NUMBER_OFFSET
    dataset.SeriesDescription = series_description[:64]
    # General Equipment: the node made this document.
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = "sct-node"
    dataset.SoftwareVersions = __version__
    # SC Equipment: a document created on a workstation, not converted from film or video.
    dataset.ConversionType = "WSD"
    # Encapsulated Document
    dataset.InstanceNumber = 1
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.AcquisitionDateTime = date + time
    dataset.BurnedInAnnotation = "YES"  # the report prints the patient's name and ID
    dataset.DocumentTitle = document_title[:64]
    dataset.ConceptNameCodeSequence = DicomSequence([code_item(*DOCUMENT_CONCEPT)])
    dataset.SourceInstanceSequence = DicomSequence([_instance_reference(h) for h in sct_headers])
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # PS3.5 7.1.1: values have even length; one trailing NUL pads an odd PDF and the length says where it ends.
    dataset.EncapsulatedDocument = document + b"\0" if len(document) % 2 else document
    dataset.EncapsulatedDocumentLength = len(document)
    return write_dataset_atomic(dataset, path)


def _check_headers(sct_headers: Sequence[pydicom.Dataset]) -> pydicom.Dataset:
    """The first header, after checking that all headers are of one series."""
    if not sct_headers:
        raise OutputError("no sCT header given: the report must reference the sCT series it is about")
    series = {str(h.get("SeriesInstanceUID", "")) for h in sct_headers}
    if len(series) != 1:
        raise OutputError(f"sCT headers belong to {len(series)} series; expected the instances of one sCT series")
    return sct_headers[0]


def _read_pdf(pdf_path: Path) -> bytes:
    try:
        document = pdf_path.read_bytes()
    except OSError as error:
        raise OutputError(f"cannot read the report PDF {pdf_path}: {error.strerror or error}") from error
    if not document.startswith(_PDF_MAGIC):
        raise OutputError(f"{pdf_path} is not a PDF: it does not start with {_PDF_MAGIC!r}")
    return document


def _series_number(header: pydicom.Dataset) -> int:
    number = header.get("SeriesNumber", None)
    return int(number) if number not in (None, "") else 0


def _instance_reference(header: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item
