"""The node against real DICOM peers: dcmtk's storescu as the PACS, dcmtk's storescp as the planning system.

Nothing is mocked. The node runs in-process (``Node(config)``) where that is
enough and as ``python -m sct_node serve`` where it must be SIGKILLed (one test
slows the real sCT writer down so that the kill can land inside it). Every
peer listens on a loopback port the kernel picked, and every process is ended
in fixture teardown. Series are small phantoms (12 slices of 48 x 48) and the
quiet period is short, so each test takes a few seconds.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from sct_node.config import (
    AllowedCaller,
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.dicom.uids import CT_IMAGE_STORAGE
from sct_node.node.service import Node
from tests.factories.mr_series import make_volume, write_mr_series
from tests.sct_node.node_helpers import (
    MrSeries,
    NodeProcess,
    ResponseParser,
    StoreScp,
    db_rows,
    dcmtk,
    free_port,
    phantom_mr_series,
    run_sct_node,
    series_in,
    sop_instance_uid,
    storescu,
    storescu_command,
    wait_for,
    write_toml,
)

pytestmark = pytest.mark.skipif(
    dcmtk("storescu") is None or dcmtk("storescp") is None,
    reason="dcmtk's storescu/storescp are not on PATH (apt-get install dcmtk); pynetdicom's scripts of the "
           "same name are not dcmtk and are not used")

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
QUIET_PERIOD_S = 0.5
POLL_INTERVAL_S = 0.1
#: Generous bounds for a loaded 2-core machine; a healthy run finishes each wait in about a second.
JOB_TIMEOUT_S = 30.0


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory) -> MrSeries:
    """A 12-slice phantom MR series shared by the tests that only read it."""
    return phantom_mr_series(tmp_path_factory.mktemp("scanner"))


@pytest.fixture
def tps(tmp_path) -> Iterator[Callable[..., StoreScp]]:
    """Start dcmtk storescp planning systems: ``tps(port, *options, folder=...)``; all are stopped afterwards."""
    started: list[StoreScp] = []

    def start(port: int, *options: str, folder: Path | None = None) -> StoreScp:
        scp = StoreScp(folder or tmp_path / f"tps-{len(started)}", port, options=options)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def nodes() -> Iterator[list]:
    """Nodes (in-process or subprocesses) a test starts; every one is stopped afterwards."""
    running: list = []
    yield running
    for node in reversed(running):
        if isinstance(node, NodeProcess):
            node.kill()
            node.stop()
        else:
            node.stop()


def node_config(workdir: Path, *, tps_port: int | None = None, quiet_period_s: float = QUIET_PERIOD_S,
                min_free_space_mb: float = 0.0, allowed_callers: tuple[AllowedCaller, ...] | None = None,
                max_attempts: int = 5, initial_delay_s: float = 0.1, max_delay_s: float = 0.2) -> NodeConfig:
    """A loopback node with the route ``mr-to-sct`` (model bulk) delivering to ``tps`` at ``tps_port``."""
    destinations = (DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=tps_port),) \
        if tps_port else ()
    return NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", port=free_port(), allowed_callers=allowed_callers,
                              network_timeout_s=10),
        storage=StorageConfig(spool_dir=workdir / "spool", min_free_space_mb=min_free_space_mb),
        processing=ProcessingConfig(quiet_period_s=quiet_period_s, poll_interval_s=POLL_INTERVAL_S),
        dispatch=DispatchConfig(max_attempts=max_attempts, initial_delay_s=initial_delay_s, max_delay_s=max_delay_s,
                                timeout_s=10),
        # The node's receive/deliver/recover mechanics, on the sCT alone: the QA and its report bundle are
        # delivered and checked in test_report_node.py and test_node_qa.py.
        routes=(RouteConfig(name="mr-to-sct", model="bulk", destinations=tuple(d.name for d in destinations),
                            qa=False),),
        destinations=destinations,
    )


def start_node(config: NodeConfig, nodes: list) -> Node:
    node = Node(config)
    nodes.append(node)
    node.start()
    return node


def jobs(spool: Path) -> list[dict]:
    """Every job with its deliveries, read from the database file read-only (as another process sees it)."""
    names = ("id", "series_uid", "generation", "state", "reason", "output_dir")
    rows = [dict(zip(names, row, strict=True)) for row in
            db_rows(spool, "SELECT id, series_uid, generation, state, reason, output_dir FROM jobs ORDER BY id")]
    for job in rows:
        deliveries = db_rows(spool, "SELECT destination, state, attempts, last_error FROM deliveries "
                                    "WHERE job_id = ?", (job["id"],))
        job["deliveries"] = [dict(zip(("destination", "state", "attempts", "last_error"), d, strict=True))
                             for d in deliveries]
    return rows


def wait_for_job(spool: Path, states: tuple[str, ...] = ("done",), job_id: int = 1,
                 timeout_s: float = JOB_TIMEOUT_S) -> dict:
    def finished():
        found = [j for j in jobs(spool) if j["id"] == job_id] if (spool / "state.sqlite3").exists() else []
        return found[0] if found and found[0]["state"] in states else None

    return wait_for(finished, timeout_s, f"job {job_id} to reach {' or '.join(states)}")


def instance_rows(spool: Path) -> list[tuple[str, str, int]]:
    return db_rows(spool, "SELECT sop_instance_uid, series_uid, generation FROM instances ORDER BY received_at")


def spool_files(spool: Path) -> list[Path]:
    return sorted((spool / "instances").rglob("*.dcm"))


def assert_sct_of(datasets: list[pydicom.Dataset], mr: MrSeries, slices: int) -> None:
    """What the planning system received is one synthetic CT series on the MR's grid, each slice once."""
    assert len(datasets) == slices
    assert len({str(d.SOPInstanceUID) for d in datasets}) == slices, "an sCT instance was delivered twice"
    assert {str(d.SeriesInstanceUID) for d in datasets} != {mr.series_uid}
    assert len({str(d.SeriesInstanceUID) for d in datasets}) == 1
    for dataset in datasets:
        assert dataset.SOPClassUID == CT_IMAGE_STORAGE
        assert dataset.Modality == "CT"
        assert dataset.SyntheticData == "YES"
        assert dataset.StudyInstanceUID == mr.study_uid
        assert dataset.FrameOfReferenceUID == mr.frame_of_reference_uid
    mr_positions = {tuple(round(float(v), 3) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient)
                    for f in mr.files[:slices]}
    assert {tuple(round(float(v), 3) for v in d.ImagePositionPatient) for d in datasets} == mr_positions


