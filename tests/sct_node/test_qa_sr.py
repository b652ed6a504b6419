"""The QA result as a TID 1500 Enhanced SR: highdicom reads back what run_qa found, references, codes, dciodvfy."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedSRStorage, ExplicitVRLittleEndian

from dosimetry.qa import QaInputs, run_qa
from dosimetry.qa_result import read_qa, write_qa
from dosimetry.verdict import QaThresholds, Verdict, thresholds_from_mapping
from models.base import ModelCard
from models.phantoms.generator import generate_phantom
from sct_node.dicom.qa_sr import (
    CODING_SCHEME,
    QA_CODES,
    SR_SERIES_NUMBER_OFFSET,
    UCUM_UNITS,
    read_qa_sr,
    write_qa_sr,
)
from sct_node.dicom.reader import read_series
from sct_node.dicom.sct_writer import write_sct_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE, IMPLEMENTATION_CLASS_UID
from sct_node.errors import InputError, OutputError
from tests.factories.mr_series import make_volume, write_mr_series
from tests.factories.validation import assert_valid_dicom, dciodvfy_findings

CARD = ModelCard(name="testmodel", version="1.2", description="A test model.", content_hash="abc123")
NOW = _dt.datetime(2026, 3, 4, 5, 6, 7)
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
NOT_MEASURED = "body_dice"


@pytest.fixture(scope="module")
def sct_headers(tmp_path_factory):
    """Headers of a small sCT series written from an MR series, as the node writes them."""
    folder = tmp_path_factory.mktemp("series")
    write_mr_series(make_volume(shape_zyx=(4, 16, 16)), folder / "mr")
    mr = read_series([folder / "mr"])
    hu = mr.volume.with_array(np.full(mr.volume.shape, 40.0, dtype=np.float32))
    written = write_sct_series(hu, mr, CARD, folder / "sct")
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in written.files]


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    """A QA result from run_qa, written and read back, with PASS, WARN and FAIL checks plus one check that was
    not measured.

    Strict local thresholds make the phantom's bone fraction fail and its fat share warn; the not-measured
    check has the NaN value and the verdict ``judge`` gives a measurement that could not be made.
    """
    phantom = generate_phantom("pelvis", 3, (12, 32, 32), (8.0, 8.0, 10.0))
    thresholds = thresholds_from_mapping({"bone_fraction_percent": {"pass_limit": 60.0, "fail_limit": 50.0},
                                          "fat_share_pelvis_percent": {"pass_limit": 0.0, "fail_limit": 100.0}})
    run = run_qa(QaInputs(sct=phantom.ct_hu, mr_body_mask=phantom.body_mask, structures=()), thresholds)
    reason = "sCT vs MR body outline Dice: could not be measured"
    checks = tuple(dataclasses.replace(c, value=math.nan, verdict=Verdict.FAIL, reason=reason)
                   if c.name == NOT_MEASURED else c for c in run.result.checks)
    run = dataclasses.replace(run, result=dataclasses.replace(run.result, checks=checks,
                                                              reasons=(*run.result.reasons, reason)))
    folder = tmp_path_factory.mktemp("qa")
    write_qa(run, folder)
    return read_qa(folder).result


@pytest.fixture
def sr_path(tmp_path, qa, sct_headers):
    return write_qa_sr(qa=qa, sct_headers=sct_headers, path=tmp_path / "qa" / "sr.dcm", sop_instance_uid="2.25.2001",
                       series_instance_uid="2.25.2002", series_description="sCT QA (testmodel) QA FAIL",
                       model_identity=CARD.identity, now=NOW)


def test_the_fixture_has_every_verdict_and_a_check_without_value(qa):
    verdicts = {c.verdict for c in qa.checks}
    assert verdicts == {Verdict.PASS, Verdict.WARN, Verdict.FAIL} and qa.verdict == Verdict.FAIL
    assert [c.name for c in qa.checks if math.isnan(c.value)] == [NOT_MEASURED]


def test_highdicom_reads_back_the_verdict_and_every_check(sr_path, qa):
    back = read_qa_sr(sr_path)
    assert back["verdict"] is qa.verdict
    assert back["reasons"] == list(qa.reasons)
    assert set(back["checks"]) == {c.name for c in qa.checks}
    for check in qa.checks:
        read = back["checks"][check.name]
        assert (read["verdict"], read["unit"]) == (check.verdict, check.unit), check.name
        if math.isnan(check.value):
            assert read["value"] is None
        else:
            assert read["value"] == pytest.approx(check.value, rel=1e-12, abs=1e-12), check.name


def test_a_passing_qa_reads_back_as_pass_without_reasons(tmp_path, qa, sct_headers):
    passing = dataclasses.replace(qa, verdict=Verdict.PASS, reasons=(), checks=tuple(
        dataclasses.replace(c, verdict=Verdict.PASS) for c in qa.checks))
    path = write_qa_sr(qa=passing, sct_headers=sct_headers, path=tmp_path / "sr.dcm", sop_instance_uid="2.25.3",
                       series_instance_uid="2.25.4", series_description="sCT QA", model_identity=CARD.identity)
    back = read_qa_sr(path)
    assert back["verdict"] == "PASS" and back["reasons"] == []
    assert {c["verdict"] for c in back["checks"].values()} == {"PASS"}


def test_sr_is_in_the_scts_patient_and_study_and_references_every_instance(sr_path, sct_headers):
    dataset = pydicom.dcmread(sr_path)
    first = sct_headers[0]
    for keyword in PATIENT_AND_STUDY:
        assert dataset.get(keyword) == first.get(keyword), keyword
    expected = {(first.StudyInstanceUID, first.SeriesInstanceUID, h.SOPInstanceUID, CT_IMAGE_STORAGE)
                for h in sct_headers}
    sr = hd.sr.srread(sr_path)
    assert set(sr.get_evidence(current_procedure_only=True)) == expected
    assert sr.get_evidence_series() == [(first.StudyInstanceUID, first.SeriesInstanceUID)]
    assert dataset.SOPClassUID == EnhancedSRStorage and dataset.Modality == "SR"
    assert dataset.SeriesInstanceUID == "2.25.2002" and dataset.SOPInstanceUID == "2.25.2001"
    assert dataset.SeriesNumber == first.SeriesNumber + SR_SERIES_NUMBER_OFFSET
    assert dataset.SeriesDescription == "sCT QA (testmodel) QA FAIL"
    assert dataset.SyntheticData == "YES"
    assert (dataset.CompletionFlag, dataset.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert (dataset.ContentDate, dataset.ContentTime[:6]) == ("20260304", "050607")
    assert dataset.InstanceCreationDate == "20260304"
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    # Only highdicom as processing equipment: the synthetic CT was not acquired.
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in dataset.ContributingEquipmentSequence]
    assert "109101" not in purposes


def test_report_structure_codes_and_observer(sr_path, qa):
    dataset = pydicom.dcmread(sr_path)
    schemes = {item.CodingSchemeDesignator: item for item in dataset.CodingSchemeIdentificationSequence}
    assert schemes[CODING_SCHEME].CodingSchemeName and schemes[CODING_SCHEME].CodingSchemeResponsibleOrganization
    report = hd.sr.srread(sr_path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    device = report.get_observer_contexts(observer_type=pydicom.sr.codedict.codes.DCM.Device)[0]
    assert device.observer_identifying_attributes.model_name == CARD.identity
    groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    assert set(groups) == {c.name for c in qa.checks} | {"overall"}
    # Each check's limits are measurements in its unit; a check without a value says why, coded (CID 42).
    for check in qa.checks:
        numbers = {m.name.value: m for m in groups[check.name].get_measurements()}
        assert numbers[QA_CODES["pass_limit"].value].value == pytest.approx(check.pass_limit)
        assert numbers[QA_CODES["fail_limit"].value].value == pytest.approx(check.fail_limit)
        assert numbers[QA_CODES["pass_limit"].value].unit.value == UCUM_UNITS[check.unit].value
    missing = groups[NOT_MEASURED]
    assert len(missing.get_measurements()) == 2  # the two limits, no value
    coded = {(e.name.value, e.value.value) for e in missing.get_qualitative_evaluations()}
    assert (QA_CODES[f"check:{NOT_MEASURED}"].value, "114006") in coded


def test_no_numeric_item_is_nan_or_infinite(sr_path):
    def numbers(items):
        for item in items:
            if item.ValueType == "NUM":
                assert len(item.MeasuredValueSequence) == 1
                yield item.MeasuredValueSequence[0]
            yield from numbers(item.get("ContentSequence", []))

    values = list(numbers(pydicom.dcmread(sr_path).ContentSequence))
    assert values
    for value in values:
        assert math.isfinite(float(value.NumericValue)) and math.isfinite(value.FloatingPointValue)


def test_sr_passes_dciodvfy(sr_path):
    assert_valid_dicom(sr_path)
    _, warnings = dciodvfy_findings(sr_path)
    # dciodvfy only warns that it does not know the private coding scheme.
    assert all(CODING_SCHEME in warning for warning in warnings), warnings


def test_every_unit_and_check_of_the_qa_has_a_code(qa):
    for field in dataclasses.fields(QaThresholds):
        assert getattr(QaThresholds(), field.name).unit in UCUM_UNITS, field.name
    for check in qa.checks:
        assert f"check:{check.name}" in QA_CODES, check.name
    values = [(code.value, code.scheme_designator) for code in QA_CODES.values()]
    assert len(values) == len(set(values)), "two concepts share a code"
    assert all(len(code.value) <= 16 for code in QA_CODES.values())  # Code Value is SH


def _first_check(qa, **changes):
    return dataclasses.replace(qa, checks=(dataclasses.replace(qa.checks[0], **changes), *qa.checks[1:]))


@pytest.mark.parametrize(("change", "message"), [
    (lambda q: _first_check(q, unit="furlongs"), "furlongs"),
    (lambda q: _first_check(q, value=float("inf")), "finite"),
    (lambda q: _first_check(q, fail_limit=float("nan")), "fail_limit"),
    (lambda q: dataclasses.replace(q, checks=(*q.checks, q.checks[0])), "repeated"),
    (lambda q: dataclasses.replace(q, checks=()), "no check"),
])
def test_refuses_a_qa_it_cannot_code(tmp_path, qa, sct_headers, change, message):
    broken = change(qa)
    with pytest.raises(OutputError, match=message):
        write_qa_sr(qa=broken, sct_headers=sct_headers, path=tmp_path / "sr.dcm", sop_instance_uid="2.25.5",
                    series_instance_uid="2.25.6", series_description="x", model_identity=CARD.identity)
    assert not (tmp_path / "sr.dcm").exists()


def test_reading_refuses_what_is_not_a_qa_sr(sct_headers, tmp_path):
    ct_file = tmp_path / "ct.dcm"
    pydicom.dcmread(sct_headers[0].filename).save_as(ct_file)
    with pytest.raises(InputError, match="not supported"):
        read_qa_sr(ct_file)
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="not a readable Structured Report"):
        read_qa_sr(tmp_path / "notes.txt")
