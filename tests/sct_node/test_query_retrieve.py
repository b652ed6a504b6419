"""Reference data fetched from the PACS (issue 19 point 4): C-FIND, then C-MOVE or C-GET, against a real Orthanc.

Orthanc holds an MR study as a hospital PACS would: the MR series, the planning CT, the RT Plan and the RT
Structure Set in the MR's frame of reference, and two CT series that must never be used: a CT of the same
study in another frame of reference, and a synthetic CT (the node's own output, delivered back to the PACS
by an earlier job) in the MR's frame. Only the MR reaches the node, routed by Orthanc's Lua rule as deployed;
the node's route asks for the CT, plan and structures, and the QA must use exactly the ones in the MR's frame.

A PACS that is down, or that answers nothing, must not fail the job: the QA falls back to the template plan
and the bulk-density reference, and its report says that the reference data could not be fetched.

Skipped when Orthanc is not installed (``apt-get install orthanc``, see ``tests/install-system-tools.sh``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pypdf import PdfReader

from dosimetry.qa_result import read_qa
from models.phantoms import generate_phantom
from sct_node.config import (
    AllowedCaller,
    NetworkConfig,
    NodeConfig,
    PacsConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.node.service import Node
from sct_node.node.state import Job
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.factories import rt_plans
from tests.sct_node.node_helpers import free_port
from tests.sct_node.test_orthanc import (
    NODE_AE,
    ORTHANC,
    OrthancServer,
    _set_value,
    _wait_for,
    deployment_config,
    needs_orthanc,
)

pytestmark = pytest.mark.slow  # see pyproject: `-m 'not slow'` is the fast subset

#: The grid of tests/sct_node/test_node_qa.py: small, and the phantom's anatomy whole.
SHAPE_ZYX = (16, 56, 56)
SPACING_MM = (7.0, 7.0, 9.0)
PLAN_LABEL = "QR PROSTATE"


@dataclass(frozen=True)
class Study:
    """What Orthanc holds of one phantom study, with the UIDs the QA must (and must not) use."""

    mr_files: tuple[Path, ...]
    reference_files: tuple[Path, ...]  # every CT, RT Plan and RT Structure Set, the decoys included
    frame_uid: str
    ct_series_uid: str
    ct_instances: int
    plan_uid: str
    structures_uid: str
    other_frame_ct_series_uid: str
    synthetic_ct_series_uid: str


def _copy_series(files: list[Path], folder: Path, description: str, *, frame_uid: str | None = None,
                 synthetic: bool = False, series_time: str = "120000") -> str:
    """The CT series again as a new series (new UIDs), in another frame or marked as a synthetic CT."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series_uid, generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesDescription, dataset.SeriesNumber, dataset.SeriesTime = description, 90, series_time
        if frame_uid is not None:
            dataset.FrameOfReferenceUID = frame_uid
        if synthetic:  # as sct_node.dicom.sct_writer marks the node's sCT
            dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            dataset.SyntheticData = "YES"
        dataset.save_as(folder / path.name)
    return series_uid


def _write_study(folder: Path) -> Study:
    phantom = generate_phantom("pelvis", 8, shape_zyx=SHAPE_ZYX, spacing_mm=SPACING_MM)
    written = write_phantom_dicom(phantom, "query-retrieve", folder / "dicom")
    ct_files = sorted(written.ct_dir.glob("*.dcm"))
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    # An RT Plan of the study, in its frame, isocentre at the PTV's centre.
    ptv = next(s for s in phantom.structures if s.name == "PTV")
    centre_xyz = np.argwhere(ptv.mask).mean(axis=0)[::-1]
    isocentre = tuple(float(v) for v in phantom.ct_hu.index_to_patient(centre_xyz))
    plan = rt_plans.static_fields(frame=written.frame_of_reference_uid, isocentre=isocentre,
                                  gantries=(0.0, 90.0, 180.0, 270.0), field_mm=(60.0, 60.0), label=PLAN_LABEL,
                                  uid=generate_uid()[:55])  # room for the factory's ".1" suffixes
    plan.PatientName, plan.PatientID = ct.PatientName, ct.PatientID
    plan.StudyInstanceUID, plan.SeriesInstanceUID = written.study_instance_uid, generate_uid()
    plan_path = rt_plans.write_plan(plan, folder / "RTPLAN" / "RP.dcm")
    # Never to be used: the same CT in another frame of reference (newer, so a missed frame check would pick
    # it), and a synthetic CT in the MR's frame (newest of all).
    other_frame = _copy_series(ct_files, folder / "CT_OTHER_FRAME", "CT other frame", frame_uid=generate_uid(),
                               series_time="130000")
    synthetic = _copy_series(ct_files, folder / "SCT", "sCT from an earlier job", synthetic=True,
                             series_time="140000")
    decoys = sorted((folder / "CT_OTHER_FRAME").glob("*.dcm")) + sorted((folder / "SCT").glob("*.dcm"))
    structures = pydicom.dcmread(written.rtstruct_path, stop_before_pixels=True)
    return Study(tuple(sorted(written.mr_t1_dir.glob("*.dcm"))),
                 (*ct_files, plan_path, written.rtstruct_path, *decoys), written.frame_of_reference_uid,
                 str(ct.SeriesInstanceUID), len(ct_files), str(plan.SOPInstanceUID), str(structures.SOPInstanceUID),
                 other_frame, synthetic)


