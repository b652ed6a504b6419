"""Storage Commitment Push Model (sct_node.node.commitment): a delivery is done only once the destination commits.

Two kinds of real peer, nothing mocked:

* an "archive" made with pynetdicom on loopback (:class:`Archive`): a Storage SCP and a Storage Commitment SCP
  whose report says what it really holds, sent on a new association to the node's Storage SCP (as Orthanc does)
  or on the delivery's own association, or never; it can refuse the request or lose an instance. The node side
  is the real :class:`~sct_node.node.receive.StorageSCP`, allow-list included;
* a real Orthanc (slow), the deployment's configuration with storage commitment allowed for the node: a job's
  whole bundle delivered with commitment on, and an Orthanc that loses the RT Dose (a Lua script deletes it as
  it is stored), so its report refuses it with 0x0112.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import MRImageStorage, StorageCommitmentPushModel

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
from sct_node.dicom.uids import STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
from sct_node.node.commitment import (
    CommitmentError,
    CommitmentRegistry,
    FailureReason,
    ReportStatus,
    describe_reason,
)
from sct_node.node.dispatch import DeliveryError, Dispatcher, deliver_files, ordered_outputs
from sct_node.node.receive import StorageSCP
from sct_node.node.service import Node
from sct_node.node.spool import Spool
from sct_node.node.state import JobTimings, StateStore
from tests.sct_node.node_helpers import free_port, phantom_mr_series, wait_for
from tests.sct_node.test_orthanc import (
    NODE_AE,
    ORTHANC,
    SHAPE_ZYX,
    OrthancServer,
    _set_value,
    _wait_for,
    _write_mr_series,
    deployment_config,
    needs_orthanc,
    strip_json_comments,
)

ARCHIVE_AE = "ARCHIVE"
#: Slices of the MR series that test_orthanc.py writes, which Orthanc holds besides the bundle.
ORTHANC_MR_SLICES = SHAPE_ZYX[0]
#: Instances of the MR series the archive is sent (the smallest phantom the generator makes).
SLICES = 8


# --- the archive: a real Storage SCP and Storage Commitment SCP --------------------------------------------------


@dataclass
class Archive:
    """A pynetdicom archive on loopback that stores MR images and answers storage commitment requests.

    ``mode`` decides what it does with an N-ACTION: ``new-association`` (report on an association of its own to
    the node, Orthanc's way), ``same-association`` (report on the delivery's association while it is open),
    ``silent`` (accept, never report), ``refuse`` (answer Processing Failure). Its reports say what it holds:
    an instance it did not store, or ``lose`` made it drop, is failed with No Such Object Instance.
    """

    node_port: int
    mode: str = "new-association"
    commitment: bool = True
    ae_title: str = ARCHIVE_AE
    lose: int = 0
    omit: int = 0  # instances its report leaves out altogether (neither committed nor failed)
    stored: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> SOP Class UID
    requests: list[pydicom.Dataset] = field(default_factory=list)  # each N-ACTION's Action Information
    answers: list[pydicom.Dataset] = field(default_factory=list)  # the node's status to each report
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        ae = AE(self.ae_title)
        ae.add_supported_context(MRImageStorage)
        if self.commitment:
            ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def destination(self, timeout_s: float = 10.0, **options: object) -> DestinationConfig:
        return DestinationConfig(name="archive", ae_title=ARCHIVE_AE, host="127.0.0.1", port=self.port,
                                 storage_commitment=True, commitment_timeout_s=timeout_s, **options)

    def settle(self) -> Archive:
        """Wait until every report it started has been answered (the node may be done before the answer is in)."""
        for thread in self._threads:
            thread.join(timeout=20)
        return self

    def stop(self) -> None:
        self.settle()
        self.server.shutdown()

    def _store(self, event: evt.Event) -> int:
        dataset = event.dataset
        self.stored[str(dataset.SOPInstanceUID)] = str(dataset.SOPClassUID)
        return 0x0000

    def _action(self, event: evt.Event) -> tuple[int | pydicom.Dataset, None]:
        info = event.action_information
        self.requests.append(info)
        if self.mode == "refuse":
            status = pydicom.Dataset()
            status.Status = 0x0110
            status.ErrorComment = "archive is read-only"
            return status, None
        for _ in range(self.lose):
            self.stored.popitem()
        if self.mode == "new-association":
            self._later(lambda: self.send_report(self.report_for(info)))
        elif self.mode == "same-association":
            assoc = event.assoc
            self._later(lambda: self.answers.append(assoc.send_n_event_report(
                self.report_for(info), self.event_type(info), StorageCommitmentPushModel,
                STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE)[0]))
        return 0x0000, None

    def _later(self, action: Callable[[], object]) -> None:
        """Run after the N-ACTION response went out, as an SCP that looks its instances up first would."""
        thread = threading.Thread(target=lambda: (time.sleep(0.2), action()), daemon=True)
        thread.start()
        self._threads.append(thread)

    def report_for(self, info: pydicom.Dataset, transaction_uid: str | None = None) -> pydicom.Dataset:
        """The Event Information of a report on ``info``'s instances: committed if stored, failed otherwise."""
        report = pydicom.Dataset()
        report.TransactionUID = transaction_uid or info.TransactionUID
        report.ReferencedSOPSequence, report.FailedSOPSequence = [], []
        for item in info.ReferencedSOPSequence[:len(info.ReferencedSOPSequence) - self.omit]:
            entry = pydicom.Dataset()
            entry.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            entry.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if self.stored.get(str(item.ReferencedSOPInstanceUID)) == str(item.ReferencedSOPClassUID):
                report.ReferencedSOPSequence.append(entry)
            else:
                entry.FailureReason = FailureReason.NO_SUCH_OBJECT_INSTANCE
                report.FailedSOPSequence.append(entry)
        if not report.FailedSOPSequence:
            del report.FailedSOPSequence
        return report

    @staticmethod
    def event_type(report: pydicom.Dataset) -> int:
        return 2 if "FailedSOPSequence" in report else 1

    def send_report(self, report: pydicom.Dataset, calling_ae: str | None = None,
                    event_type: int | None = None) -> pydicom.Dataset | None:
        """Open an association to the node, in the SCP role of the Storage Commitment Push Model, and report.

        Returns the node's status, or None when the node refused the association.
        """
        ae = AE(calling_ae or self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title="SCT_NODE",
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        if not assoc.is_established:
            self.answers.append(None)
            return None
        try:
            status, _ = assoc.send_n_event_report(report, event_type or self.event_type(report),
                                                  StorageCommitmentPushModel, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE)
        finally:
            assoc.release()
        self.answers.append(status)
        return status


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mr_files(tmp_path_factory) -> list[Path]:
    return list(phantom_mr_series(tmp_path_factory.mktemp("mr"), slices=SLICES).files)


@dataclass
class NodeSide:
    """The node's real Storage SCP with a commitment registry, as the node wires them."""

    scp: StorageSCP
    registry: CommitmentRegistry
    state: StateStore

    @property
    def port(self) -> int:
        return self.scp.port


def _node_side(tmp_path: Path, allowed: tuple[str, ...] | None = None) -> NodeSide:
    network = NetworkConfig(ae_title="SCT_NODE", port=free_port(),
                            allowed_callers=tuple(AllowedCaller(ae_title=t, host="127.0.0.1") for t in allowed)
                            if allowed is not None else None)
    storage = StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=1)
    spool = Spool(storage.spool_dir)
    spool.make_folders()
    state = StateStore(spool.state_db)
    registry = CommitmentRegistry()
    scp = StorageSCP(network, storage, state, spool, commitments=registry)
    scp.start()
    return NodeSide(scp, registry, state)


