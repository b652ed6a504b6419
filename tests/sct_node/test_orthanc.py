"""Orthanc as the PACS: it auto-routes a stable MR series to the node, and receives the sCT back.

A real Orthanc runs on free loopback ports with the deployment files in
``deploy/orthanc/`` (only ports, folders and ``StableAge`` substituted), and
the node runs in this process with a route that delivers back to Orthanc. A
small phantom MR series is uploaded to Orthanc through its REST API, as a
scanner's C-STORE would have stored it; nothing else is done by hand.

Skipped when Orthanc is not installed (``apt-get install orthanc``, see
``tests/install-system-tools.sh``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from models.phantoms import generate_phantom
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
from sct_node.node.service import Node
from sct_node.tools.phantom_writer import phantom_identity, write_image_series
from tests.sct_node.node_helpers import free_port

pytestmark = pytest.mark.slow  # see pyproject: `-m 'not slow'` is the fast subset

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "orthanc"
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
#: A small pelvis grid: quick to send, translate and deliver, still the whole anatomy.
SHAPE_ZYX = (12, 48, 48)
SPACING_MM = (8.0, 8.0, 12.0)
#: Orthanc's StableAge for the test (the deployment uses 60 s).
STABLE_AGE_S = 1
NODE_AE = "SCT_NODE"
SYNTHETIC_DATA_TAG = "0008,001c"

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc)")



def _wait_for(predicate: Callable[[], object], timeout_s: float, what: str, diagnostics: Callable[[], str]):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.2)


def strip_json_comments(text: str) -> str:
    """Orthanc's configuration syntax (JSON with // and /* */ comments) as plain JSON."""
    out, i, in_string = [], 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


