"""Orthanc's DICOMweb plugin as both peers of the node's DICOMweb (issue 19, point 2).

A real Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``) runs on loopback with HTTP Basic on, and
the node runs in this process with ``[dicomweb]`` on. Orthanc pushes an MR series to the node by STOW-RS
(``POST /dicom-web/servers/sct-node/stow``, the node's bearer token in the server's ``HttpHeaders``), and the
node delivers its whole bundle (sCT, RT Structure Set, RT Plan, RT Dose, SR, Encapsulated PDF) back to
Orthanc's ``/dicom-web/studies`` by STOW-RS, authenticated as one of Orthanc's registered users.

Skipped when Orthanc or its DICOMweb plugin is not installed (``tests/install-system-tools.sh``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from sct_node.config import (
    DestinationConfig,
    DicomwebConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.dicomweb import start_dicomweb
from sct_node.dicomweb.tokens import add_token
from sct_node.node.service import Node
from tests.sct_node.node_helpers import db_rows, free_port, phantom_mr_series, wait_for

pytestmark = pytest.mark.slow  # see pyproject: `-m 'not slow'` is the fast subset

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "sct-node", "a long test password"

needs_orthanc_dicomweb = pytest.mark.skipif(
    ORTHANC is None or not PLUGIN.exists(),
    reason="Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")


class Orthanc:
    """A running Orthanc with HTTP Basic on; its REST API as its registered user."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        auth = base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers={"Authorization": f"Basic {auth}", "Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def orthanc_and_node(tmp_path: Path) -> Iterator[tuple[Orthanc, Node]]:
    http_port, dicom_port, node_dicomweb_port = free_port(), free_port(), free_port()
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "orthanc")
    storage = tmp_path / "orthanc-storage"
    config = {
        "Name": "sct-node-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                     "Servers": {"sct-node": {"Url": f"http://127.0.0.1:{node_dicomweb_port}/dicom-web/",
                                              "HttpHeaders": {"Authorization": f"Bearer {token}"}}}},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = tmp_path / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=tmp_path)
    orthanc = Orthanc(process, http_port, log)
    password_file = tmp_path / "orthanc-password"
    password_file.write_text(ORTHANC_PASSWORD + "\n")
    node = None
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"Orthanc exited with status {process.returncode}\n{orthanc.log_tail()}")
            try:
                return "Version" in orthanc.request("GET", "/system")
            except (urllib.error.URLError, OSError, ValueError):
                return False

        wait_for(ready, 20, "Orthanc's REST API")
        node = Node(NodeConfig(
            network=NetworkConfig(ae_title="SCT_NODE", port=free_port()),
            storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=10),
            processing=ProcessingConfig(quiet_period_s=2.0, poll_interval_s=0.2, preload=False),
            dispatch=DispatchConfig(initial_delay_s=1.0, max_attempts=3, timeout_s=30),
            dicomweb=DicomwebConfig(enabled=True, port=node_dicomweb_port, tokens_file=tokens),
            routes=(RouteConfig(name="mr-to-sct", model="bulk", destinations=("pacs",), complete_on=("association",),
                                match={"calling_ae": "^STOW:orthanc$"}),),
            destinations=(DestinationConfig(name="pacs", protocol="stow-rs",
                                            url=f"http://127.0.0.1:{http_port}/dicom-web",
                                            username=ORTHANC_USER, password_file=password_file),),
        ))
        node.start()
        server = start_dicomweb(node)
        try:
            yield orthanc, node
        finally:
            assert server is not None
            server.stop()
    finally:
        if node is not None:
            node.stop()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@needs_orthanc_dicomweb
def test_orthanc_pushes_by_stow_rs_and_receives_the_bundle_by_stow_rs(orthanc_and_node, tmp_path):
    orthanc, node = orthanc_and_node
    mr = phantom_mr_series(tmp_path / "scanner")
    for path in mr.files:
        orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")
    series = orthanc.request("POST", "/tools/lookup", mr.series_uid.encode(), "text/plain")
    [orthanc_series] = [item["ID"] for item in series if item["Type"] == "Series"]

    started = time.monotonic()
    answer = orthanc.request("POST", "/dicom-web/servers/sct-node/stow",
                             json.dumps({"Resources": [orthanc_series]}).encode())
    assert int(answer["InstancesCount"]) == len(mr.files), answer  # synchronous: once every instance was stored
    spool = node.config.storage.spool_dir
    stored = {row[0] for row in db_rows(spool, "SELECT sop_instance_uid FROM instances")}
    assert stored == {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in mr.files}
    assert db_rows(spool, "SELECT DISTINCT calling_ae FROM series") == [("STOW:orthanc",)]

    def job_done() -> tuple | None:
        rows = db_rows(spool, "SELECT state, completed_by FROM jobs") if (spool / "state.sqlite3").exists() else []
        return rows[0] if rows and rows[0][0] in ("done", "failed") else None

    state, completed_by = wait_for(job_done, 120, "the job's STOW-RS delivery to Orthanc")
    deliveries = db_rows(spool, "SELECT state, last_error FROM deliveries")
    assert state == "done", f"{deliveries}\n{orthanc.log_tail()}"
    elapsed = time.monotonic() - started

    studies = orthanc.request("GET", "/studies")
    assert len(studies) == 1  # the bundle went into the MR's study
    modalities: dict[str, int] = {}
    for series_id in orthanc.request("GET", f"/studies/{studies[0]}")["Series"]:
        info = orthanc.request("GET", f"/series/{series_id}")
        modality = info["MainDicomTags"]["Modality"]
        modalities[modality] = modalities.get(modality, 0) + len(info["Instances"])
    assert modalities == {"MR": len(mr.files), "CT": len(mr.files), "RTSTRUCT": 1, "RTPLAN": 1, "RTDOSE": 1,
                          "SR": 1, "DOC": 1}, modalities
    ct = orthanc.request("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"Modality": "CT"},
                                                           "Expand": True}).encode())
    first = orthanc.request("GET", f"/instances/{ct[0]['ID']}/tags")  # by tag: Orthanc 1.10 has no SyntheticData
    assert first["0020,0052"]["Value"] == mr.frame_of_reference_uid
    assert first["0008,001c"]["Value"] == "YES"
    print(f"Orthanc STOW-RS push to the bundle back by STOW-RS: {elapsed:.1f} s; completed by {completed_by}")