@pytest.fixture
def node_side(tmp_path: Path) -> Iterator[NodeSide]:
    side = _node_side(tmp_path)
    yield side
    side.scp.stop()
    side.state.close()


@pytest.fixture
def archive(node_side: NodeSide) -> Iterator[Archive]:
    peer = Archive(node_side.port)
    yield peer
    peer.stop()


def _output_dir(tmp_path: Path, files: list[Path]) -> Path:
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def _deliver(side: NodeSide, archive: Archive, files: list[Path], tmp_path: Path, **options: object):
    """deliver_files with a commitment over every file; returns the commitment (its report, if any, on it)."""
    destination = archive.destination(**options)  # type: ignore[arg-type]
    commitment = side.registry.prepare(_output_dir(tmp_path, files), destination, job_id=1, attempt=1)
    assert commitment is not None
    try:
        deliver_files(files, destination, "SCT_NODE", 10, commitment)
    finally:
        assert side.registry.pending == 0  # never left waiting, whatever happened
    return commitment


# --- the exchange with a pynetdicom archive -------------------------------------------------------------------------


def test_the_sop_class_and_instance_uids_are_the_standards():
    assert UID(STORAGE_COMMITMENT_PUSH_MODEL).name == "Storage Commitment Push Model SOP Class"
    assert UID(STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE).name == "Storage Commitment Push Model SOP Instance"
    assert describe_reason(0x0112) == "0x0112 No such object instance"
    assert describe_reason(0x0999).startswith("0x0999 (not a Failure Reason")


