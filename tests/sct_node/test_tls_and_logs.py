"""TLS on the Storage SCP (with and without client certificates), and logs that never carry patient identity."""

from __future__ import annotations

import json
import logging
import ssl
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from models.phantoms import generate_phantom
from sct_node.config import (
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    StorageConfig,
    TlsConfig,
)
from sct_node.logs import JsonFormatter, configure_logging
from sct_node.node.service import Node
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.sct_node.node_helpers import free_port

VERIFICATION = "1.2.840.10008.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"



def _start_node(tmp_path: Path, tls: TlsConfig | None) -> Node:
    config = NodeConfig(
        network=NetworkConfig(port=free_port(), tls=tls),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=3600, poll_interval_s=0.1),
    )
    node = Node(config)
    node.start()
    return node


def _echo(port: int, tls_context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="TLS_CLIENT")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCT_NODE",
                         tls_args=(tls_context, None) if tls_context else None)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0x0000


def _client_context(pki: dict[str, Path], with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
    context.check_hostname = False
    if with_certificate:
        context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    return context


def test_tls_scp_accepts_tls_and_refuses_plain_tcp(tmp_path, pki):
    node = _start_node(tmp_path, TlsConfig(certificate=pki["server.pem"], private_key=pki["server.key"]))
    try:
        assert _echo(node.port, _client_context(pki, with_certificate=False))
        assert not _echo(node.port, None)
    finally:
        node.stop()


def test_tls_scp_requires_a_client_certificate_when_configured(tmp_path, pki):
    node = _start_node(tmp_path, TlsConfig(certificate=pki["server.pem"], private_key=pki["server.key"],
                                           ca_certificates=pki["ca.pem"], require_client_certificate=True))
    try:
        assert _echo(node.port, _client_context(pki, with_certificate=True))
        assert not _echo(node.port, _client_context(pki, with_certificate=False))
    finally:
        node.stop()


@pytest.mark.slow
def test_logs_at_info_never_contain_patient_identity(tmp_path, caplog):
    """Receive, route, process: every INFO+ record is checked for the patient's name, ID and birth date."""
    phantom = generate_phantom("pelvis", 5, shape_zyx=(12, 48, 48), spacing_mm=(8.0, 8.0, 12.0))
    written = write_phantom_dicom(phantom, "logs", tmp_path / "dicom")
    files = sorted(written.mr_t1_dir.glob("*.dcm"))
    # Give the phantom a birth date and a distinctive identity so a leak cannot hide.
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = "Leak^Canary", "CANARY-77", "19510417"
        dataset.save_as(path)
    config = NodeConfig(
        network=NetworkConfig(port=free_port()),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=0.3, poll_interval_s=0.1),
    )
    caplog.set_level(logging.INFO)
    node = Node(config)
    node.start()
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(MR_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SCT_NODE")
        assert assoc.is_established
        for path in files:
            assert assoc.send_c_store(path).Status == 0x0000
        assoc.release()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(j.state == "done" for j in node.state.jobs()):
            time.sleep(0.1)
        assert [j.state for j in node.state.jobs()] == ["done"]
    finally:
        node.stop()
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any("complete: job" in r.getMessage() for r in records)
    for record in records:
        text = record.getMessage()
        for secret in ("Leak", "Canary", "CANARY-77", "19510417"):
            assert secret not in text, f"patient identity in log: {text}"


def test_json_lines_format():
    record = logging.LogRecord("sct_node.test", logging.INFO, __file__, 1, "job %d done", (7,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job 7 done" and entry["level"] == "INFO" and entry["logger"] == "sct_node.test"
    assert entry["time"].endswith("Z")
    configure_logging("INFO", json_lines=True)
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("pynetdicom").level == logging.WARNING
    assert logging.getLogger("highdicom").level == logging.WARNING  # one INFO line per copied module otherwise
    configure_logging("INFO", json_lines=False)
