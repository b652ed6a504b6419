"""``sct-node demo``: the whole path on loopback, offline, in one command.

1. generate a phantom MR series (the "scanner");
2. start a stand-in planning system: a Storage SCP that writes what it receives to a folder;
3. start the node with the default model and a route to that planning system;
4. send the series by C-STORE, as a PACS routing rule would;
5. wait until the sCT has arrived at the planning system, and report where everything is and how
   long each stage took.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pynetdicom import AE, evt

from dosimetry.qa_result import QA_JSON
from models.phantoms import generate_phantom
from models.registry import DEFAULT_MODEL
from sct_node.config import (
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    REPORT_SOP_CLASSES,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
)
from sct_node.errors import SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.node.receive import set_tcp_nodelay
from sct_node.node.service import Node
from sct_node.node.state import JobState, JobTimings
from sct_node.report.bundle import PDF_NAME
from sct_node.tools.phantom_writer import write_phantom_dicom

__all__ = ["DemoResult", "PlanningSystemStandIn", "run_demo", "send_series"]

logger = logging.getLogger(__name__)


#: Phantom seed of the demo: outside the seeds the bundled weights were trained (0-3) and validated (1000) on.
DEMO_SEED = 3000
#: 40 slices of 256 x 256: the default diffusion model takes about 0.15 s per slice on a 2-core CPU (15 s for
#: 96 slices, benchmarks/models.py), but the QA's dose calculations grow with the volume too, and a
#: newcomer's first run should take seconds, not minutes.
DEMO_SHAPE_ZYX = (40, 256, 256)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and how long each stage took (seconds)."""

    mr_dir: str
    spool_dir: str
    received_dir: str
    instances_sent: int
    instances_received: int
    job_id: int
    job_state: str
    phantom_s: float
    send_s: float
    quiet_period_s: float
    process_s: float
    deliver_s: float
    total_s: float
    qa_verdict: str
    qa_json: str
    qa_report_pdf: str

    def as_dict(self) -> dict:
        return asdict(self)


class PlanningSystemStandIn:
    """A Storage SCP that stores every instance it receives in a folder (what a TPS import folder sees)."""

    def __init__(self, folder: Path, ae_title: str = "DEMO_TPS") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.received = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for uid in (CT_IMAGE_STORAGE, RT_STRUCTURE_SET_STORAGE, RT_PLAN_STORAGE, RT_DOSE_STORAGE,
                    *REPORT_SOP_CLASSES):
            ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)])
        assert server is not None  # block=False returns the running server
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[union-attr]  # a C-STORE handler's request
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        with self._lock:
            self.received += 1
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def send_series(files: list[Path], host: str, port: int, called_ae: str, calling_ae: str = "DEMO_PACS") -> int:
    """Send files on one association (what a PACS does); returns how many were stored.

    Raises
    ------
    SctNodeError
        If the association fails.
    """
    import pydicom

    ae = AE(ae_title=calling_ae)
    classes = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files})
    for uid in classes:
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])
    if not assoc.is_established:
        raise SctNodeError(f"could not associate with {called_ae} at {host}:{port}")
    stored = 0
    try:
        for index, path in enumerate(files):
            status = assoc.send_c_store(path, msg_id=index % 65535 + 1)
            if getattr(status, "Status", None) == 0x0000:
                stored += 1
    finally:
        assoc.release()
    return stored


def run_demo(workdir: Path, *, site: str = "pelvis", quiet_period_s: float = 2.0, timeout_s: float = 300.0,
             shape_zyx: tuple[int, int, int] | None = DEMO_SHAPE_ZYX) -> DemoResult:
    """Run the whole path once. See the module docstring."""
    workdir = Path(workdir)
    # The demo owns its folder: a previous run's spool would recognise the (deterministic) phantom as duplicates.
    for previous in ("scanner", "spool", "planning-system"):
        shutil.rmtree(workdir / previous, ignore_errors=True)
    started = time.perf_counter()
    phantom = generate_phantom(site, DEMO_SEED, shape_zyx=shape_zyx)
    written = write_phantom_dicom(phantom, f"{site}-{DEMO_SEED:04d}", workdir / "scanner")
    mr_files = sorted(written.mr_t1_dir.glob("*.dcm"))
    phantom_s = time.perf_counter() - started

    tps = PlanningSystemStandIn(workdir / "planning-system")
    port = _free_port()
    config = NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", bind_address="127.0.0.1", port=port),
        storage=StorageConfig(spool_dir=workdir / "spool", min_free_space_mb=100),
        processing=ProcessingConfig(quiet_period_s=quiet_period_s, poll_interval_s=0.2),
        dispatch=DispatchConfig(initial_delay_s=1.0, max_attempts=3),
        routes=(RouteConfig(name="demo", model=DEFAULT_MODEL, destinations=("tps",)),),
        destinations=(DestinationConfig(name="tps", ae_title=tps.ae_title, host="127.0.0.1", port=tps.port),),
    )
    node = Node(config)
    node.start()
    try:
        t0 = time.perf_counter()
        sent = send_series(mr_files, "127.0.0.1", node.port, "SCT_NODE")
        send_s = time.perf_counter() - t0
        last_instance = time.time()
        job = node.wait_for_job(timeout_s)
        if job is None or job.state != JobState.DONE:
            reason = job.reason if job is not None and job.state == JobState.FAILED else "timed out"
            raise SctNodeError(f"demo did not finish: {reason}")
        timings = job.timings or JobTimings()
        processing_s = timings.total_s or 0.0
        total_s = time.perf_counter() - started
        processing_started = job.created_at
        return DemoResult(
            mr_dir=str(written.mr_t1_dir), spool_dir=str(config.storage.spool_dir), received_dir=str(tps.folder),
            instances_sent=sent, instances_received=tps.received, job_id=job.id, job_state=job.state,
            phantom_s=round(phantom_s, 2), send_s=round(send_s, 2),
            quiet_period_s=round(processing_started - last_instance, 2),
            process_s=round(processing_s, 2),
            deliver_s=round(job.updated_at - processing_started - processing_s, 2),
            total_s=round(total_s, 2),
            qa_verdict=timings.qa_verdict or "not run",
            qa_json=str(Path(job.output_dir) / JobFolder.QA / QA_JSON) if job.output_dir else "",
            qa_report_pdf=str(Path(job.output_dir) / JobFolder.REPORT / PDF_NAME) if job.output_dir else "",
        )
    finally:
        node.stop()
        tps.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def default_workdir() -> Path:
    """``./sct-demo`` when writable, else a temporary folder."""
    candidate = Path.cwd() / "sct-demo"
    try:
        candidate.mkdir(exist_ok=True)
        return candidate
    except OSError:
        return Path(tempfile.mkdtemp(prefix="sct-demo-", dir=os.environ.get("TMPDIR")))