def test_a_report_on_a_new_association_commits_every_instance(node_side, archive, mr_files, tmp_path):
    commitment = _deliver(node_side, archive, mr_files, tmp_path)

    # The request: one Transaction UID, the node's UID scheme, and every instance sent.
    (request,) = archive.requests
    assert str(request.TransactionUID) == commitment.transaction_uid and request.TransactionUID.startswith("2.25.")
    requested = {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in request.ReferencedSOPSequence}
    assert requested == {(c, i) for i, c in archive.stored.items()} and len(requested) == SLICES
    # The report came on the archive's own association to the node's Storage SCP, and the node answered Success.
    assert commitment.report is not None
    assert commitment.report.via == f"on a new association from {ARCHIVE_AE} at 127.0.0.1"
    assert len(commitment.report.committed) == SLICES and commitment.report.failed == ()
    assert [a.Status for a in archive.settle().answers] == [ReportStatus.SUCCESS]
    assert commitment.problem() is None


def test_a_report_on_the_delivery_association_is_taken_there(node_side, archive, mr_files, tmp_path):
    archive.mode = "same-association"
    started = time.monotonic()
    commitment = _deliver(node_side, archive, mr_files, tmp_path)
    assert commitment.report is not None and commitment.report.via == "on the delivery's association"
    assert len(commitment.report.committed) == SLICES
    assert [a.Status for a in archive.settle().answers] == [ReportStatus.SUCCESS]
    assert time.monotonic() - started < 4  # the report ended the wait: not the whole same-association window


def test_a_lost_instance_fails_the_delivery_naming_the_reason(node_side, archive, mr_files, tmp_path):
    archive.lose = 1
    with pytest.raises(CommitmentError) as raised:
        _deliver(node_side, archive, mr_files, tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, DeliveryError)  # the dispatcher retries it like any failed delivery
    assert message.startswith(f"archive ({ARCHIVE_AE}@127.0.0.1:{archive.port}) did not commit 1 of {SLICES} "
                              f"instance(s): 0x0112 No such object instance for 1 (MR Image Storage 2.25.")
    lost = {str(i.ReferencedSOPInstanceUID) for i in archive.requests[0].ReferencedSOPSequence} - set(archive.stored)
    assert len(lost) == 1 and lost.pop() in message
    # A report with failed instances is still a good report: answered Success.
    assert [a.Status for a in archive.settle().answers] == [ReportStatus.SUCCESS]


def test_a_report_that_leaves_an_instance_out_fails_the_delivery(node_side, archive, mr_files, tmp_path):
    archive.omit = 1
    with pytest.raises(CommitmentError, match=rf"did not commit 1 of {SLICES} instance\(s\): not in its report: 1 "
                                              rf"\(MR Image Storage 2\.25\.\d+\)"):
        _deliver(node_side, archive, mr_files, tmp_path)
    assert len(archive.stored) == SLICES  # it holds them all; its report still has to say so