def _node_config(tmp_path: Path, node_port: int, pacs: PacsConfig, orthanc_ae: str = "HOSPITAL_PACS") -> NodeConfig:
    return NodeConfig(
        network=NetworkConfig(ae_title=NODE_AE, bind_address="127.0.0.1", port=node_port,
                              allowed_callers=(AllowedCaller(ae_title=orthanc_ae, host="127.0.0.1"),
                                               AllowedCaller(ae_title="SCANNER", host="127.0.0.1"))),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=10),
        # A short quiet period, so the router judges the fetched series (unrouted) while the test watches.
        processing=ProcessingConfig(quiet_period_s=3.0, poll_interval_s=0.2),
        routes=(RouteConfig(name="mr", model="bulk", qa_site="pelvis", complete_on=("association",),
                            fetch_references=("ct", "plan", "structures"), fetch_from="pacs"),),
        pacs=(pacs,),
    )


@dataclass
class Running:
    orthanc: OrthancServer
    node: Node
    study: Study


def _start_orthanc(tmp_path: Path, node_port: int, *, allow_retrieve: bool) -> OrthancServer:
    """Orthanc as deployed (deploy/orthanc/orthanc.json), the node's entry also allowed to query and retrieve."""
    http_port, dicom_port = free_port(), free_port()
    config_path, config = deployment_config(tmp_path, http_port, dicom_port, node_port)
    text = config_path.read_text(encoding="utf-8")
    node_entry = text.index('"sct-node" :')
    for key in ("AllowFind", "AllowMove", "AllowGet"):
        text = _set_value(text, key, key == "AllowFind" or allow_retrieve, node_entry)
    config_path.write_text(text, encoding="utf-8")
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([ORTHANC, "--verbose", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=tmp_path, env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = OrthancServer(process, http_port, dicom_port, config["DicomAet"], log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"Orthanc exited with status {process.returncode}\n{orthanc.log_tail()}")
        try:
            return "Version" in orthanc.get("/system")
        except OSError:
            return False

    try:
        _wait_for(ready, 20, "Orthanc's REST API", orthanc.log_tail)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc


@pytest.fixture
def pacs_and_node(request, tmp_path: Path) -> Iterator[Running]:
    """Orthanc holding the study, and a node whose route fetches from it by ``request.param`` (move, get, or
    ``refused``: a C-MOVE that Orthanc's configuration does not allow the node)."""
    method = request.param
    node_port = free_port()
    orthanc = _start_orthanc(tmp_path, node_port, allow_retrieve=method != "refused")
    node = None
    try:
        study = _write_study(tmp_path / "data")
        # The archive's state before the MR comes: the references, and the decoys, are already there.
        for path in study.reference_files:
            answer = orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")
            assert answer["Status"] == "Success", answer
        pacs = PacsConfig(name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port,
                          retrieve="get" if method == "get" else "move", query_timeout_s=20,
                          retrieve_timeout_s=60)
        node = Node(_node_config(tmp_path, node_port, pacs, orthanc.ae_title))
        node.start()
        yield Running(orthanc, node, study)
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()


def _job_at_rest(node: Node, diagnostics, timeout_s: float = 90) -> Job:
    def finished() -> Job | None:
        jobs = node.state.jobs()
        return jobs[0] if jobs and jobs[0].state.at_rest else None

    return _wait_for(finished, timeout_s, "the node's job", diagnostics)


def _report_text(job: Job) -> str:
    pdf = job.output_dir / "report" / "sct-qa-report.pdf"
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(pdf).pages)


def _series_uid_of(path: str) -> str:
    return Path(path).parent.name  # the spool's instances/<series UID>/<SOP Instance UID>.dcm


@needs_orthanc
@pytest.mark.parametrize("pacs_and_node", ["move", "get"], indirect=True)
def test_the_qa_uses_the_plan_structures_and_ct_fetched_in_the_mrs_frame(pacs_and_node: Running, caplog):
    orthanc, node, study = pacs_and_node.orthanc, pacs_and_node.node, pacs_and_node.study
    caplog.set_level(logging.INFO, logger="sct_node")
    method = node.config.pacs[0].retrieve

    def diagnostics() -> str:
        return (f"node series: {node.state.series()}\nnode jobs: {node.state.jobs(limit=5)}\n"
                f"{orthanc.log_tail(40)}")

    # The scanner stores the MR in Orthanc; Orthanc's Lua rule routes the stable series to the node.
    for path in study.mr_files:
        assert orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")["Status"] == "Success"
    job = _job_at_rest(node, diagnostics)
    assert job.state == "done", (job.reason, diagnostics())
    assert job.timings is not None and job.timings.qa_verdict in ("PASS", "WARN", "FAIL")

    record = read_qa(job.output_dir / "qa", maps=False)
    qa, context = record.result, record.context
    # The QA compared against the fetched real CT with the fetched plan and structures.
    assert qa.dose is not None and qa.dose.reference == "real CT", context
    assert not qa.dose.plan.is_template and qa.dose.plan.label == PLAN_LABEL
    assert qa.image_metrics is not None and qa.image_metrics.mae_hu > 50  # water-only sCT against a CT with bone
    assert {"PTV", "BLADDER", "RECTUM"} <= {d.structure for d in qa.dose.dvh}
    # Exactly the CT series in the MR's frame: not the one in another frame, not the synthetic CT.
    ct_series = {_series_uid_of(p) for p in context["reference_ct_files"]}
    assert ct_series == {study.ct_series_uid}, (ct_series, study)
    assert len(context["reference_ct_files"]) == study.ct_instances
    assert Path(context["plan_file"]).stem == study.plan_uid
    assert Path(context["structures_file"]).stem == study.structures_uid
    notes = context["reference_notes"]
    assert sorted(notes) == sorted(f"{name} fetched from PACS pacs ({orthanc.ae_title}@127.0.0.1:"
                                   f"{orthanc.dicom_port}) by C-{method.upper()}"
                                   for name in ("reference CT", "RT Plan", "RT Structure Set")), notes
    assert "Reference data from the PACS" in _report_text(job)

    # The PACS's C-STOREs went through the node's store: every series of the study's CT / RTPLAN / RTSTRUCT was
    # retrieved (the frame is only known after retrieval), by the method configured.
    fetched = {s.series_uid: s for s in node.state.series(limit=50) if s.modality != "MR"}
    assert set(fetched) == {study.ct_series_uid, study.other_frame_ct_series_uid, study.synthetic_ct_series_uid,
                            pydicom.dcmread(study.reference_files[study.ct_instances], stop_before_pixels=True)
                            .SeriesInstanceUID,
                            pydicom.dcmread(study.reference_files[study.ct_instances + 1],
                                            stop_before_pixels=True).SeriesInstanceUID}, diagnostics()
    assert all(s.calling_ae == orthanc.ae_title for s in fetched.values())
    associations = {i.association for uid in fetched for i in node.state.series_instances(uid, 1)}
    if method == "get":  # on the node's own association, not one the PACS opened to the node's SCP
        assert all(a is not None and a.startswith("c-get-") for a in associations), associations
    else:
        assert not any(a is not None and a.startswith("c-get-") for a in associations), associations
    # Reference data start no job: once quiet, each fetched series is unrouted and the MR's is the only job.
    _wait_for(lambda: all(s.state == "unrouted" for s in node.state.series(limit=50) if s.modality != "MR"), 15,
              "the fetched series to be judged by the router", diagnostics)
    assert [j.series_uid for j in node.state.jobs()] == [job.series_uid]
    # One line says what was fetched, by UIDs and counts; no line of the node names the patient.
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sct_node.node.retrieve"]
    assert line.startswith(f"reference data for MR series {job.series_uid}: fetched from PACS pacs") and \
        f"by C-{method.upper()}" in line and "series found CT 3, RTPLAN 1, RTSTRUCT 1" in line and \
        "5 series retrieved (50 instances)" in line, line
    identity = pydicom.dcmread(study.mr_files[0], stop_before_pixels=True)
    for record in caplog.records:
        if record.name.startswith("sct_node") and record.levelno >= logging.INFO:
            assert str(identity.PatientID) not in record.getMessage()
            assert str(identity.PatientName).split("^")[0] not in record.getMessage()


@needs_orthanc
@pytest.mark.parametrize("pacs_and_node", ["refused"], indirect=True)
def test_a_pacs_that_refuses_the_retrieval_leaves_the_qa_on_its_fallbacks(pacs_and_node: Running):
    """Orthanc answers the C-FIND but may not C-MOVE to the node: the job completes and the report says why."""
    orthanc, node, study = pacs_and_node.orthanc, pacs_and_node.node, pacs_and_node.study
    for path in study.mr_files:
        assert orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")["Status"] == "Success"
    job = _job_at_rest(node, lambda: f"node jobs: {node.state.jobs(limit=5)}\n{orthanc.log_tail(40)}")
    assert job.state == "done", job.reason
    assert job.timings is not None and job.timings.total_s < 40  # not held up to retrieve_timeout_s (60 s)
    record = read_qa(job.output_dir / "qa", maps=False)
    _assert_fallback(record, job, "could not be fetched from PACS pacs")
    # Orthanc aborts the association of a C-MOVE its DicomModalities do not allow ("AllowMove": false).
    assert all("C-MOVE: the PACS aborted the association" in note for note in record.context["reference_notes"]), \
        record.context["reference_notes"]
    assert not [s for s in node.state.series(limit=50) if s.modality != "MR"]  # nothing arrived


def _assert_fallback(record, job: Job, said: str) -> None:
    qa, context = record.result, record.context
    assert qa.dose is not None and qa.dose.reference == "bulk-density sCT"
    assert qa.dose.plan.is_template
    assert context["reference_ct_files"] == [] and context["plan_file"] is None
    notes = context["reference_notes"]
    assert len(notes) == 3 and all(said in note for note in notes), notes
    assert any(n.startswith("RT Plan") and n.endswith("the dose comparison uses the site's template plan")
               for n in notes), notes
    text = _report_text(job)
    assert "Reference data from the PACS" in text and said in text


def _send_mr(files: tuple[Path, ...], port: int) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID),
                             ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    for index, path in enumerate(files):
        assert assoc.send_c_store(path, msg_id=index + 1).Status == 0x0000
    assoc.release()


