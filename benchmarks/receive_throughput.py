"""Receive throughput of the sct-node Storage SCP against dcmtk and Orthanc, and end-to-end latency.

Run with the project installed (``pip install -e .``, as in the README) and its virtual environment active::

    python benchmarks/receive_throughput.py [--instances 470] [--repeat 1]

Method
------
One MR series (a seeded pelvis phantom, ``--instances`` slices of 64 x 64,
about 10 KB per instance, MR Image Storage, Explicit VR Little Endian) is
written once to a temporary folder. For every receiver the *same* folder is
sent by dcmtk's ``storescu +sd +r`` on ONE association, from a fresh
receiver with empty storage (so no receiver sees duplicates). The time is
the wall time of the ``storescu`` process, from exec to exit: association
set-up, every C-STORE and its response, release, and ``storescu``'s own scan
of the folder (the same for every receiver, about 0.1 s). Instances per
second = instances / that time; with ``--repeat K`` the best of K runs
counts. After each run the receiver must hold every instance (counted on its
own storage), otherwise the run is reported as failed, not timed.

Receivers (all on 127.0.0.1, storage in a temporary folder on the same disk)
---------------------------------------------------------------------------
(a) sct-node: ``python -m sct_node serve`` as its own process, with its
    durability guarantees on: every instance is written to a temporary file,
    fsynced, renamed into place, its folder fsynced, and recorded in the
    SQLite state database (WAL, ``synchronous=FULL``) before Success is
    answered. The one route matches no modality and the quiet period is one
    hour, so no processing competes with receiving. The node disables
    Nagle's algorithm on its own socket; ``storescu`` runs with dcmtk's
    defaults, like (b) and (d).
(a') informational, no target: the same node, with ``TCP_NODELAY=1`` for
    ``storescu`` too, i.e. the network settings of (c). Compared with (c) it
    shows what the node's own work (fsyncs, database, pynetdicom) costs.
(b) dcmtk ``storescp -od DIR PORT`` with its default settings: each instance
    is written to a file, without fsync. ``storescu`` and ``storescp`` run
    with dcmtk's default, which in this dcmtk build leaves Nagle's algorithm
    on (``TCP_NODELAY`` unset, "using the default value (0)").
(c) the same with the environment variable ``TCP_NODELAY=1`` for both
    ``storescu`` and ``storescp``: dcmtk then disables Nagle's algorithm on
    its sockets. This is the fastest plain receiver on the machine and the
    ceiling for a receiver that also fsyncs.
(d) Orthanc (``/usr/sbin/Orthanc``) with its defaults, from a minimal
    configuration: storage and index in a temporary folder, free DICOM and
    HTTP ports, ``DicomAlwaysAllowStore``, no remote access, no plugins.
    Orthanc's defaults include ``SyncStorageArea: true`` (fsync of every
    stored file) and its SQLite index, so it is the durable peer.

Targets printed beside the ratios: sct-node at least 5x (b) and (d) (what a
PACS that uses dcmtk's defaults sees), at least 0.5x (c).

Why the defaults are slow on loopback: with Nagle's algorithm on, the sender
holds the data PDU of each C-STORE until its command PDU is acknowledged,
and Linux delays that acknowledgement (delayed ACK, about 40 ms) because the
receiver has nothing to answer yet. Each instance then costs one or two such
delays whatever the receiver does with the data; ``TCP_NODELAY`` on the
sender, or an immediate acknowledgement (``TCP_QUICKACK``) on the receiver,
removes it.

End-to-end latency
------------------
The node runs in this process with a quiet period of ``--quiet-period-s``
and a poll interval of 0.1 s, routing to a stand-in planning system (a
pynetdicom Storage SCP that writes to a folder). The demo volume (the
``sct-node demo`` pelvis phantom, 100 x 256 x 256) is sent on one
association. The latency runs from the moment the node recorded the last
MR instance to the moment the planning system stored the last sCT
instance. It includes the quiet period (printed, and subtracted for the
"after quiet period" figure), the router's detection lag (at most one poll
interval), reading the series, the bulk model, writing the sCT series, the
dispatcher's poll and the C-STORE of every sCT instance.

A receiver that cannot be started (Orthanc or dcmtk absent, a port taken)
gets one line saying so; the others still run. The script exits 0 unless
its arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pynetdicom
from pynetdicom import evt

# Run as a script, Python puts benchmarks/ first on sys.path, where benchmarks/models.py would shadow the
# models package: the repository root goes first instead (as in benchmarks/models.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _peers import PeerUnavailable, dcmtk_tool, end_process, free_port, log_tail, port_open, wait_until

from models.phantoms import generate_phantom
from sct_node.config import (
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
    load_config,
)
from sct_node.node.service import Node, state_path
from sct_node.node.state import JobTimings, StateStore
from sct_node.tools.demo import PlanningSystemStandIn, send_series
from sct_node.tools.phantom_writer import phantom_identity, write_image_series

ORTHANC = "/usr/sbin/Orthanc"
START_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 900.0
#: The series sent for throughput: small slices, so per-instance costs (protocol, fsync, database) dominate.
SLICE_SHAPE_YX = (64, 64)
SPACING_MM = (6.0, 6.0, 2.5)
TARGETS = {"b": 5.0, "c": 0.5, "d": 5.0}


ReceiverUnavailable = PeerUnavailable  # what _peers.wait_until raises, under this script's name


@dataclass(frozen=True)
class Run:
    """One send of the series to one receiver."""

    elapsed_s: float
    stored: int
    sender_rc: int

    def valid(self, expected: int) -> bool:
        return self.sender_rc == 0 and self.stored == expected


@dataclass(frozen=True)
class Outcome:
    """A receiver's best run, or why it has none."""

    key: str
    label: str
    best_s: float | None
    instances: int
    problem: str | None

    @property
    def rate_per_s(self) -> float | None:
        return self.instances / self.best_s if self.best_s else None