def test_no_report_in_time_fails_and_a_late_one_is_refused(node_side, archive, mr_files, tmp_path):
    archive.mode = "silent"
    started = time.monotonic()
    with pytest.raises(CommitmentError, match=r"accepted the storage commitment request but sent no report within "
                                              r"1\.5 s \(transaction 2\.25\.\d+\); it must be able to open an "
                                              r"association to this node"):
        _deliver(node_side, archive, mr_files, tmp_path, timeout_s=1.5)
    assert 1.4 < time.monotonic() - started < 5
    # The archive reports after all: too late, refused, and the log says why.
    status = archive.send_report(archive.report_for(archive.requests[0]))
    assert status is not None and status.Status == ReportStatus.INVALID_ARGUMENT_VALUE
    assert "after the node gave up" in str(status.ErrorComment)


def test_a_refused_request_fails_with_the_status_named(node_side, archive, mr_files, tmp_path):
    archive.mode = "refuse"
    with pytest.raises(CommitmentError, match=r"refused the storage commitment request: 0x0110 Processing Failure: "
                                              r"archive is read-only"):
        _deliver(node_side, archive, mr_files, tmp_path)
    assert len(archive.stored) == SLICES  # stored, but not committed: the delivery still failed


def test_a_destination_without_storage_commitment_gets_nothing(node_side, mr_files, tmp_path):
    archive = Archive(node_side.port, commitment=False)
    try:
        with pytest.raises(CommitmentError, match="does not accept the Storage Commitment Push Model SOP Class; "
                                                  "nothing was sent"):
            _deliver(node_side, archive, mr_files, tmp_path)
        assert archive.stored == {} and archive.requests == []
    finally:
        archive.stop()


def test_reports_for_unknown_transactions_or_from_another_ae_are_refused(node_side, archive, mr_files, tmp_path,
                                                                         caplog):
    archive.mode = "silent"
    outcome: list[BaseException | object] = []
    destination = archive.destination(timeout_s=20)
    commitment = node_side.registry.prepare(_output_dir(tmp_path, mr_files), destination, job_id=7, attempt=1)
    assert commitment is not None
    thread = threading.Thread(target=lambda: outcome.append(_capture(
        lambda: deliver_files(mr_files, destination, "SCT_NODE", 10, commitment))))
    thread.start()
    try:
        wait_for(lambda: archive.requests and node_side.registry.pending, 10, "the storage commitment request")
        report = archive.report_for(archive.requests[0])
        with caplog.at_level(logging.WARNING):  # the Storage SCP's rate-limited peer warnings
            unknown = archive.send_report(archive.report_for(archive.requests[0], transaction_uid="2.25.12345"))
            intruder = archive.send_report(report, calling_ae="INTRUDER")
            odd_event = archive.send_report(report, event_type=3)
        assert unknown is not None and unknown.Status == ReportStatus.INVALID_ARGUMENT_VALUE
        assert str(unknown.ErrorComment) == "unknown Transaction UID"
        assert intruder is not None and intruder.Status == ReportStatus.NOT_AUTHORISED
        assert f"another destination (AE title {ARCHIVE_AE})" in str(intruder.ErrorComment)
        assert odd_event is not None and odd_event.Status == ReportStatus.NO_SUCH_EVENT_TYPE
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("from INTRUDER at 127.0.0.1" in w and commitment.transaction_uid in w for w in warnings), warnings
        assert node_side.registry.pending == 1 and commitment.report is None  # still waiting for the archive's
        # The archive's own report still counts.
        status = archive.send_report(report)
        assert status is not None and status.Status == ReportStatus.SUCCESS
        thread.join(timeout=20)
        assert outcome == [None]
        assert commitment.report is not None and len(commitment.report.committed) == SLICES
        # A repeat (its response lost, say) is answered again and changes nothing.
        again = archive.send_report(report)
        assert again is not None and again.Status == ReportStatus.SUCCESS
    finally:
        thread.join(timeout=30)


