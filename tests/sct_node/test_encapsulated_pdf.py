"""The QA report as Encapsulated PDF: exact bytes back, even-length padding, sCT patient/study/references, dciodvfy."""

from __future__ import annotations

import datetime as _dt
import io

import numpy as np
import pydicom
import pytest
from matplotlib.figure import Figure
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from models.base import ModelCard
from sct_node.dicom.encapsulated_pdf import (
    PDF_SERIES_NUMBER_OFFSET,
    write_encapsulated_pdf,
)
from sct_node.dicom.reader import read_series
from sct_node.dicom.sct_writer import write_sct_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE, IMPLEMENTATION_CLASS_UID
from sct_node.errors import OutputError
from tests.factories.mr_series import make_volume, write_mr_series
from tests.factories.validation import assert_valid_dicom

CARD = ModelCard(name="testmodel", version="1.2", description="A test model.", content_hash="abc123")
NOW = _dt.datetime(2026, 3, 4, 5, 6, 7)
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


@pytest.fixture(scope="module")
def sct_headers(tmp_path_factory):
    """Headers of a small sCT series written from an MR series, as the node writes them."""
    folder = tmp_path_factory.mktemp("series")
    write_mr_series(make_volume(shape_zyx=(4, 16, 16)), folder / "mr")
    mr = read_series([folder / "mr"])
    hu = mr.volume.with_array(np.full(mr.volume.shape, 40.0, dtype=np.float32))
    written = write_sct_series(hu, mr, CARD, folder / "sct")
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in written.files]


def _pdf(length_parity: int) -> bytes:
    """A small real PDF (matplotlib) of the requested length parity; a trailing newline after %%EOF is legal."""
    figure = Figure(figsize=(2, 1.5))
    figure.add_subplot().plot([0, 1, 2], [2, 0, 1])
    stream = io.BytesIO()
    figure.savefig(stream, format="pdf")
    document = stream.getvalue()
    return document if len(document) % 2 == length_parity else document + b"\n"


def _write(tmp_path, sct_headers, document: bytes, **overrides):
    (tmp_path / "report.pdf").write_bytes(document)
    arguments = {"pdf_path": tmp_path / "report.pdf", "sct_headers": sct_headers, "path": tmp_path / "out" / "doc.dcm",
                 "sop_instance_uid": "2.25.1001", "series_instance_uid": "2.25.1002",
                 "series_description": "sCT QA REPORT (testmodel) QA FAIL",
                 "document_title": "Synthetic CT QA report", "now": NOW}
    return write_encapsulated_pdf(**{**arguments, **overrides})


@pytest.mark.parametrize("parity", [0, 1], ids=["even", "odd"])
def test_reader_gets_the_exact_pdf_bytes_back(tmp_path, sct_headers, parity):
    document = _pdf(parity)
    assert len(document) % 2 == parity
    dataset = pydicom.dcmread(_write(tmp_path, sct_headers, document))
    stored = dataset.EncapsulatedDocument
    assert len(stored) % 2 == 0
    assert dataset.EncapsulatedDocumentLength == len(document)
    assert stored[:dataset.EncapsulatedDocumentLength] == document
    if parity:
        assert stored == document + b"\0"  # exactly one pad byte, a NUL
    else:
        assert stored == document
    assert dataset.MIMETypeOfEncapsulatedDocument == "application/pdf"


def test_document_belongs_to_the_scts_patient_and_study_and_references_every_instance(tmp_path, sct_headers):
    dataset = pydicom.dcmread(_write(tmp_path, sct_headers, _pdf(1)))
    first = sct_headers[0]
    for keyword in PATIENT_AND_STUDY:
        assert dataset.get(keyword) == first.get(keyword), keyword
    references = {(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
                  for item in dataset.SourceInstanceSequence}
    assert references == {(CT_IMAGE_STORAGE, h.SOPInstanceUID) for h in sct_headers}
    assert len(dataset.SourceInstanceSequence) == len(sct_headers)
    assert dataset.SOPClassUID == EncapsulatedPDFStorage and dataset.Modality == "DOC"
    assert dataset.SeriesInstanceUID == "2.25.1002" and dataset.SeriesInstanceUID != first.SeriesInstanceUID
    assert dataset.SeriesNumber == first.SeriesNumber + PDF_SERIES_NUMBER_OFFSET
    assert dataset.SyntheticData == "YES" and dataset.BurnedInAnnotation == "YES"
    assert dataset.ConversionType == "WSD" and dataset.InstanceNumber == 1
    assert dataset.DocumentTitle == "Synthetic CT QA report"
    assert "QA FAIL" in dataset.SeriesDescription
    concept = dataset.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("126000", "DCM")
    assert (dataset.ContentDate, dataset.ContentTime[:6]) == ("20260304", "050607")
    assert dataset.AcquisitionDateTime.startswith("20260304050607")
    assert dataset.Manufacturer == "sct-node project"
    # The Encapsulated PDF IOD has no Frame of Reference or image-geometry modules.
    for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "PixelData"):
        assert keyword not in dataset
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID


@pytest.mark.parametrize("parity", [0, 1], ids=["even", "odd"])
def test_document_passes_dciodvfy_without_errors_or_warnings(tmp_path, sct_headers, parity):
    assert_valid_dicom(_write(tmp_path, sct_headers, _pdf(parity)), allow_warnings=False)


def test_refuses_what_is_not_a_pdf_and_a_report_without_scts(tmp_path, sct_headers):
    with pytest.raises(OutputError, match="not a PDF"):
        _write(tmp_path, sct_headers, b"<html>not a pdf</html>")
    with pytest.raises(OutputError, match="no sCT header"):
        _write(tmp_path, [], _pdf(0))
    other = pydicom.Dataset()
    other.SeriesInstanceUID = "2.25.999"
    with pytest.raises(OutputError, match="2 series"):
        _write(tmp_path, [*sct_headers, other], _pdf(0))
    with pytest.raises(OutputError, match="cannot read"):
        _write(tmp_path, sct_headers, _pdf(0), pdf_path=tmp_path / "missing.pdf")
    assert not (tmp_path / "out" / "doc.dcm").exists()