# --- 1. the whole path -------------------------------------------------------------------------------


def test_series_from_storescu_arrives_as_sct_at_storescp(tmp_path, mr_series, tps, nodes):
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    config_path = write_toml(config, tmp_path / "node.toml")
    node = start_node(config, nodes)

    sent = storescu(node.port, [mr_series.folder])

    assert sent.returncode == 0, sent.output
    assert sent.statuses == {sop_instance_uid(f): SUCCESS for f in mr_series.files}
    job = wait_for_job(config.storage.spool_dir)
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))
    assert job["series_uid"] == mr_series.series_uid
    assert job["deliveries"] == [{"destination": "tps", "state": "done", "attempts": 1, "last_error": None}]
    assert len(instance_rows(config.storage.spool_dir)) == len(mr_series.files)

    status = run_sct_node("status", "--json", "--config", str(config_path))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [(j["id"], j["state"], j["series_uid"]) for j in report["jobs"]] == [(1, "done", mr_series.series_uid)]
    assert [(d["destination"], d["state"]) for d in report["jobs"][0]["deliveries"]] == [("tps", "done")]
    assert [(s["series_uid"], s["instances"], s["calling_ae"]) for s in report["series"]] == [
        (mr_series.series_uid, len(mr_series.files), "PACS")]


# --- 2.-3. refusals at association and negotiation ----------------------------------------------------