def test_a_destination_the_allow_list_leaves_out_cannot_report(tmp_path, mr_files, caplog):
    side = _node_side(tmp_path, allowed=("PACS",))  # not the archive
    archive = Archive(side.port)
    try:
        with pytest.raises(CommitmentError, match="sent no report within 1.5 s"):
            _deliver(side, archive, mr_files, tmp_path, timeout_s=1.5)
        assert archive.settle().answers == [None]  # its association to the node was rejected
    finally:
        archive.stop()
        side.scp.stop()
        side.state.close()
    config = NodeConfig(network=NetworkConfig(allowed_callers=(AllowedCaller(ae_title="PACS"),)),
                        destinations=(archive.destination(),))
    with caplog.at_level(logging.WARNING, logger="sct_node.node.commitment"):
        assert CommitmentRegistry.for_config(config) is not None
    assert any("its AE title ARCHIVE is not in network.allowed_callers" in r.getMessage() for r in caplog.records)
    assert CommitmentRegistry.for_config(NodeConfig()) is None  # nobody asks: the SCP does not offer the service


def test_storage_commitment_is_refused_for_a_stow_rs_destination():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="storage_commitment is a DIMSE service"):
        DestinationConfig(name="web", protocol="stow-rs", url="https://pacs.example.org/dicom-web",
                          storage_commitment=True)


def _capture(action: Callable[[], object]) -> BaseException | object:
    try:
        return action()
    except BaseException as error:  # noqa: BLE001  handed to the test thread, which asserts on it
        return error


# --- the dispatcher: retries, the delivery log, images sent ahead ---------------------------------------------------


def _delivering_job(state: StateStore, tmp_path: Path, files: list[Path], images_sent: tuple[str, ...] = ()) -> int:
    for index, path in enumerate(files):
        state.record_instance(sop_instance_uid=f"1.2.3.{index}", series_uid="1.2.3", sop_class_uid=MRImageStorage,
                              path=path, calling_ae="PACS", study_uid="9", modality="MR", description="T1",
                              image_type="ORIGINAL", body_part="PELVIS", now=1000.0)
    (series,) = state.quiet_series(1, now=2000)
    job_id = state.create_job(series, "r", "bulk", tmp_path / "outputs")
    assert job_id is not None and state.claim_job() is not None
    output_dir = state.job(job_id).output_dir
    assert output_dir is not None
    output_dir.mkdir(parents=True)
    for path in files:
        shutil.copy(path, output_dir / path.name)
    state.job_processed(job_id, ("archive",), JobTimings(), images_sent=images_sent)
    return job_id


def test_the_commitment_covers_images_sent_ahead_and_a_retry_sends_everything(node_side, archive, mr_files, tmp_path):
    # The job's images count as sent ahead, but the archive never got them (say it lost them): the first
    # attempt has nothing left to send, yet asks it to commit all of them, and fails; the retry sends everything.
    job_id = _delivering_job(node_side.state, tmp_path, mr_files, images_sent=("archive",))
    dispatcher = Dispatcher(node_side.state, {"archive": archive.destination()},
                            DispatchConfig(initial_delay_s=0.2, max_attempts=3, timeout_s=10), "SCT_NODE",
                            commitments=node_side.registry)

    assert dispatcher.run_due() == 1
    assert archive.stored == {}  # nothing left to send: its images count as sent ahead
    assert len(archive.requests[0].ReferencedSOPSequence) == SLICES  # ... and still all of them to commit
    (delivery,) = node_side.state.deliveries(job_id)
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert delivery.last_error is not None and delivery.last_error.startswith(
        f"archive ({ARCHIVE_AE}@127.0.0.1:{archive.port}) did not commit {SLICES} of {SLICES} instance(s): "
        f"0x0112 No such object instance for {SLICES}")
    log = node_side.state.delivery_log(job_id)
    assert [entry[2] for entry in log] == ["not committed", "will retry"]
    assert log[0][3].startswith(f"0 of {SLICES} instance(s) committed, report on a new association from ARCHIVE")
    assert node_side.state.job(job_id).state == "delivering"

    wait_for(lambda: node_side.state.due_deliveries(), 5, "the retry to fall due")
    assert dispatcher.run_due() == 1
    assert len(archive.stored) == SLICES  # everything sent again, the images included
    assert archive.requests[1].TransactionUID != archive.requests[0].TransactionUID  # a new transaction
    assert [(d.state, d.attempts) for d in node_side.state.deliveries(job_id)] == [("done", 2)]
    log = node_side.state.delivery_log(job_id)
    assert [entry[2] for entry in log] == ["not committed", "will retry", "committed", "delivered"]
    assert log[2][3] == (f"{SLICES} of {SLICES} instance(s) committed, report on a new association from ARCHIVE at "
                         f"127.0.0.1 (transaction {archive.requests[1].TransactionUID})")
    assert node_side.state.job(job_id).state == "done"