# --- helpers ------------------------------------------------------------------------------------------








def first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip("$ ") if lines else "unknown"








def write_series(folder: Path, instances: int) -> list[Path]:
    """The MR series every receiver gets: a pelvis phantom of ``instances`` 64 x 64 slices."""
    # Under 100 slices the slices thicken so the series still covers the pelvis (the demo's 250 mm).
    spacing_mm = (*SPACING_MM[:2], max(SPACING_MM[2], 250.0 / instances))
    phantom = generate_phantom("pelvis", 0, shape_zyx=(instances, *SLICE_SHAPE_YX), spacing_mm=spacing_mm)
    identity = phantom_identity("pelvis", 0, "pelvis-bench")
    write_image_series(phantom.mr_t1, folder, identity, "MR")
    return sorted(folder.glob("*.dcm"))


# --- receivers ----------------------------------------------------------------------------------------


class Receiver:
    """A Storage SCP started fresh for one run, on a free loopback port, storing under ``workdir``."""

    key = ""
    label = ""
    ae_title = "ANY-SCP"
    #: Environment of the sender (and of a dcmtk receiver); never mutated.
    sender_env: ClassVar[dict[str, str]] = {}

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "receiver.log"

    def start(self) -> None:
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
            self.process = None

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                            env={**os.environ, **(env or {})})


class SctNodeReceiver(Receiver):
    key, label, ae_title = "a", "sct-node (fsync file + folder + SQLite FULL)", "SCT_NODE"

    def start(self) -> None:
        config_path = self.workdir / "node.toml"
        config_path.write_text(
            "[network]\n"
            f'ae_title = "{self.ae_title}"\nbind_address = "127.0.0.1"\nport = {self.port}\n'
            "[storage]\n"
            f'spool_dir = "{self.workdir / "spool"}"\nmin_free_space_mb = 100.0\n'
            "[processing]\n"
            "quiet_period_s = 3600.0  # nothing becomes complete during the run\n"
            "[logging]\n"
            'level = "WARNING"\n'
            "[[routes]]\n"
            'name = "none"\n'
            'match = { modality = ["NONE"] }  # matches no series: receiving only\n',
            encoding="utf-8")
        self.config = load_config(config_path)
        self._spawn([sys.executable, "-m", "sct_node", "serve", "--config", str(config_path)])
        wait_until(lambda: port_open(self.port), START_TIMEOUT_S, self.process, "sct-node serve")

    def stored(self) -> int:
        state = StateStore(state_path(self.config))
        try:
            return state.instance_count()
        finally:
            state.close()


