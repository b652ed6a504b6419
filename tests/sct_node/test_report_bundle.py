"""The QA report bundle from the command line: every object valid, in the sCT's study and frame, coherent.

The sCT comes from the bulk model, which has no bone, so the QA fails: that is the case in which the bundle
must carry the verdict in every Series Description.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dosimetry.qa_result import read_qa
from dosimetry.structures import read_structures
from dosimetry.verdict import Verdict
from models.phantoms import generate_phantom
from sct_node.cli import EXIT_OK, EXIT_QA_FAIL, main
from sct_node.dicom.qa_sr import read_qa_sr
from sct_node.dicom.reader import read_series
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.factories.validation import dciodvfy_findings

#: Non-square, anisotropic grid: rows != columns, x spacing != y spacing, thick slices.
SHAPE_ZYX = (12, 56, 64)
SPACING_MM = (6.0, 5.0, 9.0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """MR -> sCT (bulk) -> qa -> report, all through the CLI."""
    root = tmp_path_factory.mktemp("bundle")
    phantom = generate_phantom("pelvis", 21, shape_zyx=SHAPE_ZYX, spacing_mm=SPACING_MM)
    written = write_phantom_dicom(phantom, "bundle", root / "dicom")
    assert main(["translate", "--input", str(written.mr_t1_dir), "--output", str(root / "sct")]) == EXIT_OK
    # Commissioning set-up: the real CT (on the MR grid) and the structures drawn on it.
    assert main(["qa", "--sct", str(root / "sct"), "--mr", str(written.mr_t1_dir), "--reference-ct",
                 str(written.ct_dir), "--structures", str(written.rtstruct_path),
                 "--output", str(root / "qa")]) == EXIT_QA_FAIL
    assert main(["report", "--qa", str(root / "qa"), "--output", str(root / "out")]) == EXIT_OK
    return root, written


def _datasets(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(p.relative_to(folder)): pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))}


def test_the_bundle_holds_every_object_and_each_passes_dciodvfy(bundle):
    root, _ = bundle
    out = root / "out"
    modalities = sorted(ds.Modality for ds in _datasets(out).values())
    assert modalities.count("CT") == SHAPE_ZYX[0]
    assert sorted(set(modalities)) == ["CT", "DOC", "RTDOSE", "RTPLAN", "RTSTRUCT", "SR"]
    assert (out / "report" / "sct-qa-report.pdf").read_bytes().startswith(b"%PDF")
    for name in ("rt/RS.sct.dcm", "rt/RP.qa-template.dcm", "rt/RD.sct.dcm", "report/SR.qa.dcm", "report/DOC.qa.dcm"):
        errors, _ = dciodvfy_findings(out / name)
        assert errors == [], f"{name}: {errors}"


def test_every_object_is_in_the_sct_study_and_frame_and_says_qa_fail(bundle):
    root, _ = bundle
    datasets = _datasets(root / "out")
    sct = [ds for ds in datasets.values() if ds.Modality == "CT"]
    study, frame, patient = sct[0].StudyInstanceUID, sct[0].FrameOfReferenceUID, sct[0].PatientID
    sct_uids = {ds.SOPInstanceUID for ds in sct}
    for name, ds in datasets.items():
        assert ds.StudyInstanceUID == study and ds.PatientID == patient, name
        if ds.Modality in ("RTSTRUCT",):
            assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == frame
        elif ds.Modality in ("RTDOSE", "RTPLAN", "CT"):
            assert ds.FrameOfReferenceUID == frame, name
        assert ds.SeriesDescription.startswith("QA FAIL"), (name, ds.SeriesDescription)
        if ds.Modality != "CT":
            assert ds.SeriesInstanceUID != sct[0].SeriesInstanceUID
        if ds.Modality in ("RTSTRUCT", "RTDOSE", "DOC", "SR", "CT"):
            assert ds.get("SyntheticData") == "YES", name
    # One series per object type, each with a UID of its own.
    assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 6
    # The RT Dose references the template plan written with it, and the RT Structure Set the sCT images.
    plan = next(ds for ds in datasets.values() if ds.Modality == "RTPLAN")
    dose = next(ds for ds in datasets.values() if ds.Modality == "RTDOSE")
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    rtstruct = next(ds for ds in datasets.values() if ds.Modality == "RTSTRUCT")
    referenced = {item.ReferencedSOPInstanceUID for contour in rtstruct.ROIContourSequence
                  for c in contour.ContourSequence for item in c.ContourImageSequence}
    assert referenced <= sct_uids and len(referenced) == SHAPE_ZYX[0]


def test_the_sr_reports_the_verdict_and_every_check_of_the_qa(bundle):
    root, _ = bundle
    qa = read_qa(root / "qa", maps=False).result
    report = read_qa_sr(root / "out" / "report" / "SR.qa.dcm")
    assert report["verdict"] == qa.verdict == Verdict.FAIL
    assert set(report["checks"]) == {c.name for c in qa.checks}
    for check in qa.checks:
        read = report["checks"][check.name]
        assert read["verdict"] == check.verdict
        if not math.isnan(check.value):
            assert read["value"] == pytest.approx(check.value, rel=1e-6, abs=1e-9)


def test_the_rt_structure_set_gives_the_qa_outline_back(bundle):
    root, _ = bundle
    sct = read_series([root / "out" / "sct"], sop_classes=["1.2.840.10008.5.1.4.1.1.2"])
    body = np.load(root / "qa" / "qa_arrays.npz")["body_mask"]
    (structure,) = read_structures(root / "out" / "rt" / "RS.sct.dcm", sct.volume, names=["BODY"])
    overlap = 2 * np.count_nonzero(structure.mask & body) / (structure.mask.sum() + body.sum())
    # Contours are the 0.5 iso-lines of the (hole-filled) mask and the reader tests pixel centres: exact
    # up to the hole filling of the body outline, which only adds voxels enclosed by the body.
    assert overlap > 0.99


def test_the_rt_dose_is_the_qa_dose_on_the_sct(bundle):
    from dosimetry.rtdose import read_rt_dose

    root, _ = bundle
    arrays = np.load(root / "qa" / "qa_arrays.npz")
    dose = read_rt_dose(root / "out" / "rt" / "RD.sct.dcm")
    step = float(pydicom.dcmread(root / "out" / "rt" / "RD.sct.dcm", stop_before_pixels=True).DoseGridScaling)
    np.testing.assert_allclose(dose.dose_gy.array, arrays["dose_sct_gy"], atol=step)
    np.testing.assert_allclose(dose.dose_gy.spacing_mm, arrays["dose_grid_spacing_mm"], atol=1e-3)


@pytest.mark.slow
def test_rebuilding_gives_the_same_uids_and_no_rt_dose_when_asked(bundle, tmp_path):
    root, _ = bundle
    first = {name: ds.SOPInstanceUID for name, ds in _datasets(root / "out").items()}
    assert main(["report", "--qa", str(root / "qa"), "--output", str(tmp_path / "again")]) == EXIT_OK
    assert {name: ds.SOPInstanceUID for name, ds in _datasets(tmp_path / "again").items()} == first
    assert main(["report", "--qa", str(root / "qa"), "--output", str(tmp_path / "nodose"), "--no-rt-dose"]) == EXIT_OK
    assert {ds.Modality for ds in _datasets(tmp_path / "nodose").values()} == {"CT", "RTSTRUCT", "SR", "DOC"}


def test_report_refuses_a_folder_without_qa_json(tmp_path, capsys):
    assert main(["report", "--qa", str(tmp_path), "--output", str(tmp_path / "out")]) == 3
    assert "cannot read the QA result" in capsys.readouterr().err


def test_destinations_get_their_part_of_the_bundle_in_order(bundle):
    from sct_node.node.dispatch import ordered_outputs

    root, _ = bundle
    order = ["CT", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "DOC"]
    everything = [pydicom.dcmread(p, stop_before_pixels=True).Modality for p in ordered_outputs(root / "out")]
    assert everything == sorted(everything, key=order.index) and set(everything) == set(order)
    rt = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in ordered_outputs(root / "out", "images-and-rt")}
    assert rt == {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"}
    images = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in ordered_outputs(root / "out", "images")}
    assert images == {"CT"}
    # Sending ahead: the images part, then the rest; together, everything once, in order.
    ahead, rest = ordered_outputs(root / "out", "all", "images"), ordered_outputs(root / "out", "all", "rest")
    assert ahead + rest == ordered_outputs(root / "out")
    assert {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in ahead} == {"CT"}
    assert ordered_outputs(root / "out", "images", "rest") == []  # an images-only destination has nothing left
    assert [pydicom.dcmread(p, stop_before_pixels=True).Modality for p in
            ordered_outputs(root / "out", "images-and-rt", "rest")] == ["RTSTRUCT", "RTPLAN", "RTDOSE"]
    with pytest.raises(ValueError, match="part must be"):
        ordered_outputs(root / "out", "all", "report")


def test_a_destination_that_refuses_part_of_the_bundle_gets_a_clear_error(bundle):
    from pynetdicom import AE, evt

    from sct_node.config import DestinationConfig
    from sct_node.node.dispatch import DeliveryError, deliver_files, ordered_outputs

    root, _ = bundle
    scp = AE(ae_title="CT_ONLY")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    stored = []
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: stored.append(1) or 0x0000)])
    destination = DestinationConfig(name="ct-only", ae_title="CT_ONLY", host="127.0.0.1",
                                    port=server.server_address[1])
    try:
        with pytest.raises(DeliveryError, match="does not accept .*RT Structure Set Storage.* bundle = "):
            deliver_files(ordered_outputs(root / "out"), destination, "SCT_NODE", 10)
        assert stored == []  # refused before anything was sent
        deliver_files(ordered_outputs(root / "out", "images"), destination, "SCT_NODE", 10)  # the sCT alone goes
        assert len(stored) == SHAPE_ZYX[0]
    finally:
        server.shutdown()