def test_unknown_calling_ae_is_rejected_at_association(tmp_path, mr_series, nodes):
    config = node_config(tmp_path, allowed_callers=(AllowedCaller(ae_title="PACS"),))
    node = start_node(config, nodes)

    intruder = storescu(node.port, [mr_series.folder], calling_ae="INTRUDER")

    assert intruder.returncode != 0
    assert "Association Rejected" in intruder.output
    assert "Calling AE Title Not Recognized" in intruder.output
    assert intruder.statuses == {}
    assert instance_rows(config.storage.spool_dir) == [] and spool_files(config.storage.spool_dir) == []
    # The allowed caller gets in: the rejection was about the AE title, not a broken node.
    allowed = storescu(node.port, [mr_series.files[0]], calling_ae="PACS")
    assert allowed.returncode == 0 and allowed.stored() == {sop_instance_uid(mr_series.files[0])}
    assert [row[0] for row in instance_rows(config.storage.spool_dir)] == [sop_instance_uid(mr_series.files[0])]


def test_unsupported_sop_class_is_refused_at_negotiation(tmp_path, mr_series, nodes):
    secondary_capture = tmp_path / "sc" / "SC.dcm"
    secondary_capture.parent.mkdir()
    dataset = pydicom.dcmread(mr_series.files[0])
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.Modality = "OT"
    dataset.save_as(secondary_capture, enforce_file_format=True)
    config = node_config(tmp_path)
    node = start_node(config, nodes)

    # -R: propose only the contexts these files need (MR and Secondary Capture), so the answer to each shows.
    sent = storescu(node.port, [mr_series.files[0], secondary_capture], options=["-R"])

    assert re.search(r"\(Abstract Syntax Not Supported\)\s*\n\S+\s+Abstract Syntax: =SecondaryCaptureImageStorage",
                     sent.output), sent.output
    assert "No presentation context for: (SC)" in sent.output
    assert str(dataset.SOPInstanceUID) not in sent.statuses  # never sent: there was no context for it
    assert sent.statuses == {sop_instance_uid(mr_series.files[0]): SUCCESS}
    assert [row[0] for row in instance_rows(config.storage.spool_dir)] == [sop_instance_uid(mr_series.files[0])]
    assert [p.stem for p in spool_files(config.storage.spool_dir)] == [sop_instance_uid(mr_series.files[0])]


# --- 4.-5. a destination that is down, or that refuses ------------------------------------------------


@pytest.mark.slow
def test_delivery_to_a_destination_that_is_down_is_retried_until_it_is_back(tmp_path, mr_series, tps, nodes):
    tps_port = free_port()  # nobody listens here yet
    config = node_config(tmp_path, tps_port=tps_port, max_attempts=1000)
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    assert storescu(node.port, [mr_series.folder]).stored() == {sop_instance_uid(f) for f in mr_series.files}
    failing = wait_for(lambda: [j for j in jobs(spool) if j["deliveries"] and j["deliveries"][0]["attempts"] >= 3],
                       JOB_TIMEOUT_S, "three failed delivery attempts")[0]
    assert failing["state"] == "delivering"
    assert failing["deliveries"][0]["state"] == "pending"
    assert "could not connect" in failing["deliveries"][0]["last_error"]
    assert f"127.0.0.1:{tps_port}" in failing["deliveries"][0]["last_error"]

    planning = tps(tps_port)
    job = wait_for_job(spool)
    assert job["deliveries"][0]["state"] == "done" and job["deliveries"][0]["attempts"] > 3
    assert job["deliveries"][0]["last_error"] is None
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))