class SctNodeNoDelaySenderReceiver(SctNodeReceiver):
    """Informational: the node with the sender's Nagle off too, i.e. the same network settings as (c)."""

    key, label = "a'", "sct-node, storescu TCP_NODELAY=1 (as in c)"
    sender_env: ClassVar[dict[str, str]] = {"TCP_NODELAY": "1"}


class StorescpReceiver(Receiver):
    key, label = "b", "dcmtk storescp, defaults"

    def __init__(self, workdir: Path, storescp: str) -> None:
        super().__init__(workdir)
        self.storescp = storescp
        self.output = workdir / "received"

    def start(self) -> None:
        self.output.mkdir()
        self._spawn([self.storescp, "-od", str(self.output), str(self.port)], env=self.sender_env)
        wait_until(lambda: port_open(self.port), START_TIMEOUT_S, self.process, "storescp")

    def stored(self) -> int:
        return sum(1 for path in self.output.iterdir() if path.is_file())


class StorescpNoDelayReceiver(StorescpReceiver):
    key, label = "c", "dcmtk storescp, TCP_NODELAY=1 both ends"
    sender_env: ClassVar[dict[str, str]] = {"TCP_NODELAY": "1"}


class OrthancReceiver(Receiver):
    key, label, ae_title = "d", "Orthanc, defaults (SyncStorageArea on)", "ORTHANC"

    def start(self) -> None:
        if not (os.path.isfile(ORTHANC) and os.access(ORTHANC, os.X_OK)):
            raise ReceiverUnavailable(f"{ORTHANC} is not installed")
        self.http_port = free_port()
        storage = self.workdir / "orthanc-storage"
        storage.mkdir()
        config = {
            "Name": "throughput-benchmark",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "Plugins": [],
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self._spawn([ORTHANC, str(config_path)])
        wait_until(self._http_ready, START_TIMEOUT_S, self.process, "Orthanc")
        wait_until(lambda: port_open(self.port), START_TIMEOUT_S, self.process, "Orthanc's DICOM port")

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
            return json.loads(response.read())

    def _http_ready(self) -> bool:
        try:
            return "Version" in self._get("/system")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stored(self) -> int:
        return int(self._get("/statistics")["CountInstances"])


# --- throughput ---------------------------------------------------------------------------------------


def send_once(receiver: Receiver, storescu: str, series_dir: Path) -> Run:
    command = [storescu, "-aec", receiver.ae_title, "+sd", "+r", "127.0.0.1", str(receiver.port), str(series_dir)]
    env = {**os.environ, **receiver.sender_env}
    started = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SEND_TIMEOUT_S,
                            env=env)
    elapsed_s = time.perf_counter() - started
    if result.returncode != 0:
        print(f"    storescu exited {result.returncode}: {result.stderr.strip()[-300:]}", flush=True)
    return Run(elapsed_s, receiver.stored(), result.returncode)


def measure(factory, key: str, label: str, storescu: str | None, series_dir: Path, instances: int, repeat: int,
            scratch: Path) -> Outcome:
    if storescu is None:
        return Outcome(key, label, None, instances, "dcmtk storescu not found (apt-get install dcmtk)")
    times: list[float] = []
    problem = None
    for index in range(repeat):
        workdir = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=scratch))
        try:
            receiver = factory(workdir)
        except ReceiverUnavailable as error:
            return Outcome(key, label, None, instances, str(error))
        try:
            receiver.start()
            run = send_once(receiver, storescu, series_dir)
        except ReceiverUnavailable as error:
            tail = log_tail(receiver.log_path)
            return Outcome(key, label, None, instances, f"{error}{'; log: ' + tail if tail else ''}")
        except subprocess.TimeoutExpired:
            problem = f"storescu did not finish within {SEND_TIMEOUT_S:.0f} s"
            continue
        finally:
            receiver.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"  ({key}) run {index + 1}/{repeat}: {run.elapsed_s:7.2f} s, {instances / run.elapsed_s:8.1f} "
              f"instances/s, receiver holds {run.stored}/{instances}", flush=True)
        if run.valid(instances):
            times.append(run.elapsed_s)
        else:
            problem = f"receiver holds {run.stored} of {instances} instances (storescu status {run.sender_rc})"
    if not times:
        return Outcome(key, label, None, instances, problem or "no valid run")
    return Outcome(key, label, min(times), instances, None)