@pytest.mark.parametrize("pacs_state", ["down", "silent"])
def test_a_pacs_that_is_down_or_silent_does_not_fail_the_job(tmp_path: Path, pacs_state: str):
    """Nothing listens on the PACS's port (down), or it accepts the connection and never answers (silent): the
    job is done within the query timeout, the QA uses the template plan and the bulk-density reference, and
    qa.json and the PDF report say that the reference data could not be fetched, and why."""
    study = _write_study(tmp_path / "data")
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        if pacs_state == "silent":
            listener.listen(4)
        port = listener.getsockname()[1]
        pacs = PacsConfig(name="pacs", ae_title="HOSPITAL_PACS", host="127.0.0.1", port=port, query_timeout_s=3,
                          retrieve_timeout_s=3)
        node = Node(_node_config(tmp_path, free_port(), pacs))
        node.start()
        try:
            started = time.monotonic()
            _send_mr(study.mr_files, node.port)
            job = _job_at_rest(node, lambda: f"node jobs: {node.state.jobs(limit=5)}", timeout_s=60)
            assert job.state == "done", job.reason
            assert time.monotonic() - started < 30
            record = read_qa(job.output_dir / "qa", maps=False)
        finally:
            node.stop()
    reason = "could not be reached" if pacs_state == "down" else "did not answer the association request within 3 s"
    _assert_fallback(record, job, f"could not be fetched from PACS pacs (HOSPITAL_PACS@127.0.0.1:{port})")
    assert all(reason in note for note in record.context["reference_notes"]), record.context["reference_notes"]


