"""The synthetic-CT writer: round trip, the attributes that mark it synthetic, deterministic UIDs, dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.base import ModelCard
from sct_node.dicom import sct_writer
from sct_node.dicom.reader import read_series
from sct_node.dicom.sct_writer import write_sct_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE, IMPLEMENTATION_CLASS_UID
from sct_node.errors import OutputError
from tests.factories.mr_series import make_volume, write_mr_series
from tests.factories.validation import assert_valid_dicom, dciodvfy_findings

CARD = ModelCard(name="testmodel", version="1.2", description="A test model.", content_hash="abc123")


def _hu_volume(grid, seed=0):
    """HU over the whole range, including values the writer must clip."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1100, 3200, size=grid.shape).astype(np.float32)
    hu[0, 0, :4] = [-1024, 3071, -2000, 5000]
    return grid.with_array(hu)


@pytest.fixture
def mr(tmp_path, mr_volume):
    write_mr_series(mr_volume, tmp_path / "mr")
    return read_series([tmp_path / "mr"])


def _read(files):
    return [pydicom.dcmread(f) for f in files]


def test_round_trip_geometry_and_hu(tmp_path, mr):
    hu = _hu_volume(mr.volume)
    written = write_sct_series(hu, mr, CARD, tmp_path / "sct")
    back = read_series([tmp_path / "sct"], sop_classes=[CT_IMAGE_STORAGE])
    assert back.volume.same_grid(mr.volume)
    expected = np.clip(np.rint(hu.array), -1024, 3071)
    np.testing.assert_array_equal(back.volume.array, expected)
    assert back.series_instance_uid == written.series_instance_uid
    assert len(written.files) == mr.volume.shape[0]


def test_rescale_represents_exactly_minus_1024_to_3071(tmp_path, mr):
    written = write_sct_series(_hu_volume(mr.volume), mr, CARD, tmp_path / "sct")
    dataset = pydicom.dcmread(written.files[0])
    assert (dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation) == (16, 12, 11, 0)
    assert float(dataset.RescaleIntercept) == -1024 and float(dataset.RescaleSlope) == 1
    lowest = 0 * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    highest = (2 ** dataset.BitsStored - 1) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    assert (lowest, highest) == (-1024, 3071)


def test_sct_is_marked_synthetic_and_belongs_to_the_mr(tmp_path, mr):
    written = write_sct_series(_hu_volume(mr.volume), mr, CARD, tmp_path / "sct")
    mr_headers = {str(d.SOPInstanceUID): d for d in _read(mr.files)}
    for dataset in _read(written.files):
        assert dataset.SOPClassUID == CT_IMAGE_STORAGE and dataset.Modality == "CT"
        assert dataset.SyntheticData == "YES"
        assert list(dataset.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert dataset.StudyInstanceUID == mr.study_instance_uid
        assert dataset.FrameOfReferenceUID == mr.frame_of_reference_uid
        assert dataset.SeriesInstanceUID != mr.series_instance_uid
        assert "SYNTHETIC CT" in dataset.SeriesDescription
        assert "testmodel" in dataset.DerivationDescription and "1.2" in dataset.DerivationDescription
        for keyword in ("PatientName", "PatientID", "PatientSex", "StudyDate", "AccessionNumber"):
            assert dataset.get(keyword) == mr.header.get(keyword)
        equipment = dataset.ContributingEquipmentSequence[0]
        purpose = equipment.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "109100", "DCM", "Synthesizing Equipment")
        assert "testmodel" in equipment.ManufacturerModelName
        # Slice for slice: the source image lies at the same position.
        source = dataset.SourceImageSequence[0]
        mr_slice = mr_headers[source.ReferencedSOPInstanceUID]
        assert source.ReferencedSOPClassUID == mr_slice.SOPClassUID
        np.testing.assert_allclose([float(v) for v in dataset.ImagePositionPatient],
                                   [float(v) for v in mr_slice.ImagePositionPatient], atol=1e-4)
        assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert dataset.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID


def test_uids_are_deterministic_per_source_and_model(tmp_path, mr):
    hu = _hu_volume(mr.volume)
    first = write_sct_series(hu, mr, CARD, tmp_path / "a")
    again = write_sct_series(hu, mr, CARD, tmp_path / "b")
    retrained = write_sct_series(hu, mr, ModelCard("testmodel", "1.2", "x", content_hash="other"), tmp_path / "c")
    assert (first.series_instance_uid, first.sop_instance_uids) == (again.series_instance_uid, again.sop_instance_uids)
    assert retrained.series_instance_uid != first.series_instance_uid
    assert not set(retrained.sop_instance_uids) & set(first.sop_instance_uids)
    assert len(set(first.sop_instance_uids)) == len(first.sop_instance_uids)
    rewritten = write_sct_series(hu, mr, CARD, tmp_path / "a")  # same folder: replaced, not duplicated
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in rewritten.files)


def test_every_sct_instance_passes_dciodvfy(tmp_path, mr):
    written = write_sct_series(_hu_volume(mr.volume), mr, CARD, tmp_path / "sct")
    for path in written.files:
        assert_valid_dicom(path)


def test_enhanced_mr_source_is_referenced_by_frame(tmp_path):
    from tests.factories.enhanced_mr import write_enhanced_mr

    volume = make_volume(shape_zyx=(5, 16, 16))
    write_enhanced_mr(volume, tmp_path / "e" / "enhanced.dcm")
    source = read_series([tmp_path / "e"])
    written = write_sct_series(_hu_volume(source.volume), source, CARD, tmp_path / "sct")
    frames = [int(pydicom.dcmread(f).SourceImageSequence[0].ReferencedFrameNumber) for f in written.files]
    assert sorted(frames) == list(range(1, 6))
    for path in written.files:
        assert_valid_dicom(path)


def test_dciodvfy_wrapper_does_report_errors(tmp_path, mr):
    """The validation helper must be able to fail: break a Type 1 attribute and expect an error."""
    written = write_sct_series(_hu_volume(mr.volume), mr, CARD, tmp_path / "sct")
    dataset = pydicom.dcmread(written.files[0])
    del dataset.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence
    del dataset.ImageType
    dataset.save_as(tmp_path / "broken.dcm")
    errors, _ = dciodvfy_findings(tmp_path / "broken.dcm")
    assert errors, "dciodvfy found no error in an object missing Type 1 attributes"


def test_wrong_grid_is_refused_and_nothing_is_written(tmp_path, mr):
    wrong = make_volume(shape_zyx=(5, 40, 48))
    with pytest.raises(OutputError, match="does not match the MR grid"):
        write_sct_series(wrong, mr, CARD, tmp_path / "sct")
    assert not list((tmp_path / "sct").glob("*")) if (tmp_path / "sct").exists() else True


def test_non_finite_values_are_refused(tmp_path, mr):
    hu = _hu_volume(mr.volume).array.copy()
    hu[1, 2, 3] = np.nan
    with pytest.raises(OutputError, match="NaN"):
        write_sct_series(mr.volume.with_array(hu), mr, CARD, tmp_path / "sct")


def test_a_failure_mid_series_leaves_no_partial_series(tmp_path, mr, monkeypatch):
    real_write = sct_writer.write_dataset_atomic
    calls = {"n": 0}

    def failing_write(dataset, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OutputError(f"cannot write {path}: No space left on device")
        return real_write(dataset, path)

    monkeypatch.setattr(sct_writer, "write_dataset_atomic", failing_write)
    with pytest.raises(OutputError, match="No space left"):
        write_sct_series(_hu_volume(mr.volume), mr, CARD, tmp_path / "sct")
    assert calls["n"] == 3
    assert list(Path(tmp_path / "sct").iterdir()) == []