def print_table(outcomes: list[Outcome]) -> None:
    by_key = {o.key: o for o in outcomes}
    node = by_key.get("a")
    print()
    print(f"{'receiver':49}  {'best s':>8}  {'inst/s':>8}  {'node / this':>11}  {'target':>8}  verdict")
    print("-" * 100)
    for outcome in outcomes:
        name = f"({outcome.key})".ljust(5) + outcome.label
        if outcome.rate_per_s is None:
            print(f"{name:49}  not measured: {outcome.problem}")
            continue
        ratio = target = verdict = ""
        if outcome.key in TARGETS:
            if node is not None and node.rate_per_s is not None:
                value = node.rate_per_s / outcome.rate_per_s
                ratio, target = f"{value:.2f}x", f">= {TARGETS[outcome.key]:g}x"
                verdict = "met" if value >= TARGETS[outcome.key] else "NOT met"
            else:
                ratio = "n/a"
        print(f"{name:49}  {outcome.best_s:8.2f}  {outcome.rate_per_s:8.1f}  {ratio:>11}  {target:>8}  {verdict}")
    print("\nnode / this: the node's (a) instances per second over that receiver's; the time is storescu's wall "
          "time\n(association, every C-STORE and its response, release). (a), (b) and (d) get the same sender, "
          "dcmtk's defaults.")
    informational, plain = by_key.get("a'"), by_key.get("c")
    if informational and informational.rate_per_s and plain and plain.rate_per_s:
        value = informational.rate_per_s / plain.rate_per_s
        print(f"With the network settings of (c) (sender's Nagle off too), the node reaches "
              f"{informational.rate_per_s:.1f} instances/s = {value:.2f}x (c) (target >= {TARGETS['c']:g}x: "
              f"{'met' if value >= TARGETS['c'] else 'NOT met'}).")


# --- end-to-end latency -------------------------------------------------------------------------------