# --- the bounds, against a pynetdicom Q/R SCP whose behaviour the test chooses ------------------------------


@dataclass
class FakePacs:
    """A Study Root C-FIND / C-GET SCP holding one CT series; it may answer its C-FINDs late, and never counts
    the instances of its series (Number of Series Related Instances is an optional return key)."""

    port: int
    files: list[Path]
    find_delay_s: float = 0.0


@pytest.fixture
def fake_pacs(tmp_path: Path) -> Iterator[FakePacs]:
    from pynetdicom import StoragePresentationContexts, evt

    from models.volume import Volume
    from sct_node.node.retrieve import FIND_MODEL, GET_MODEL
    from sct_node.tools.phantom_writer import phantom_identity, write_image_series

    volume = Volume(np.zeros((6, 8, 8), np.float32), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    folder = write_image_series(volume, tmp_path / "CT", phantom_identity("pelvis", 1, "fake-pacs"), "CT")
    pacs = FakePacs(free_port(), sorted(folder.glob("*.dcm")))
    headers = [pydicom.dcmread(p) for p in pacs.files]

    def find(event):
        time.sleep(pacs.find_delay_s)
        if event.identifier.Modality == "CT":
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = "SERIES"
            answer.StudyInstanceUID = headers[0].StudyInstanceUID
            answer.SeriesInstanceUID = headers[0].SeriesInstanceUID
            answer.Modality = "CT"
            yield 0xFF00, answer

    def get(event):
        yield len(headers)
        for header in headers:
            yield 0xFF00, header

    ae = AE(ae_title="FAKE_PACS")
    ae.add_supported_context(FIND_MODEL)
    ae.add_supported_context(GET_MODEL)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", pacs.port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, find), (evt.EVT_C_GET, get)])
    try:
        yield pacs
    finally:
        server.shutdown()


def _fetcher(tmp_path: Path):
    from sct_node.node.retrieve import ReferenceFetcher
    from sct_node.node.spool import Spool
    from sct_node.node.state import StateStore
    from sct_node.node.store import InstanceStore

    spool = Spool(tmp_path / "spool")
    spool.make_folders()
    state = StateStore(spool.state_db)
    store = InstanceStore(StorageConfig(spool_dir=spool.root, min_free_space_mb=0), state, spool)
    return state, lambda pacs: ReferenceFetcher(state, [pacs], "SCT_NODE", store)


def test_a_pacs_that_does_not_count_its_instances_is_held_to_max_instances(fake_pacs: FakePacs, tmp_path: Path):
    state, fetcher = _fetcher(tmp_path)
    pacs = PacsConfig(name="fake", ae_title="FAKE_PACS", host="127.0.0.1", port=fake_pacs.port, retrieve="get",
                      max_instances=4, query_timeout_s=10, retrieve_timeout_s=20)
    header = pydicom.dcmread(fake_pacs.files[0], stop_before_pixels=True)
    outcome = fetcher(pacs).fetch(str(header.StudyInstanceUID), ["ct"], "fake")
    assert outcome.method == "C-GET" and [s.series_uid for s in outcome.found] == [header.SeriesInstanceUID]
    assert outcome.instances == 4
    assert outcome.error is not None and "max_instances" in outcome.error
    # The four stored went through the node's store: on disk in the spool, in the database.
    stored = state.series_instances(str(header.SeriesInstanceUID), 1)
    assert len(stored) == 4 and all(record.path.is_file() for record in stored)
    assert {record.calling_ae for record in stored} == {"FAKE_PACS"}
    notes = outcome.notes(in_frame=["ct"], usable=[])
    assert notes == (f"reference CT fetched from PACS fake (FAKE_PACS@127.0.0.1:{fake_pacs.port}) by C-GET but not "
                     "usable (see the node's log): the dose reference is the bulk-density sCT and there are no image "
                     "metrics",)


def test_a_pacs_that_answers_too_late_is_given_up_at_the_query_timeout(fake_pacs: FakePacs, tmp_path: Path):
    fake_pacs.find_delay_s = 4.0
    state, fetcher = _fetcher(tmp_path)
    pacs = PacsConfig(name="fake", ae_title="FAKE_PACS", host="127.0.0.1", port=fake_pacs.port, retrieve="get",
                      query_timeout_s=1, retrieve_timeout_s=20)
    started = time.monotonic()
    outcome = fetcher(pacs).fetch("1.2.3", ["ct", "plan"], "fake")
    assert time.monotonic() - started < 3
    assert outcome.error == "C-FIND timed out after 1 s"
    assert outcome.instances == 0 and state.instance_count() == 0