@pytest.mark.slow
@pytest.mark.parametrize("fault, expected", [
    # A-ASSOCIATE-RJ for every association. storescp closes the connection right after the RJ; on a loaded
    # machine pynetdicom now and then sees the close first and reports the association aborted, not rejected.
    ("--refuse", ("rejected", "aborted")),
    ("--abort-after", ("did not answer",)),  # A-ABORT after the first C-STORE-RQ, before its response
], ids=["refuse", "abort-after"])
def test_delivery_failing_max_attempts_fails_the_job_and_retry_delivers(tmp_path, mr_series, tps, nodes, caplog,
                                                                         fault, expected):
    tps_port = free_port()
    broken = tps(tps_port, fault)
    config = node_config(tmp_path, tps_port=tps_port, max_attempts=3, initial_delay_s=0.05, max_delay_s=0.1)
    config_path = write_toml(config, tmp_path / "node.toml")
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    assert len(storescu(node.port, [mr_series.folder]).stored()) == len(mr_series.files)
    job = wait_for_job(spool, ("failed",))
    assert job["reason"].startswith("delivery to tps failed")
    assert f"TPS@127.0.0.1:{tps_port}" in job["reason"]
    assert any(word in job["reason"] for word in expected), job["reason"]

    def dispatch_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sct_node.node.dispatch"]

    # The dispatcher records the last failure in the database, then logs it: wait for its line.
    wait_for(lambda: len(dispatch_lines()) >= 3, 10, "the dispatcher's third delivery failure in the log")
    attempts = dispatch_lines()
    assert len(attempts) == 3 and any(expected[0] in message for message in attempts), attempts
    assert job["deliveries"] == [{"destination": "tps", "state": "failed", "attempts": 3,
                                  "last_error": job["deliveries"][0]["last_error"]}]
    outputs = sorted(Path(job["output_dir"]).rglob("*.dcm"))
    assert len(outputs) == len(mr_series.files), "a failed delivery must keep the outputs for a retry"
    if fault == "--refuse":
        assert broken.files() == []

    broken.stop()
    planning = tps(tps_port, folder=tmp_path / "tps-working")
    retried = run_sct_node("retry", "1", "--config", str(config_path))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "job 1: delivering"
    job = wait_for_job(spool)
    assert job["reason"] is None and job["deliveries"][0]["state"] == "done"
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))
    assert len(jobs(spool)) == 1


# --- 6.-7. SIGKILL while receiving and while processing ----------------------------------------------