@dataclass
class OrthancServer:
    """A running Orthanc on loopback, with its REST API."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int
    ae_title: str
    log_path: Path

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type} if body is not None else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return response.read().decode()

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "Orthanc log (last lines):\n" + "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _set_value(text: str, key: str, value: object, start: int = 0) -> str:
    """Replace the value of the first ``"key" : value`` at or after ``start``, leaving comments in place."""
    pattern = re.compile(rf'("{re.escape(key)}"\s*:\s*)(\[[^\]]*\]|"[^"]*"|[^,\s}}]+)')
    match = pattern.search(text, start)
    assert match is not None, f"deploy/orthanc/orthanc.json has no {key!r} to substitute"
    return text[:match.start(2)] + json.dumps(value) + text[match.end(2):]


def deployment_config(workdir: Path, http_port: int, dicom_port: int, node_port: int) -> tuple[Path, dict]:
    """deploy/orthanc/orthanc.json with this test's folders, ports and StableAge; everything else as deployed.

    The values are substituted in the text, so Orthanc itself parses the shipped file, comments and all,
    and finds the Lua script by the shipped relative path (next to the configuration).
    """
    text = (DEPLOY_DIR / "orthanc.json").read_text(encoding="utf-8")
    storage = workdir / "orthanc-storage"
    storage.mkdir()
    shutil.copy(DEPLOY_DIR / "route-to-sct-node.lua", workdir / "route-to-sct-node.lua")
    for key, value in (("StorageDirectory", str(storage)), ("IndexDirectory", str(storage)), ("HttpPort", http_port),
                       ("DicomPort", dicom_port), ("StableAge", STABLE_AGE_S)):
        text = _set_value(text, key, value)
    node_entry = text.index('"sct-node" :')
    text = _set_value(text, "Host", "127.0.0.1", node_entry)
    text = _set_value(text, "Port", node_port, node_entry)
    path = workdir / "orthanc.json"
    path.write_text(text, encoding="utf-8")
    config = json.loads(strip_json_comments(text))
    assert (config["HttpPort"], config["DicomPort"], config["StableAge"]) == (http_port, dicom_port, STABLE_AGE_S)
    node = config["DicomModalities"]["sct-node"]
    assert (node["Host"], node["Port"]) == ("127.0.0.1", node_port)
    assert node["AET"] == NODE_AE, "deploy/orthanc/orthanc.json: the sct-node modality must use the node's AE title"
    return path, config


@pytest.fixture
def orthanc_and_node(tmp_path: Path) -> Iterator[tuple[OrthancServer, Node]]:
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    config_path, config = deployment_config(tmp_path, http_port, dicom_port, node_port)
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        # TCP_NODELAY=1 as deploy/orthanc/orthanc.json asks of the service's environment.
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={**os.environ, "TCP_NODELAY": "1"})
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
        node_config = NodeConfig(
            network=NetworkConfig(ae_title=NODE_AE, bind_address="127.0.0.1", port=node_port,
                                  allowed_callers=(AllowedCaller(ae_title=orthanc.ae_title, host="127.0.0.1"),)),
            storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=10),
            # The recipe's completion rule: Orthanc sends a stable series whole on one association, so the
            # node completes it at the release; the quiet period (60 s, the default) would miss the wait below.
            processing=ProcessingConfig(quiet_period_s=60.0, poll_interval_s=0.2),
            dispatch=DispatchConfig(initial_delay_s=1.0, max_attempts=3, timeout_s=20),
            routes=(RouteConfig(name="mr-to-sct", model="bulk", destinations=("pacs",), complete_on=("association",)),),
            destinations=(DestinationConfig(name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1",
                                            port=dicom_port),),
        )
        node = Node(node_config)
        node.start()
        yield orthanc, node
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()


def _write_mr_series(folder: Path) -> list[Path]:
    phantom = generate_phantom("pelvis", 5, shape_zyx=SHAPE_ZYX, spacing_mm=SPACING_MM)
    write_image_series(phantom.mr_t1, folder, phantom_identity("pelvis", 5, "pelvis-orthanc"), "MR")
    return sorted(folder.glob("*.dcm"))


@needs_orthanc
def test_orthanc_routes_stable_mr_series_to_node_and_stores_the_sct(orthanc_and_node, tmp_path: Path):
    orthanc, node = orthanc_and_node
    mr_files = _write_mr_series(tmp_path / "mr")
    mr_header = pydicom.dcmread(mr_files[0], stop_before_pixels=True)

    # The "scanner": every MR instance stored in Orthanc through its REST API.
    for path in mr_files:
        answer = orthanc.request("POST", "/instances", path.read_bytes(), "application/dicom")
        assert answer["Status"] == "Success", answer
    study_id = answer["ParentStudy"]

    def sct_series() -> dict | None:
        for series in orthanc.get(f"/studies/{study_id}/series"):
            if series["MainDicomTags"].get("Modality") == "CT" and len(series["Instances"]) == len(mr_files):
                return series
        return None

    def diagnostics() -> str:
        jobs = node.state.jobs(limit=5)
        deliveries = [node.state.deliveries(j.id) for j in jobs]
        return f"node series: {node.state.series()}\nnode jobs: {jobs}\ndeliveries: {deliveries}\n" \
               f"Orthanc jobs: {orthanc.get('/jobs?expand')}\n{orthanc.log_tail()}"

    # StableAge (1 s) -> Lua -> C-STORE to the node -> release + grace (2 s) -> bulk model -> C-STORE back.
    ct = _wait_for(sct_series, 35, "the sCT series in Orthanc", diagnostics)

    # The node received the whole MR series from Orthanc (the route ran, not a hand-made send).
    received = node.state.series()
    mr_records = [s for s in received if s.modality == "MR"]
    assert len(mr_records) == 1, diagnostics()
    assert mr_records[0].series_uid == str(mr_header.SeriesInstanceUID)
    assert mr_records[0].instances == len(mr_files)
    assert mr_records[0].calling_ae == orthanc.ae_title
    job = node.state.jobs(limit=1)[0]
    assert job.completed_by is not None and job.completed_by.startswith("association"), job.completed_by
    _wait_for(lambda: node.state.job(job.id).state == "done", 10, "the node to record the delivery", diagnostics)
    assert [(d.destination, d.state) for d in node.state.deliveries(job.id)] == [("pacs", "done")]

    # Orthanc holds, in the MR's study, a CT series marked synthetic, that came from the node by DICOM, and the
    # whole QA bundle beside it: Orthanc accepted every object the node writes.
    study_series = orthanc.get(f"/studies/{study_id}/series")
    assert sorted(s["MainDicomTags"]["Modality"] for s in study_series) == [
        "CT", "DOC", "MR", "RTDOSE", "RTPLAN", "RTSTRUCT", "SR"]
    for instance_id in ct["Instances"]:
        tags = orthanc.get(f"/instances/{instance_id}/tags")
        assert tags[SYNTHETIC_DATA_TAG]["Value"] == "YES"
        assert tags["0008,0016"]["Value"] == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        assert tags["0020,000d"]["Value"] == str(mr_header.StudyInstanceUID)
        assert tags["0020,0052"]["Value"] == str(mr_header.FrameOfReferenceUID)
    first = ct["Instances"][0]
    assert orthanc.get_text(f"/instances/{first}/metadata/RemoteAET") == NODE_AE
    assert ct["MainDicomTags"]["SeriesInstanceUID"] != str(mr_header.SeriesInstanceUID)

    # No loop: once the sCT series is stable too, Orthanc has still sent only the MR series to the node.
    _wait_for(lambda: orthanc.get(f"/series/{ct['ID']}")["IsStable"], 10, "the sCT series to become stable",
              diagnostics)
    time.sleep(1.5)  # the stable-series callback runs asynchronously after IsStable flips
    store_jobs = [j for j in orthanc.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
    assert len(store_jobs) == 1, store_jobs
    assert store_jobs[0]["State"] == "Success"
    assert [s.modality for s in node.state.series()] == ["MR"]


def test_deployment_config_parses_and_routes_to_the_node():
    """The deployment file, as shipped, is valid Orthanc JSON and wires the Lua rule to the node."""
    config = json.loads(strip_json_comments((DEPLOY_DIR / "orthanc.json").read_text(encoding="utf-8")))
    assert config["LuaScripts"] == ["route-to-sct-node.lua"]
    assert (DEPLOY_DIR / config["LuaScripts"][0]).is_file()
    node = config["DicomModalities"]["sct-node"]
    assert node["AET"] == NODE_AE and node["AllowStore"] is True
    assert config["DicomAlwaysAllowStore"] is False  # only listed modalities may store
    assert config["StableAge"] == 60
    lua = (DEPLOY_DIR / "route-to-sct-node.lua").read_text(encoding="utf-8")
    assert re.search(r"^function OnStableSeries\(seriesId, tags, metadata\)", lua, re.MULTILINE)
    assert "local NODE = 'sct-node'" in lua


def test_strip_json_comments_keeps_slashes_inside_strings():
    text = '{\n  // comment\n  "url" : "http://host//path", /* block\n comment */ "n" : 1 // end\n}'
    assert json.loads(strip_json_comments(text)) == {"url": "http://host//path", "n": 1}