class TimedPlanningSystem(PlanningSystemStandIn):
    """The demo's stand-in planning system, also noting when it stored its last instance."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.last_stored_at = 0.0

    def _store(self, event: evt.Event) -> int:
        status = super()._store(event)
        self.last_stored_at = time.time()
        return status


def measure_latency(scratch: Path, quiet_period_s: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="latency-", dir=scratch))
    phantom = generate_phantom("pelvis", 0)  # the demo volume: the site's default grid
    identity = phantom_identity("pelvis", 0, "pelvis-0000")
    files = sorted(write_image_series(phantom.mr_t1, workdir / "mr", identity, "MR").glob("*.dcm"))
    shape = "x".join(map(str, phantom.mr_t1.shape))
    tps = TimedPlanningSystem(workdir / "planning-system")
    poll_interval_s = 0.1
    config = NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", bind_address="127.0.0.1", port=free_port()),
        storage=StorageConfig(spool_dir=workdir / "spool", min_free_space_mb=100),
        processing=ProcessingConfig(quiet_period_s=quiet_period_s, poll_interval_s=poll_interval_s),
        dispatch=DispatchConfig(initial_delay_s=1.0, max_attempts=3),
        routes=(RouteConfig(name="latency", model="bulk", destinations=("tps",)),),
        destinations=(DestinationConfig(name="tps", ae_title=tps.ae_title, host="127.0.0.1", port=tps.port),),
    )
    node = Node(config)
    node.start()
    try:
        sent = send_series(files, "127.0.0.1", node.port, "SCT_NODE")
        job = node.wait_for_job(300, poll_interval_s=0.05)
        if job is None or job.state != "done":
            print(f"latency: the job did not finish ({job.state if job else 'no job'}"
                  f"{': ' + job.reason if job and job.reason else ''})")
            return
        last_received_at = max(s.last_received_at for s in node.state.series())
        timings = job.timings or JobTimings()
    finally:
        node.stop()
        tps.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    total_s = tps.last_stored_at - last_received_at
    detection_s = job.created_at - (last_received_at + quiet_period_s)
    processing_s = timings.total_s or 0.0
    dispatch_s = total_s - quiet_period_s - detection_s - processing_s
    print()
    print(f"End-to-end latency, demo volume ({shape} voxels, {sent} MR instances in, {tps.received} sCT "
          f"instances out, model bulk, {os.cpu_count()} CPU cores):")
    print("  from the node recording the last MR instance to the planning system storing the last sCT instance")
    rows = [
        ("total", total_s),
        ("  quiet period (configured)", quiet_period_s),
        (f"  router detection lag (polls every {poll_interval_s:g} s)", detection_s),
        ((f"  processing: read {timings.read_s or 0.0:.2f} + model {timings.model_s or 0.0:.2f} "
          f"+ write {timings.write_s or 0.0:.2f}"), processing_s),
        ("  claim, dispatcher poll, association, C-STOREs", dispatch_s),
    ]
    for name, value_s in rows:
        print(f"  {name:58} {value_s:6.2f} s")
    print(f"  {'total after the quiet period':58} {total_s - quiet_period_s:6.2f} s")


# --- main ---------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; found {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; found {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="C-STORE receive throughput of sct-node vs dcmtk storescp and Orthanc (dcmtk storescu, one "
                    "association), and the node's end-to-end latency for the demo volume. See the module docstring "
                    "for the method.")
    parser.add_argument("--instances", type=positive_int, default=470,
                        help="instances in the series sent (default 470; at least 400 for meaningful numbers)")
    parser.add_argument("--repeat", type=positive_int, default=1, help="runs per receiver; the best counts (default 1)")
    parser.add_argument("--quiet-period-s", type=positive_float, default=1.0,
                        help="the node's quiet period for the latency measurement (default 1 s)")
    parser.add_argument("--skip-latency", action="store_true", help="measure throughput only")
    args = parser.parse_args(argv)
    if args.instances < 8:
        parser.error(f"--instances must be at least 8 (the phantom's smallest grid); found {args.instances}")

    storescu, storescp = dcmtk_tool("storescu"), dcmtk_tool("storescp")
    print(f"host: {platform.node()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"pynetdicom {pynetdicom.__version__}")
    print(f"peers: {first_line([storescu, '--version']) if storescu else 'dcmtk not found'}; "
          f"{first_line([ORTHANC, '--version']) if os.path.exists(ORTHANC) else 'Orthanc not found'}")
    scratch = Path(tempfile.mkdtemp(prefix="sct-receive-bench-"))
    try:
        series_dir = scratch / "series"
        files = write_series(series_dir, args.instances)
        size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"series: {len(files)} MR instances of {SLICE_SHAPE_YX[0]}x{SLICE_SHAPE_YX[1]} "
              f"({size_kb:.1f} KB each), sent with storescu +sd +r on one association; best of {args.repeat}")
        print()

        def storescp_factory(cls):
            def make(workdir: Path) -> Receiver:
                if storescp is None:
                    raise ReceiverUnavailable("dcmtk storescp not found (apt-get install dcmtk)")
                return cls(workdir, storescp)
            return make

        receivers = [
            (SctNodeReceiver, SctNodeReceiver.key, SctNodeReceiver.label),
            (SctNodeNoDelaySenderReceiver, SctNodeNoDelaySenderReceiver.key, SctNodeNoDelaySenderReceiver.label),
            (storescp_factory(StorescpReceiver), StorescpReceiver.key, StorescpReceiver.label),
            (storescp_factory(StorescpNoDelayReceiver), StorescpNoDelayReceiver.key, StorescpNoDelayReceiver.label),
            (OrthancReceiver, OrthancReceiver.key, OrthancReceiver.label),
        ]
        outcomes = []
        for factory, key, label in receivers:
            print(f"({key}) {label}", flush=True)
            outcome = measure(factory, key, label, storescu, series_dir, len(files), args.repeat, scratch)
            if outcome.problem and outcome.best_s is None:
                print(f"  ({key}) not measured: {outcome.problem}", flush=True)
            outcomes.append(outcome)
        print_table(outcomes)
        if not args.skip_latency:
            try:
                measure_latency(scratch, args.quiet_period_s)
            except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
                print(f"\nlatency: not measured: {type(error).__name__}: {error}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