@pytest.mark.slow
def test_sigkill_while_receiving_loses_no_acknowledged_instance(tmp_path, tps, nodes):
    mr = phantom_mr_series(tmp_path / "scanner", slices=40, seed=3, case_id="pelvis-0003")
    planning = tps(free_port())
    # The quiet period must outlast the restart, or the partial series would be routed before it is re-sent.
    config = node_config(tmp_path, tps_port=planning.port, quiet_period_s=10.0)  # restarts took over 3 s on a loaded 2-core CI
    config_path = write_toml(config, tmp_path / "node.toml")
    spool = config.storage.spool_dir
    node = NodeProcess(config_path, config.network.port, tmp_path / "node.log")
    nodes.append(node)

    kill_after = 10
    parser = ResponseParser()
    sender = subprocess.Popen(storescu_command(config.network.port, list(mr.files)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in sender.stderr:
            parser.feed(line)
            if node.process.poll() is None and len(parser.statuses) >= kill_after:
                node.kill()
        sender.wait(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    acknowledged = {uid for uid, status in parser.statuses.items() if status == SUCCESS}
    assert kill_after <= len(acknowledged) < len(mr.files), "the kill must land in the middle of the series"
    assert sender.returncode != 0  # storescu saw the node go away

    # Every instance storescu was told is stored is on disk, complete, and recorded.
    recorded = {row[0] for row in instance_rows(spool)}
    assert acknowledged <= recorded
    for uid in acknowledged:
        stored = pydicom.dcmread(spool / "instances" / mr.series_uid / f"{uid}.dcm")
        assert stored.SOPInstanceUID == uid and len(stored.PixelData) == stored.Rows * stored.Columns * 2

    node = NodeProcess(config_path, config.network.port, tmp_path / "node.log")
    nodes.append(node)
    resent = storescu(config.network.port, list(mr.files))
    assert resent.returncode == 0 and resent.stored() == {sop_instance_uid(f) for f in mr.files}

    job = wait_for_job(spool)
    assert [(j["series_uid"], j["state"]) for j in jobs(spool)] == [(mr.series_uid, "done")]
    assert job["deliveries"][0]["attempts"] == 1
    rows = instance_rows(spool)
    assert sorted(row[0] for row in rows) == sorted(sop_instance_uid(f) for f in mr.files)  # each exactly once
    assert list((spool / "incoming").glob("*.part")) == []
    assert_sct_of(planning.datasets(), mr, len(mr.files))


@pytest.mark.slow
def test_sigkill_while_processing_processes_again_and_delivers_once(tmp_path, mr_series, tps, nodes):
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    config_path = write_toml(config, tmp_path / "node.toml")
    spool = config.storage.spool_dir
    # The real writer, paused 0.15 s after each slice: the kill lands while slices are being written.
    node = NodeProcess(config_path, config.network.port, tmp_path / "node.log", slow_write_s=0.15)
    nodes.append(node)

    assert len(storescu(config.network.port, [mr_series.folder]).stored()) == len(mr_series.files)
    wait_for(lambda: len(list((spool / "outputs").rglob("*.dcm"))) >= 3, JOB_TIMEOUT_S,
             "the sCT writer to be part-way through", interval_s=0.02)
    node.kill()
    crashed = jobs(spool)
    assert [(j["id"], j["state"]) for j in crashed] == [(1, "processing")]
    assert 3 <= len(list((spool / "outputs").rglob("*.dcm"))) < len(mr_series.files)
    assert planning.files() == []

    node = NodeProcess(config_path, config.network.port, tmp_path / "node.log")
    nodes.append(node)
    job = wait_for_job(spool)
    assert len(jobs(spool)) == 1
    assert job["deliveries"][0]["attempts"] == 1
    assert "processed again" in node.log()
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))
    # Nothing of the interrupted run is left where the dispatcher looks.
    assert len(list(Path(job["output_dir"]).rglob("*.dcm"))) == len(mr_series.files)


# --- 8.-10. what the Storage SCP refuses, and what it accepts --------------------------------------------


def test_below_the_free_space_reserve_every_instance_gets_out_of_resources(tmp_path, mr_series, nodes):
    config = node_config(tmp_path, min_free_space_mb=10**9)  # a petabyte reserve: never available
    node = start_node(config, nodes)

    sent = storescu(node.port, [mr_series.folder])

    assert sent.statuses == {sop_instance_uid(f): OUT_OF_RESOURCES for f in mr_series.files}
    assert set(sent.comments.values()) == {"storage reserve reached"}
    assert instance_rows(config.storage.spool_dir) == []
    assert db_rows(config.storage.spool_dir, "SELECT COUNT(*) FROM series") == [(0,)]
    assert list((config.storage.spool_dir / "instances").rglob("*")) == []
    assert list((config.storage.spool_dir / "incoming").iterdir()) == []


def test_truncated_and_uid_less_instances_are_refused_and_the_series_goes_on(tmp_path, mr_series, tps, nodes):
    folder = tmp_path / "series-with-bad-extras"
    shutil.copytree(mr_series.folder, folder)
    # Extra instances with their own SOP Instance UIDs, so the series itself stays complete.
    truncated = pydicom.dcmread(mr_series.files[3])
    truncated.SOPInstanceUID = truncated.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 3 // 2 * 2]  # well-formed, too short
    truncated.save_as(folder / "truncated.dcm", enforce_file_format=True)
    uid_less = pydicom.dcmread(mr_series.files[4])
    uid_less.SOPInstanceUID = uid_less.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del uid_less.SeriesInstanceUID
    uid_less.save_as(folder / "no-series-uid.dcm", enforce_file_format=True)
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    sent = storescu(node.port, [folder])

    bad = {str(truncated.SOPInstanceUID), str(uid_less.SOPInstanceUID)}
    assert {uid: sent.statuses[uid] for uid in bad} == dict.fromkeys(bad, CANNOT_UNDERSTAND)
    assert "truncated" in sent.comments[str(truncated.SOPInstanceUID)]
    assert "SeriesInstanceUID is missing" in sent.comments[str(uid_less.SOPInstanceUID)]
    assert sent.stored() == {sop_instance_uid(f) for f in mr_series.files}
    wait_for_job(spool)
    assert not bad & {row[0] for row in instance_rows(spool)}
    assert not bad & {p.stem for p in spool_files(spool)}
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))


