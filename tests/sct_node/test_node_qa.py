"""The node runs the dosimetric QA for every series, with the CT and structures routed to it when there are some."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from dosimetry.qa_result import read_qa
from dosimetry.verdict import Verdict
from models.phantoms import generate_phantom
from sct_node.config import (
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.node.service import Node
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.sct_node.node_helpers import free_port


def _send(files: list[Path], port: int) -> None:
    ae = AE(ae_title="PACS")
    for uid in sorted({str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}):
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="SCT_NODE")
    assert assoc.is_established
    for index, path in enumerate(files):
        assert assoc.send_c_store(path, msg_id=index + 1).Status == 0x0000
    assoc.release()


def _finished_job(node: Node, timeout_s: float):
    """The node's job of route "mr" once it is done or failed (or as it is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [j for j in node.state.jobs() if j.route == "mr"]
        if jobs and jobs[0].state in ("done", "failed"):
            break
        time.sleep(0.2)
    (job,) = [j for j in node.state.jobs() if j.route == "mr"]
    return job


def _run(tmp_path: Path, send_references: bool) -> dict:
    phantom = generate_phantom("pelvis", 8, shape_zyx=(16, 56, 56), spacing_mm=(7.0, 7.0, 9.0))
    written = write_phantom_dicom(phantom, "nodeqa", tmp_path / "dicom")
    config = NodeConfig(network=NetworkConfig(port=free_port()),
                        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
                        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1),
                        routes=(RouteConfig(name="mr", model="bulk", qa_site="pelvis"),))
    node = Node(config)
    node.start()
    try:
        if send_references:
            _send(sorted(written.ct_dir.glob("*.dcm")) + [written.rtstruct_path], node.port)
        _send(sorted(written.mr_t1_dir.glob("*.dcm")), node.port)
        job = _finished_job(node, 120)
        assert job.state == "done", job.reason
        assert job.timings is not None and job.timings.qa_verdict in ("PASS", "WARN", "FAIL")
        return read_qa(job.output_dir / "qa", maps=False).result
    finally:
        node.stop()


@pytest.mark.slow
def test_without_references_the_bulk_model_fails_its_bone_check(tmp_path):
    qa = _run(tmp_path, send_references=False)
    assert qa.dose.reference == "bulk-density sCT"
    assert qa.dose.plan.is_template
    assert qa.verdict == Verdict.FAIL and any("bone" in reason for reason in qa.reasons)


@pytest.mark.slow
def test_routed_ct_and_structures_are_used_for_commissioning_qa(tmp_path, monkeypatch):
    import threading

    import dosimetry.qa

    engine_threads = []
    real = dosimetry.qa.compute_dose_and_points

    def recording(*args, **kwargs):
        engine_threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(dosimetry.qa, "compute_dose_and_points", recording)
    qa = _run(tmp_path, send_references=True)
    assert qa.dose.reference == "real CT"
    # The dose on the real CT was computed while the model worked (another thread) and the QA used it: the
    # engine ran twice, once there and once for the sCT.
    assert len(engine_threads) == 2 and engine_threads[0].endswith("-references"), engine_threads
    assert qa.image_metrics.mae_hu > 50  # water-only sCT against a CT with bone
    assert {"PTV", "BLADDER", "RECTUM"} <= {d.structure for d in qa.dose.dvh}


def test_an_rt_object_in_the_mr_series_is_not_read_as_an_mr_image(tmp_path):
    """The job reads the MR image classes by UID: an RT Structure Set that shares the MR's series (some exports
    do that) begins with the MR prefix 1.2.840.10008.5.1.4.1.1.4 (...1.1.481.3) and must not be read as an image."""
    phantom = generate_phantom("pelvis", 9, shape_zyx=(12, 48, 48), spacing_mm=(8.0, 8.0, 10.0))
    written = write_phantom_dicom(phantom, "mixed", tmp_path / "dicom")
    mr_files = sorted(written.mr_t1_dir.glob("*.dcm"))
    structures = pydicom.dcmread(written.rtstruct_path)
    structures.SeriesInstanceUID = pydicom.dcmread(mr_files[0], stop_before_pixels=True).SeriesInstanceUID
    mixed = tmp_path / "RS.in-mr-series.dcm"
    structures.save_as(mixed)
    config = NodeConfig(network=NetworkConfig(port=free_port()),
                        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
                        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1),
                        routes=(RouteConfig(name="mr", model="bulk", qa=False),))
    node = Node(config)
    node.start()
    try:
        _send(mr_files + [mixed], node.port)
        job = _finished_job(node, 60)
        assert job.state == "done", job.reason
        assert len(list((job.output_dir / "sct").glob("*.dcm"))) == len(mr_files)
    finally:
        node.stop()