def test_a_delivery_waiting_for_its_commitment_is_not_delivered_yet(node_side, archive, mr_files, tmp_path):
    # While the dispatcher waits for the report, nothing is recorded: were the node to stop now, the delivery
    # is pending at the next start, and is sent and requested again. Once the wait is given up, it is retried.
    archive.mode = "silent"
    job_id = _delivering_job(node_side.state, tmp_path, mr_files)
    dispatcher = Dispatcher(node_side.state, {"archive": archive.destination(timeout_s=2)},
                            DispatchConfig(initial_delay_s=30, max_attempts=3, timeout_s=10), "SCT_NODE",
                            commitments=node_side.registry)
    thread = threading.Thread(target=dispatcher.run_due)
    thread.start()
    try:
        wait_for(lambda: node_side.registry.pending, 10, "the storage commitment request")
        assert len(archive.stored) == SLICES  # every C-STORE succeeded ...
        after_restart = StateStore(Spool(tmp_path / "spool").state_db)  # what a restarted node would read
        (delivery,) = after_restart.deliveries(job_id)
        assert (delivery.state, delivery.attempts) == ("pending", 0)  # ... and still nothing is delivered
        assert after_restart.delivery_log(job_id) == []
        assert [d.job_id for d in after_restart.due_deliveries()] == [job_id]  # a restart would attempt it again
        after_restart.close()
    finally:
        thread.join(timeout=20)
    (delivery,) = node_side.state.deliveries(job_id)
    assert (delivery.state, delivery.attempts) == ("pending", 1) and "sent no report within 2 s" in delivery.last_error
    assert [entry[2] for entry in node_side.state.delivery_log(job_id)] == ["will retry"]


# --- Orthanc -------------------------------------------------------------------------------------------------------

#: Orthanc deletes every RT Dose as soon as it is stored: it answered the C-STORE with Success, but no longer
#: holds the instance when asked to commit to it (the Lua API's Delete, allowed in OnStoredInstance).
LOSE_RTDOSE_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'RTDOSE' then
    Delete(instanceId)
  end