@pytest.mark.parametrize("transfer_syntax, propose, uid", [
    ("jpeg_ls", "-xt", "1.2.840.10008.1.2.4.80"),
    ("jpeg2000", "-xv", "1.2.840.10008.1.2.4.90"),
    ("rle", "-xr", "1.2.840.10008.1.2.5"),
])
def test_compressed_series_is_received_processed_and_delivered(tmp_path, tps, nodes, transfer_syntax, propose, uid):
    files = write_mr_series(make_volume(shape_zyx=(6, 40, 48)), tmp_path / "mr", transfer_syntax=transfer_syntax)
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files} == {uid}
    mr = series_in(tmp_path / "mr")
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    node = start_node(config, nodes)

    sent = storescu(node.port, [mr.folder], options=[propose])

    assert sent.returncode == 0 and sent.stored() == {sop_instance_uid(f) for f in files}
    # Stored as sent: the node keeps the compressed bytes, it does not decode and re-encode.
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in spool_files(config.storage.spool_dir)} == {uid}
    wait_for_job(config.storage.spool_dir)
    assert_sct_of(planning.datasets(), mr, len(files))


@pytest.mark.skipif(dcmtk("dcmcjpeg") is None, reason="dcmtk's dcmcjpeg makes the JPEG Lossless series")
def test_a_jpeg_lossless_series_is_received_as_sent_processed_and_delivered(tmp_path, tps, nodes):
    """JPEG Lossless SV1, the syntax PACS archives hold MR in, is offered at negotiation (storescu -xs proposes it)
    and decoded by python-gdcm."""
    files = write_mr_series(make_volume(shape_zyx=(6, 40, 48)), tmp_path / "plain")
    (tmp_path / "mr").mkdir()
    for path in files:
        subprocess.run([dcmtk("dcmcjpeg"), "+e1", str(path), str(tmp_path / "mr" / path.name)], check=True,
                       capture_output=True, timeout=60)
    mr = series_in(tmp_path / "mr")
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    node = start_node(config, nodes)

    sent = storescu(node.port, [mr.folder], options=["-xs"])

    assert sent.returncode == 0 and sent.stored() == {sop_instance_uid(f) for f in files}
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in spool_files(config.storage.spool_dir)} == {"1.2.840.10008.1.2.4.70"}
    wait_for_job(config.storage.spool_dir)
    assert_sct_of(planning.datasets(), mr, len(files))


# --- re-sends ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_duplicate_sends_of_a_series_are_idempotent(tmp_path, mr_series, tps, nodes):
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    for _ in range(2):  # twice while the series is still being received
        assert len(storescu(node.port, [mr_series.folder]).stored()) == len(mr_series.files)
    wait_for_job(spool)
    again = storescu(node.port, [mr_series.folder])  # and once more after it was processed and delivered
    assert again.stored() == {sop_instance_uid(f) for f in mr_series.files}  # a duplicate is answered Success
    wait_for(lambda: not db_rows(spool, "SELECT 1 FROM series WHERE state = 'receiving'"), JOB_TIMEOUT_S,
             "the router to settle")
    node.stop()  # also stops the dispatcher: nothing more can be delivered after this point

    assert sorted(row[0] for row in instance_rows(spool)) == sorted(sop_instance_uid(f) for f in mr_series.files)
    assert db_rows(spool, "SELECT generation, state, instances FROM series") == [(1, "queued", len(mr_series.files))]
    assert [(j["id"], j["state"]) for j in jobs(spool)] == [(1, "done")]
    assert len(spool_files(spool)) == len(mr_series.files)
    assert_sct_of(planning.datasets(), mr_series, len(mr_series.files))


@pytest.mark.slow
def test_series_resent_with_an_extra_instance_is_processed_again_as_a_new_generation(tmp_path, tps, nodes):
    mr = phantom_mr_series(tmp_path / "scanner", slices=13, seed=5, case_id="pelvis-0005")
    first, extra = list(mr.files[:12]), mr.files[12]  # the extra slice is the most superior one
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    assert len(storescu(node.port, first).stored()) == 12
    wait_for_job(spool)
    assert len(storescu(node.port, list(mr.files)).stored()) == 13  # 12 duplicates and the new slice

    second = wait_for_job(spool, job_id=2)
    assert (second["series_uid"], second["generation"]) == (mr.series_uid, 2)
    assert [(j["id"], j["generation"], j["state"]) for j in jobs(spool)] == [(1, 1, "done"), (2, 2, "done")]
    assert len(instance_rows(spool)) == 13
    assert len(list((Path(second["output_dir"]) / "sct").glob("*.dcm"))) == 13
    received = planning.datasets()
    assert len(received) == 12 + 13  # each job delivered its whole sCT once
    by_uid = {str(d.SOPInstanceUID): d for d in received}
    assert_sct_of(list(by_uid.values()), mr, 13)
    assert sop_instance_uid(extra) in {row[0] for row in instance_rows(spool)}


@pytest.mark.slow
def test_a_resend_that_starts_with_stored_instances_keeps_the_series_open(tmp_path, tps, nodes):
    """A PACS re-sends a whole series after a dropped association: duplicates first, then the rest.

    The duplicates take longer than the quiet period to arrive, so the series must stay open while they
    do; otherwise its first part would be routed on its own and a short sCT delivered.
    """
    mr = phantom_mr_series(tmp_path / "scanner", slices=28, seed=7, case_id="pelvis-0007")
    planning = tps(free_port())
    config = node_config(tmp_path, tps_port=planning.port)
    spool = config.storage.spool_dir
    node = start_node(config, nodes)

    assert len(storescu(node.port, list(mr.files[:24])).stored()) == 24  # the dropped first attempt
    # 24 duplicates (each fsynced and answered in ~50 ms: > 1 s in all, twice the quiet period), then 4 new.
    resent = storescu(node.port, list(mr.files))

    assert resent.stored() == {sop_instance_uid(f) for f in mr.files}
    wait_for_job(spool)
    assert [(j["id"], j["generation"], j["state"]) for j in jobs(spool)] == [(1, 1, "done")]
    assert_sct_of(planning.datasets(), mr, len(mr.files))


# --- preloading ------------------------------------------------------------------------------------------


def test_each_routes_model_is_loaded_at_start_and_one_that_cannot_be_is_reported(tmp_path, nodes, caplog):
    base = node_config(tmp_path)
    missing = tmp_path / "no-such-checkpoint"
    config = base.model_copy(update={"routes": (*base.routes, RouteConfig(name="research", model=str(missing)))})
    with caplog.at_level(logging.INFO, logger="sct_node.node.service"):
        node = start_node(config, nodes)
        wait_for(lambda: any(r.getMessage().startswith("preloaded the models of 2 route(s)") for r in caplog.records),
                 60, "the preload to finish")
    assert ("bulk", ()) in node.processor._models  # loaded before any series arrived
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"route research: model {missing} cannot be loaded")