end
"""


@dataclass
class OrthancNode:
    orthanc: OrthancServer
    node: Node


@pytest.fixture
def orthanc_committing(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OrthancNode]:
    """Orthanc as in test_orthanc.py, storage commitment allowed for the node, and the node asking for it.

    ``@pytest.mark.parametrize("orthanc_committing", [...], indirect=True)`` may pass ``lose_rtdose``.
    """
    lose_rtdose = bool(getattr(request, "param", False))
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    config_path, _ = deployment_config(tmp_path, http_port, dicom_port, node_port)
    text = config_path.read_text(encoding="utf-8")
    # The shipped file does not allow the node storage commitment (it does not ask for it by default).
    text = _set_value(text, "AllowStorageCommitment", True, text.index('"sct-node" :'))
    if lose_rtdose:
        (tmp_path / "lose-rtdose.lua").write_text(LOSE_RTDOSE_LUA, encoding="utf-8")
        text = _set_value(text, "LuaScripts", ["route-to-sct-node.lua", "lose-rtdose.lua"])
    config_path.write_text(text, encoding="utf-8")
    config = json.loads(strip_json_comments(text))
    assert config["DicomModalities"]["sct-node"]["AllowStorageCommitment"] is True
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([ORTHANC, "--verbose", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=tmp_path, env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = OrthancServer(process, http_port, dicom_port, config["DicomAet"], log_path)
    node = None
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"Orthanc exited with status {process.returncode}\n{orthanc.log_tail()}")
            try:
                return "Version" in orthanc.get("/system")
            except (urllib.error.URLError, OSError, ValueError):
                return False

        _wait_for(ready, 20, "Orthanc's REST API", orthanc.log_tail)
        node = Node(NodeConfig(
            network=NetworkConfig(ae_title=NODE_AE, bind_address="127.0.0.1", port=node_port,
                                  allowed_callers=(AllowedCaller(ae_title=orthanc.ae_title, host="127.0.0.1"),)),
            storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=10),
            processing=ProcessingConfig(quiet_period_s=60.0, poll_interval_s=0.2),
            dispatch=DispatchConfig(initial_delay_s=1.0, max_attempts=2, timeout_s=20),
            routes=(RouteConfig(name="mr-to-sct", model="bulk", destinations=("pacs",), complete_on=("association",)),),
            destinations=(DestinationConfig(name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1",
                                            port=dicom_port, storage_commitment=True, commitment_timeout_s=20),),
        ))
        node.start()
        yield OrthancNode(orthanc, node)
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()


def _send_mr_to_orthanc(orthanc: OrthancServer, folder: Path) -> None:
    """The scanner: the MR series stored in Orthanc, whose Lua rule routes it to the node once it is stable."""
    for path in _write_mr_series(folder):
        answer = orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")
        assert answer["Status"] == "Success", answer


def _diagnostics(setup: OrthancNode) -> Callable[[], str]:
    def text() -> str:
        jobs = setup.node.state.jobs(limit=3)
        return (f"jobs: {jobs}\ndeliveries: {[setup.node.state.deliveries(j.id) for j in jobs]}\n"
                f"delivery log: {[setup.node.state.delivery_log(j.id) for j in jobs]}\n{setup.orthanc.log_tail(40)}")
    return text


@needs_orthanc
@pytest.mark.slow
def test_orthanc_commits_the_whole_bundle_before_the_delivery_is_done(orthanc_committing, tmp_path):
    setup = orthanc_committing
    _send_mr_to_orthanc(setup.orthanc, tmp_path / "mr")
    job = _wait_for(lambda: next(iter(j for j in setup.node.state.jobs(limit=1) if j.state.at_rest), None), 60,
                    "the job to finish", _diagnostics(setup))
    assert job.state == "done", _diagnostics(setup)()

    bundle = ordered_outputs(job.output_dir, "all", "all")
    sent_ahead = ordered_outputs(job.output_dir, "all", "images")
    log = setup.node.state.delivery_log(job.id)
    # The images went ahead, the rest with the delivery, and the delivery counted only after the commitment of
    # all of them, reported by Orthanc on an association of its own.
    assert [entry[2] for entry in log] == ["sent ahead", "committed", "delivered"], log
    committed = log[1][3]
    assert committed.startswith(f"{len(bundle)} of {len(bundle)} instance(s) committed, report on a new "
                                f"association from {setup.orthanc.ae_title} at 127.0.0.1 (transaction 2.25."), committed
    assert log[2][3] == f"{len(bundle) - len(sent_ahead)} instance(s) (the rest: images sent ahead)"
    transaction = committed.rsplit("transaction ", 1)[1].rstrip(")")
    # Orthanc's side: it looked up every instance and reported them all as committed, for that transaction.
    orthanc_log = setup.orthanc.log_path.read_text(errors="replace")
    assert (f"about storage commitment transaction: {transaction} ({len(bundle)} successes, 0 failures)"
            in orthanc_log), setup.orthanc.log_tail(40)
    # And it holds every instance the node committed.
    held = {str(tags) for tags in setup.orthanc.get("/instances")}
    assert len(held) == len(bundle) + ORTHANC_MR_SLICES


@needs_orthanc
@pytest.mark.slow
@pytest.mark.parametrize("orthanc_committing", [True], indirect=True, ids=["orthanc-loses-the-rt-dose"])
def test_orthanc_refusing_to_commit_the_rt_dose_fails_the_delivery_and_retries(orthanc_committing, tmp_path):
    setup = orthanc_committing
    _send_mr_to_orthanc(setup.orthanc, tmp_path / "mr")
    job = _wait_for(lambda: next(iter(j for j in setup.node.state.jobs(limit=1) if j.state.at_rest), None), 60,
                    "the job to finish", _diagnostics(setup))
    assert job.state == "failed", _diagnostics(setup)()  # never done: Orthanc does not keep the RT Dose

    log = setup.node.state.delivery_log(job.id)
    outcomes = [entry[2] for entry in log]
    # Attempt 1 (the rest; images sent ahead) fails on the commitment, is retried with the backoff, and the
    # retry (everything again) fails the same way: max_attempts = 2.
    assert outcomes == ["sent ahead", "not committed", "will retry", "not committed", "failed"], log
    bundle = ordered_outputs(job.output_dir, "all", "all")
    (rt_dose,) = [p for p in bundle if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTDOSE"]
    rt_dose_uid = str(pydicom.dcmread(rt_dose, stop_before_pixels=True).SOPInstanceUID)
    where = f"pacs ({setup.orthanc.ae_title}@127.0.0.1:{setup.orthanc.dicom_port})"
    for _, _, outcome, detail in log:
        if outcome in ("will retry", "failed"):
            assert detail.startswith(f"{where} did not commit 1 of {len(bundle)} instance(s): 0x0112 No such object "
                                     f"instance for 1 (RT Dose Storage {rt_dose_uid})"), detail
    assert log[1][3].startswith(f"{len(bundle) - 1} of {len(bundle)} instance(s) committed, report on a new "
                                f"association from {setup.orthanc.ae_title}")
    (delivery,) = setup.node.state.deliveries(job.id)
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert job.reason is not None and "0x0112 No such object instance" in job.reason
    assert f"({len(bundle) - 1} successes, 1 failures)" in setup.orthanc.log_path.read_text(errors="replace")


@needs_orthanc
@pytest.mark.slow
def test_the_shipped_orthanc_configuration_does_not_let_the_node_ask(tmp_path, mr_files):
    """deploy/orthanc/orthanc.json keeps "AllowStorageCommitment": false: Orthanc aborts the request, and the
    delivery fails saying where to look."""
    http_port, dicom_port = free_port(), free_port()
    config_path, config = deployment_config(tmp_path, http_port, dicom_port, free_port())
    assert config["DicomModalities"]["sct-node"]["AllowStorageCommitment"] is False
    with open(tmp_path / "orthanc.log", "wb") as log:
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    orthanc = OrthancServer(process, http_port, dicom_port, config["DicomAet"], tmp_path / "orthanc.log")
    try:
        def ready() -> bool:
            try:
                return "Version" in orthanc.get("/system")
            except (urllib.error.URLError, OSError, ValueError):
                return False

        _wait_for(ready, 20, "Orthanc's REST API", orthanc.log_tail)
        destination = DestinationConfig(name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=dicom_port,
                                        storage_commitment=True, commitment_timeout_s=5)
        registry = CommitmentRegistry()
        commitment = registry.prepare(_output_dir(tmp_path, mr_files), destination, job_id=1, attempt=1)
        with pytest.raises(CommitmentError, match=r"did not answer the storage commitment request \(association "
                                                  r"aborted or timed out\).*\"AllowStorageCommitment\""):
            deliver_files(mr_files, destination, NODE_AE, 10, commitment)
        assert registry.pending == 0
        assert "The DICOM command N-ACTION is not allowed for this modality" in orthanc.log_path.read_text()
    finally:
        orthanc.stop()
