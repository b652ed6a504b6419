"""Latency from the last MR image to the last bundle object at the planning system, stage by stage (issue 17).

Run with the project installed (``pip install -e .``, as in the README), its virtual environment active and
dcmtk installed (``storescu``, ``storescp``)::

    python benchmarks/latency.py [--model bulk|diffusion|both] [--slices 100] [--size 256]
                                 [--quiet-period-s 2] [--complete-on association] [--no-qa] [--no-report]
                                 [--warm-up] [--keep DIR] [--via-orthanc [--stable-age-s 10]]

Method
------
The seeded pelvis phantom (seed ``--seed``, default 3000: the demo's, outside the bundled weights' training
and validation seeds) at ``--slices`` x ``--size`` x ``--size`` (default 100 x 256 x 256, the site's default
grid and field of view) is written once as an MR series (T1w, MR Image Storage, as ``sct-node phantom``
writes it). For each model a fresh node runs as its own process (``python -m sct_node serve --config
node.toml``, empty spool, one worker, the default poll interval of 1 s unless ``--poll-interval-s``), with
one route (the model, the route's QA and report on unless ``--no-qa`` / ``--no-report``, the pelvis
template plan) delivering the whole bundle (``bundle = "all"``) to a stand-in planning system: dcmtk's
``storescp -od DIR`` in its own process, dcmtk's default settings. The series is sent by dcmtk's
``storescu +sd +r`` on ONE association, with dcmtk's default settings.

What is measured
----------------
Time zero is the moment ``storescu`` received the C-STORE response of the last instance: the time stamp
of its last "Received Store Response" log line (a log4cplus pattern with the epoch time in microseconds,
``-lc``). Should that line be missing, time zero falls back to the ``storescu`` process exit, which comes
after the association's release (the release follows the last response), and the output says so. The end
is the modification time of the last file ``storescp`` wrote, once the node's job is at rest (done) and
the files in ``storescp``'s folder number what the node delivered (its log line "delivered N
instance(s)", else the files of the job's output folder the dispatcher sends).

The stages come from the node's state database (read with ``StateStore``, read methods only):

* completion wait = the job's ``created_at`` - time zero: the completion rule (quiet period, or the
  route's ``complete_on`` rule) plus the router's poll. The rule that fired is printed (the job's
  ``completed_by`` where the node records it);
* claim = processing start - ``created_at``, where processing start = processing end - the job's
  ``total_s`` and processing end = when the job was processed (the delivery's first ``next_attempt_at``,
  set in the same transaction; else the first time this script saw the job delivering);
* read, guard, model, write, QA, report = the job's ``JobTimings``; "other" = ``total_s`` minus those
  (the guard's small files; waiting for the reference data, read while the model works; the model's load
  when the node's preload at start had not finished);
* dispatch = the last file's modification time - processing end: the dispatcher's wake-up, reading the
  outputs' headers, the association and every C-STORE. The node sends the sCT images ahead while the report
  is rendered (its log: "sent N sCT image(s) ahead"); the delivery then sends only the rest, and this row
  counts both. A line below the stages says when the sCT itself was complete at ``storescp`` (the
  modification time of its last CT file), before the report bundle.

Each model runs once. By default the measured job is the fresh node's first, as after every node start
(the node preloads its models and the QA and report code when it starts, in the background). With
``--warm-up`` the node first processes another series (the next seed: other UIDs), unmeasured, so the
measured job sees a node that has been running; what the warm-up delivered is moved aside first.

The completion rule is one line of the route in ``node.toml``: ``complete_on``, written as a comment
unless ``--complete-on`` is given. The output names the rule that fired (the job's ``completed_by``).

Both dcmtk tools run with dcmtk's defaults, which leave Nagle's algorithm on (as
``benchmarks/receive_throughput.py`` explains): ``storescp`` then answers each C-STORE about 40 ms late
(a delayed acknowledgement), which the "dispatch" row shows for every delivered object. A planning
system with ``TCP_NODELAY`` set does not; ``TCP_NODELAY=1`` in this script's environment gives both dcmtk
tools that setting.

Targets (issue 17), printed beside the measured values as ratios: last acknowledgement -> last bundle
object <= 45 s on the 2-core benchmark CPU with the default model (``diffusion``), QA and report on;
<= 10 s on one GPU (printed only when torch sees CUDA). The target applies to the default model with QA
and report; other runs print their numbers without a verdict.

Through Orthanc (``--via-orthanc``)
----------------------------------
The project's Orthanc recipe end to end: MR console -> Orthanc -> (stable series, Lua) -> node -> planning
system. Orthanc (``Orthanc`` on the PATH, or ``/usr/sbin/Orthanc``) runs as the PACS with the shipped
``deploy/orthanc/orthanc.json`` and ``route-to-sct-node.lua``, substituted exactly as
``tests/sct_node/test_orthanc.py`` does it (its ``deployment_config``: folders, ports, the ``sct-node``
modality's host and port; the Lua script copied next to the configuration; ``TCP_NODELAY=1`` in Orthanc's
environment), and then two more values in the text: ``StableAge`` = ``--stable-age-s`` (default 10 s to
keep the run short; the shipped value, the production default, is 60 s) and the ``mr-console`` modality's
``Host`` = 127.0.0.1. The shipped file lets only listed modalities store (``DicomAlwaysAllowStore`` false,
``DicomCheckModalityHost`` true), so the "scanner", ``storescu +sd +r`` on one association, calls with the
``mr-console`` entry's AE title (``MR_CONSOLE``) from that host, to Orthanc's AE title and DICOM port, as a
console would. The node runs as its own process as above, with the recipe's route: ``complete_on =
["association"]`` (deploy/orthanc/README.md) and the default quiet period, 60 s (``--complete-on`` and
``--quiet-period-s`` still override them), Orthanc (``HOSPITAL_PACS`` from 127.0.0.1) its one allowed caller,
delivering to ``storescp`` only (the recipe also sends the results back to Orthanc; not here).

Time zero is the scanner's last acknowledgement (storescu's log, as above); the end as above. The rows:
Orthanc (last scanner ack -> the node recorded the last instance: the series' ``last_received_at``), split
at the creation of Orthanc's ``DicomModalityStore`` job (``GET /jobs?expand``, ``CreationTime``, UTC) into
StableAge + Orthanc's stability check + Lua, and the transfer to the node; the completion wait at the node
(-> the job's ``created_at``: the association's release + ``association_grace_s`` + the router's poll; the
rule that fired must be the association rule); claim, processing stages and dispatch as above. The target
of the chain (issue 17): total ~ StableAge + processing (the job's ``total_s``) + the grace (2 s); the
output shows ``total - StableAge - processing``, what the chain adds, and where it goes.

A stage that cannot be measured (dcmtk absent, a node that does not start, a job that fails) gets a line
saying so (Orthanc absent too, with ``--via-orthanc``). The script exits 0 unless its arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where benchmarks/models.py would shadow the
# models package: the repository root goes first instead (as in benchmarks/models.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _peers import PeerUnavailable, dcmtk_tool, end_process, free_port, log_tail, port_open, wait_until

from models.phantoms import generate_phantom
from models.registry import DEFAULT_MODEL
from sct_node.config import RouteConfig, load_config
from sct_node.node.dispatch import ordered_outputs
from sct_node.node.service import state_path
from sct_node.node.state import Job, JobState, JobTimings, StateStore
from sct_node.tools.phantom_writer import phantom_identity, write_image_series

# --via-orthanc: Orthanc set up as tests/sct_node/test_orthanc.py sets it up (the same substitutions in the
# shipped deploy/orthanc/orthanc.json, the same REST helper), so the benchmark runs the tested recipe.
from tests.sct_node.test_orthanc import (
    ORTHANC,
    OrthancServer,
    _set_value,
    deployment_config,
    strip_json_comments,
)

MODELS = ("bulk", "diffusion")
TARGET_CPU_S = 45.0
TARGET_GPU_S = 10.0
START_TIMEOUT_S = 120.0
SEND_TIMEOUT_S = 600.0
NODE_AE, TPS_AE = "SCT_NODE", "TPS_IMPORT"
#: The shipped orthanc.json's MR console entry (DicomModalities), the "scanner" of --via-orthanc.
CONSOLE_MODALITY = "mr-console"
#: Orthanc's StableAge in deploy/orthanc/orthanc.json (and Orthanc's default): the production value.
PRODUCTION_STABLE_AGE_S = 60
#: storescu's log: epoch seconds, then milliseconds.microseconds (log4cplus %Q), then the message.
LOG_CONFIG = ("log4cplus.rootLogger = INFO, console\n"
              "log4cplus.appender.console = log4cplus::ConsoleAppender\n"
              "log4cplus.appender.console.layout = log4cplus::PatternLayout\n"
              "log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %m%n\n")
_LOG_LINE = re.compile(r"^(\d+)\.(\d+)\.(\d+) (.*)$")
_DELIVERED = re.compile(r"job (\d+): delivered (\d+) instance\(s\) to tps")
_SENT_AHEAD = re.compile(r"job (\d+): sent (\d+) sCT image\(s\) ahead to tps")


Unavailable = PeerUnavailable  # what _peers.wait_until raises, under this script's name


@dataclass(frozen=True)
class Receiver:
    """Where storescu sends the series: the node itself, or Orthanc (--via-orthanc) as the MR console."""

    port: int
    called_ae: str = NODE_AE
    calling_ae: str | None = None  # None: storescu's default (STORESCU)


@dataclass
class Outcome:
    """One model's run: the numbers, or why there are none."""

    model: str
    qa: bool
    report: bool
    problem: str | None = None
    ack_at: float = 0.0
    ack_source: str = ""
    sent: int = 0
    send_s: float = 0.0
    last_recorded_at: float = 0.0
    job: Job | None = None
    processed_at: float = 0.0
    processed_source: str = ""
    last_file_at: float = 0.0
    #: When storescp wrote the last sCT image (CT) file: the sCT is complete at the planning system.
    last_image_at: float = 0.0
    received: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    #: sCT images the node sent ahead while the report was rendered (part of ``delivered``).
    sent_ahead: int = 0
    completion_rule: str = ""
    warm: bool = False
    #: --via-orthanc: Orthanc's StableAge (0: the series went straight to the node), when Orthanc created its
    #: store job for the series (0: unknown), who sent the series to the node, and the route's grace.
    stable_age_s: int = 0
    orthanc_job_at: float = 0.0
    orthanc_job_note: str = ""
    node_sender: str = ""
    node_associations: str = ""
    grace_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.last_file_at - self.ack_at


# --- helpers ------------------------------------------------------------------------------------------














def machine() -> str:
    import torch

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    return (f"{platform.node()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), torch device {device}")


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --- the run ------------------------------------------------------------------------------------------


def write_series(folder: Path, slices: int, size: int, seed: int) -> list[Path]:
    """The pelvis phantom at slices x size x size, as an MR T1w series (the site's field of view)."""
    phantom = generate_phantom("pelvis", seed, shape_zyx=(slices, size, size))
    identity = phantom_identity("pelvis", seed, f"pelvis-latency-{seed:04d}")
    write_image_series(phantom.mr_t1, folder, identity, "MR")
    return sorted(folder.glob("*.dcm"))


def node_config(workdir: Path, port: int, tps_port: int, args: argparse.Namespace, model: str,
                allowed_callers: tuple[tuple[str, str], ...] = ()) -> Path:
    """node.toml for one run. The completion rule is the route's ``complete_on`` line (one line to change).
    ``allowed_callers``: (AE title, host) pairs; none: any caller (the node's default)."""
    if args.complete_on:
        complete_on = "complete_on = " + json.dumps(list(args.complete_on))
    else:
        complete_on = '# complete_on = ["association"]   # uncomment (or --complete-on): no quiet period to wait'
    text = (
        "[network]\n"
        f'ae_title = "{NODE_AE}"\nbind_address = "127.0.0.1"\nport = {port}\n'
        + "".join(f'[[network.allowed_callers]]\nae_title = "{ae}"\nhost = "{host}"\n' for ae, host in allowed_callers)
        + "[storage]\n"
        f'spool_dir = "{workdir / "spool"}"\nmin_free_space_mb = 100.0\n'
        "[processing]\n"
        f"quiet_period_s = {args.quiet_period_s}\n"
        f"poll_interval_s = {args.poll_interval_s}\n"
        "workers = 1\n"
        "[dispatch]\n"
        "max_attempts = 3\ninitial_delay_s = 1.0\n"
        "[logging]\n"
        'level = "INFO"\n'
        "[[routes]]\n"
        'name = "latency"\n'
        f'model = "{model}"\n'
        'destinations = ["tps"]\n'
        f"{complete_on}\n"
        f"qa = {'true' if args.qa else 'false'}\n"
        'qa_site = "pelvis"\n'
        f"qa_report = {'true' if args.report else 'false'}\n"
        'on_input_outside_envelope = "mark"   # measure the whole path even if the guard objects\n'
        "[routes.match]\n"
        'modality = ["MR"]\n'
        "[[destinations]]\n"
        'name = "tps"\n'
        f'ae_title = "{TPS_AE}"\nhost = "127.0.0.1"\nport = {tps_port}\nbundle = "all"\n')
    path = workdir / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def send(storescu: str, receiver: Receiver, series_dir: Path, workdir: Path,
         name: str = "storescu") -> tuple[float, str, float, int]:
    """Send the series on one association. Returns (time zero, its source, storescu's wall time, instances acked)."""
    log_config = workdir / "storescu-log.cfg"
    log_config.write_text(LOG_CONFIG, encoding="utf-8")
    calling = ["-aet", receiver.calling_ae] if receiver.calling_ae else []
    command = [storescu, "-lc", str(log_config), *calling, "-aec", receiver.called_ae, "+sd", "+r", "127.0.0.1",
               str(receiver.port), str(series_dir)]
    started = time.time()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SEND_TIMEOUT_S)
    exited = time.time()
    (workdir / f"{name}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise Unavailable(f"storescu exited {result.returncode}: {(result.stdout + result.stderr).strip()[-300:]}")
    acks = []
    for line in (result.stdout + result.stderr).splitlines():
        match = _LOG_LINE.match(line)
        if match and match.group(4).startswith("Received Store Response"):
            seconds, millis, micros = (int(g) for g in match.group(1, 2, 3))
            acks.append(seconds + millis / 1e3 + micros / 1e6)
    if acks and started - 1.0 <= acks[-1] <= exited + 1.0:
        return acks[-1], "storescu's log: its last \"Received Store Response\"", exited - started, len(acks)
    return exited, "storescu's exit (after the association's release: its log had no time stamps)", \
        exited - started, len(acks)


def wait_for_job(state: StateStore, timeout_s: float, node: subprocess.Popen,
                 after_id: int = 0) -> tuple[Job | None, float]:
    """Poll until the newest job (newer than job ``after_id``) is at rest; returns it and when it was first seen
    delivering (0: never seen)."""
    deadline = time.monotonic() + timeout_s
    seen_delivering = 0.0
    while time.monotonic() < deadline:
        jobs = state.jobs(limit=1)
        job = jobs[0] if jobs and jobs[0].id > after_id else None
        if job is not None:
            if job.state == JobState.DELIVERING and not seen_delivering:
                seen_delivering = time.time()
            if job.state.at_rest:
                return job, seen_delivering
        if node.poll() is not None:
            raise Unavailable(f"the node exited with status {node.returncode}")
        time.sleep(0.2)
    jobs = state.jobs(limit=1)
    return (jobs[0] if jobs and jobs[0].id > after_id else None), seen_delivering


def settled_files(folder: Path, expected: int, timeout_s: float = 60.0) -> list[Path]:
    """storescp's files once there are ``expected`` of them and the count stays the same for 1 s."""
    deadline = time.monotonic() + timeout_s
    previous, stable_since = -1, time.monotonic()
    while True:
        files = [p for p in folder.iterdir() if p.is_file()]
        if len(files) != previous:
            previous, stable_since = len(files), time.monotonic()
        if len(files) >= expected and time.monotonic() - stable_since >= 1.0:
            return files
        if time.monotonic() > deadline:
            return files
        time.sleep(0.1)


def orthanc_config(workdir: Path, http_port: int, dicom_port: int, node_port: int,
                   stable_age_s: int) -> tuple[Path, dict, str]:
    """deploy/orthanc/orthanc.json substituted as tests/sct_node/test_orthanc.py does it (its deployment_config:
    folders, ports, the sct-node modality's host and port, the Lua script copied next to it), then two more values
    in the same way: StableAge, and the MR console modality's Host (loopback, where storescu calls from). Returns
    the file, the configuration as Orthanc reads it and the console's AE title."""
    path, _ = deployment_config(workdir, http_port, dicom_port, node_port)  # the test's StableAge (1 s): replaced
    text = path.read_text(encoding="utf-8")
    text = _set_value(text, "StableAge", stable_age_s)
    console = text.find(f'"{CONSOLE_MODALITY}" :')
    if console < 0:
        raise Unavailable(f"deploy/orthanc/orthanc.json has no {CONSOLE_MODALITY!r} modality to send as")
    text = _set_value(text, "Host", "127.0.0.1", console)
    path.write_text(text, encoding="utf-8")
    config = json.loads(strip_json_comments(text))
    entry = config["DicomModalities"][CONSOLE_MODALITY]
    if config["StableAge"] != stable_age_s or entry.get("Host") != "127.0.0.1" or entry.get("AllowStore") is not True:
        raise Unavailable(f"the substituted orthanc.json does not let {CONSOLE_MODALITY} store from 127.0.0.1 with "
                          f"StableAge {stable_age_s}: {entry}, StableAge {config['StableAge']}")
    return path, config, str(entry["AET"])


def start_orthanc(workdir: Path, node_port: int, stable_age_s: int) -> tuple[OrthancServer, str]:
    """Orthanc as the PACS, started as tests/sct_node/test_orthanc.py starts it; returns it and the console's AE."""
    if ORTHANC is None:
        raise Unavailable("Orthanc is not installed (apt-get install orthanc)")
    workdir.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config_path, config, console_ae = orthanc_config(workdir, http_port, dicom_port, node_port, stable_age_s)
    log_path = workdir / "orthanc.log"
    with open(log_path, "wb") as log:
        # TCP_NODELAY=1 as deploy/orthanc/orthanc.json asks of the service's environment.
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                   env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = OrthancServer(process, http_port, dicom_port, str(config["DicomAet"]), log_path)

    def ready() -> bool:
        try:
            answer = orthanc.get("/system")
            return isinstance(answer, dict) and "Version" in answer
        except (urllib.error.URLError, OSError, ValueError):
            return False

    try:
        wait_until(ready, START_TIMEOUT_S, process, "Orthanc")
        wait_until(lambda: port_open(dicom_port), START_TIMEOUT_S, process, "Orthanc's DICOM port")
    except Unavailable:
        orthanc.stop()
        raise
    return orthanc, console_ae


def orthanc_store_job(orthanc: OrthancServer, after: float, before: float) -> tuple[float, str]:
    """When Orthanc created its newest DicomModalityStore job (the Lua script's, for the stable series), as epoch
    seconds, checked to lie between ``after`` and ``before``; 0 and why when it cannot be read."""
    try:
        answer = orthanc.get("/jobs?expand")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return 0.0, f"Orthanc's job list not read: {error}"
    jobs = [j for j in answer if isinstance(j, dict) and j.get("Type") == "DicomModalityStore"] \
        if isinstance(answer, list) else []
    created = []
    for job in jobs:
        text = str(job.get("CreationTime", ""))
        for pattern in ("%Y%m%dT%H%M%S.%f", "%Y%m%dT%H%M%S"):  # boost's ISO string, in UTC
            try:
                created.append(datetime.strptime(text, pattern).replace(tzinfo=UTC).timestamp())
                break
            except ValueError:
                continue
    if not created:
        return 0.0, f"no readable DicomModalityStore job in Orthanc's job list ({len(jobs)} store jobs)"
    newest = max(created)
    if not after - 1.0 <= newest <= before + 1.0:
        return 0.0, (f"Orthanc's store job created {newest - after:+.2f} s from time zero, outside the run: not "
                     f"used")
    return newest, f"Orthanc's DicomModalityStore job ({len(jobs)} in its list), CreationTime"


def warm_up(warm_up_series: list[Path], storescu: str, receiver: Receiver, workdir: Path, received: Path,
            state: StateStore, node: subprocess.Popen, timeout_s: float) -> int:
    """Send the warm-up series and wait for its job; move what storescp stored aside. Returns the job's ID."""
    send(storescu, receiver, warm_up_series[0].parent, workdir, "storescu-warm-up")
    job, _ = wait_for_job(state, timeout_s, node)
    if job is None or not job.state.at_rest:
        raise Unavailable(f"the warm-up job did not finish ({job.state if job else 'no job'})")
    time.sleep(1.0)  # storescp has answered every C-STORE once the job is done; let it close the association
    aside = workdir / "planning-system-warm-up"
    aside.mkdir()
    for path in received.iterdir():
        path.rename(aside / path.name)
    return job.id


def run_model(model: str, args: argparse.Namespace, series: list[Path], storescu: str, storescp: str,
              workdir: Path, warm_up_series: list[Path] | None = None) -> Outcome:
    outcome = Outcome(model, args.qa, args.qa and args.report, warm=bool(warm_up_series))
    workdir.mkdir(parents=True)
    received = workdir / "planning-system"
    received.mkdir()
    node_port, tps_port = free_port(), free_port()
    tps = node = orthanc = None
    state = None
    try:
        receiver, allowed = Receiver(node_port), ()
        if args.via_orthanc:
            orthanc, console_ae = start_orthanc(workdir / "orthanc", node_port, args.stable_age_s)
            receiver = Receiver(orthanc.dicom_port, orthanc.ae_title, console_ae)
            allowed = ((orthanc.ae_title, "127.0.0.1"),)  # the node's allow-list, as deploy/node.toml has it
            outcome.stable_age_s = args.stable_age_s
        config_path = node_config(workdir, node_port, tps_port, args, model, allowed)
        config = load_config(config_path)
        with open(workdir / "storescp.log", "wb") as log:
            tps = subprocess.Popen([storescp, "-aet", TPS_AE, "-od", str(received), str(tps_port)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=workdir)
        wait_until(lambda: port_open(tps_port), START_TIMEOUT_S, tps, "storescp")
        with open(workdir / "node.log", "wb") as log:
            node = subprocess.Popen([sys.executable, "-m", "sct_node", "serve", "--config", str(config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_until(lambda: port_open(node_port), START_TIMEOUT_S, node, "sct-node serve")
        state = StateStore(state_path(config))
        after_id = 0
        if warm_up_series:
            started = time.perf_counter()
            after_id = warm_up(warm_up_series, storescu, receiver, workdir, received, state, node, args.timeout_s)
            print(f"  [{model}] warm-up series processed and delivered in {time.perf_counter() - started:.1f} s "
                  f"(not measured)", flush=True)
        outcome.ack_at, outcome.ack_source, outcome.send_s, acked = send(storescu, receiver, series[0].parent,
                                                                          workdir)
        outcome.sent = acked or len(series)
        via = (f" to Orthanc as {receiver.calling_ae}; Orthanc's StableAge is {args.stable_age_s} s" if orthanc
               else "")
        print(f"  [{model}] sent {len(series)} instances in {outcome.send_s:.1f} s (storescu wall time){via}; "
              f"waiting for the job", flush=True)
        job, seen_delivering = wait_for_job(state, args.timeout_s, node, after_id)
        if job is None or job.state != JobState.DONE:
            raise Unavailable(f"the job did not finish: {job.state if job else 'no job'}"
                              f"{': ' + job.reason if job and job.reason else ''}; node log: "
                              f"{log_tail(workdir / 'node.log')}")
        outcome.job = job
        series_records = [s for s in state.series() if s.series_uid == job.series_uid]
        outcome.last_recorded_at = max(s.last_received_at for s in series_records)
        record = max(series_records, key=lambda s: s.last_received_at)
        outcome.node_sender = record.calling_ae or "?"
        outcome.node_associations = (f"{record.instances} instances, "
                                     f"{'one association' if record.single_association else 'several associations'}"
                                     f"{', released' if record.released_at else ', not released normally'}")
        outcome.grace_s = next((r.association_grace_s for r in config.routes if r.name == job.route), 0.0)
        if orthanc is not None:
            outcome.orthanc_job_at, outcome.orthanc_job_note = orthanc_store_job(orthanc, outcome.ack_at,
                                                                                 outcome.last_recorded_at)
        outcome.completion_rule = getattr(job, "completed_by", None) or (
            f"quiet period ({args.quiet_period_s:g} s; this node version records no rule)")
        deliveries = state.deliveries(job.id)
        if deliveries and all(d.attempts == 1 for d in deliveries):
            outcome.processed_at = min(d.next_attempt_at for d in deliveries)
            outcome.processed_source = "the delivery record"
        else:
            outcome.processed_at = seen_delivering
            outcome.processed_source = "first seen delivering (polls every 0.2 s; a delivery was retried)"
        log_text = (workdir / "node.log").read_text(errors="replace")
        logged = [int(m.group(2)) for m in _DELIVERED.finditer(log_text) if int(m.group(1)) == job.id]
        ahead = [int(m.group(2)) for m in _SENT_AHEAD.finditer(log_text) if int(m.group(1)) == job.id]
        outcome.sent_ahead = ahead[-1] if ahead and any(d.images_sent for d in deliveries) else 0
        outcome.delivered = (logged[-1] + outcome.sent_ahead if logged else
                             len(ordered_outputs(job.output_dir)) if job.output_dir else 0)
        files = settled_files(received, outcome.delivered)
        if len(files) != outcome.delivered:
            raise Unavailable(f"storescp holds {len(files)} files; the node delivered {outcome.delivered}")
        outcome.last_file_at = max(p.stat().st_mtime for p in files)
        images = [p.stat().st_mtime for p in files if p.name.split(".", 1)[0] == "CT"]
        outcome.last_image_at = max(images) if images else 0.0
        for path in files:
            kind = path.name.split(".", 1)[0]
            outcome.received[kind] = outcome.received.get(kind, 0) + 1
    except (Unavailable, subprocess.TimeoutExpired, OSError) as error:
        outcome.problem = str(error)
    except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
        outcome.problem = f"{type(error).__name__}: {error}"
    finally:
        if state is not None:
            state.close()
        end_process(node)
        end_process(tps)
        if orthanc is not None:
            orthanc.stop()
    return outcome


# --- printing -----------------------------------------------------------------------------------------


def print_outcome(outcome: Outcome, args: argparse.Namespace, gpu: bool) -> None:
    flags = f"QA {'on' if outcome.qa else 'off'}, report {'on' if outcome.report else 'off'}"
    node_state = ("warm node: its second job, after an unmeasured warm-up series" if outcome.warm
                  else "fresh node: its first job (imports, model load)")
    print(f"\nmodel {outcome.model} ({flags}; {node_state})")
    if outcome.problem is not None or outcome.job is None:
        print(f"  not measured: {outcome.problem}")
        return
    job = outcome.job
    t = job.timings or JobTimings()
    total_processing = t.total_s or 0.0
    processing_start = outcome.processed_at - total_processing
    stages = [("read", t.read_s), ("guard", t.guard_s), ("model", t.model_s), ("write", t.write_s),
              ("QA", t.qa_s), ("report", t.report_s)]
    other = total_processing - sum(v for _, v in stages if v is not None)
    via_orthanc = bool(outcome.stable_age_s)
    rows: list[tuple[str, float | None, str]]
    if via_orthanc:
        rows = [("total: last scanner ack -> last object at storescp", outcome.total_s, ""),
                ("  Orthanc: StableAge + Lua + transfer to the node", outcome.last_recorded_at - outcome.ack_at,
                 f"-> the node recorded the last instance ({outcome.node_associations}, from {outcome.node_sender})")]
        if outcome.orthanc_job_at:
            rows += [("    StableAge + check + Lua (-> store job created)", outcome.orthanc_job_at - outcome.ack_at,
                      f"StableAge {outcome.stable_age_s} s"),
                     ("    transfer to the node (-> last instance)", outcome.last_recorded_at - outcome.orthanc_job_at,
                      "Orthanc's job starts, associates, sends the series")]
        rows += [("  completion wait at the node (-> job created)", job.created_at - outcome.last_recorded_at,
                  outcome.completion_rule)]
    else:
        rows = [("total: last ack -> last object at storescp", outcome.total_s, ""),
                ("  completion wait (ack -> job created)", job.created_at - outcome.ack_at, outcome.completion_rule)]
    rows += [("  claim (job created -> processing starts)", processing_start - job.created_at, "")]
    rows += [(f"  {name}", value, "did not run" if value is None else "") for name, value in stages]
    rows += [("  other inside processing", other, "guard.json, waiting for the references" + (
                 "" if outcome.warm else ", model load if the node's preload had not finished")),
             ("  dispatch (processed -> last object stored)", outcome.last_file_at - outcome.processed_at,
              f"{outcome.delivered} objects" + (f", of which {outcome.sent_ahead} sCT images were sent ahead while "
                                                "the report was rendered" if outcome.sent_ahead else ""))]
    width = max(46, *(len(name) for name, _, _ in rows))
    for name, value, note in rows:
        shown = "       -" if value is None else f"{value:8.2f}"
        print(f"  {name:{width}} {shown} s  {note}")
    print(f"  {'  (processing, job total_s)':{width}} {total_processing:8.2f} s")
    print(f"  {'  (total after the completion wait)':{width}} "
          f"{outcome.total_s - (job.created_at - outcome.ack_at):8.2f} s")
    if outcome.last_image_at:
        print(f"  {'the sCT complete at storescp (its last image)':{width}} "
              f"{outcome.last_image_at - outcome.ack_at:8.2f} s  after the last ack; the rest of the bundle "
              f"{outcome.last_file_at - outcome.last_image_at:.2f} s later")
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(outcome.received.items()))
    print(f"  MR in: {outcome.sent} instances acknowledged; at storescp: {kinds}; QA {t.qa_verdict or '-'}, report {t.report or '-'}, guard {t.guard_verdict or '-'}")
    if via_orthanc:
        print(f"  time zero: {outcome.ack_source} (the scanner, storescu to Orthanc). Orthanc's split: "
              f"{outcome.orthanc_job_note}. Processing end from {outcome.processed_source}.")
        print_orthanc_target(outcome, total_processing, processing_start, gpu)
        return
    print(f"  time zero: {outcome.ack_source}; the node recorded the last instance "
          f"{(outcome.ack_at - outcome.last_recorded_at) * 1000:.0f} ms before it. Processing end from "
          f"{outcome.processed_source}.")
    default_full = outcome.model == DEFAULT_MODEL and outcome.qa and outcome.report
    if not default_full:
        print(f"  target (<= {TARGET_CPU_S:g} s on this CPU) applies to the default model ({DEFAULT_MODEL}) with QA "
              f"and report: no verdict for this run")
        return
    target, where = (TARGET_GPU_S, "on one GPU") if gpu else (TARGET_CPU_S, "on this CPU")
    ratio = outcome.total_s / target
    print(f"  target: <= {target:g} s {where} with the default model, QA and report: measured {outcome.total_s:.1f} s "
          f"= {ratio:.2f}x the target ({'met' if ratio <= 1 else 'NOT met'})")


def print_orthanc_target(outcome: Outcome, processing: float, processing_start: float, gpu: bool) -> None:
    """--via-orthanc: the chain's target, StableAge + processing (+ the grace), and what the chain adds to it."""
    job = outcome.job
    assert job is not None
    stable = outcome.stable_age_s
    rule = job.completed_by or ""
    verdict = ("the association rule, as the recipe intends" if rule.startswith("association")
               else "NOT the association rule: the recipe expects it")
    print(f"  completed_by: {rule or '-'} ({verdict})")
    expected = stable + processing + outcome.grace_s
    added = outcome.total_s - stable - processing
    orthanc_extra = outcome.last_recorded_at - outcome.ack_at - stable
    if outcome.orthanc_job_at:
        parts = [f"Orthanc beyond StableAge {outcome.orthanc_job_at - outcome.ack_at - stable:.2f} (its stability "
                 f"check, Lua, job queued)",
                 f"transfer to the node {outcome.last_recorded_at - outcome.orthanc_job_at:.2f}"]
    else:
        parts = [f"Orthanc beyond StableAge + transfer {orthanc_extra:.2f}"]
    parts += [f"completion wait {job.created_at - outcome.last_recorded_at:.2f} (grace {outcome.grace_s:g} s + "
              f"release + poll)", f"claim {processing_start - job.created_at:.2f}",
              f"dispatch {outcome.last_file_at - outcome.processed_at:.2f}"]
    print(f"  target (issue 17, the Orthanc chain): total ~ StableAge + processing (+ grace) = {stable} + "
          f"{processing:.2f} (+ {outcome.grace_s:g}) = {stable + processing:.2f} ({expected:.2f}) s; measured "
          f"{outcome.total_s:.2f} s")
    print(f"  what the chain adds: total - StableAge - processing = {added:.2f} s = " + " + ".join(parts))
    print(f"  StableAge here {stable} s (--stable-age-s, to keep the run short); the production default "
          f"(deploy/orthanc/orthanc.json, Orthanc's own default) is {PRODUCTION_STABLE_AGE_S} s: the same run "
          f"there would take about {outcome.total_s + PRODUCTION_STABLE_AGE_S - stable:.1f} s")
    node_leg = outcome.last_file_at - outcome.last_recorded_at
    print(f"  the node's leg (its last instance -> last object at storescp): {node_leg:.2f} s", end="")
    if outcome.model == DEFAULT_MODEL and outcome.qa and outcome.report:
        target, where = (TARGET_GPU_S, "on one GPU") if gpu else (TARGET_CPU_S, "on this CPU")
        print(f"; the node's target {where}, <= {target:g} s: {'met' if node_leg <= target else 'NOT met'}")
    else:
        print(" (the node's target applies to the default model with QA and report)")


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
        description="Latency of the node from the last MR instance's acknowledgement to the last bundle object at "
                    "a dcmtk storescp, per stage (issue 17). See the module docstring for the method.")
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both", help="model(s) to run (default both)")
    parser.add_argument("--slices", type=positive_int, default=100, help="slices of the MR series (default 100)")
    parser.add_argument("--size", type=positive_int, default=256, help="rows = columns of each slice (default 256)")
    parser.add_argument("--seed", type=int, default=3000, help="phantom seed (default 3000, the demo's)")
    parser.add_argument("--quiet-period-s", type=positive_float, default=None,
                        help="the node's quiet period (default 2 s, with --via-orthanc 60 s, the node's own default)")
    parser.add_argument("--complete-on", action="append", choices=("association", "expected_count"), default=[],
                        help="the route's complete_on rule(s), besides the quiet period (repeat for both; "
                             "default none: the quiet period completes the series; with --via-orthanc "
                             "association, the recipe's)")
    parser.add_argument("--poll-interval-s", type=positive_float, default=1.0,
                        help="the node's poll interval (default 1 s, the node's default)")
    parser.add_argument("--no-qa", dest="qa", action="store_false", help="route without the dosimetric QA")
    parser.add_argument("--no-report", dest="report", action="store_false", help="route without the report bundle")
    parser.add_argument("--timeout-s", type=positive_float, default=1800.0,
                        help="longest wait for the job after sending (default 1800 s)")
    parser.add_argument("--warm-up", action="store_true",
                        help="first send another series (the next seed) and let the node process it, unmeasured: "
                             "the measured job then runs on a warm node (model loaded, modules imported), as on a "
                             "node that has been running")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (new or empty) and keep it: series, spool, storescp's folder, logs")
    parser.add_argument("--via-orthanc", action="store_true",
                        help="the Orthanc recipe end to end: storescu sends to Orthanc (deploy/orthanc/, as "
                             "tests/sct_node/test_orthanc.py configures it) as the MR console, Orthanc routes the "
                             "stable series to the node")
    parser.add_argument("--stable-age-s", type=positive_int, default=10,
                        help=f"with --via-orthanc: Orthanc's StableAge (default 10 s, to keep the run short; the "
                             f"production default is {PRODUCTION_STABLE_AGE_S} s)")
    args = parser.parse_args(argv)
    if args.quiet_period_s is None:
        args.quiet_period_s = 60.0 if args.via_orthanc else 2.0
    if args.via_orthanc and not args.complete_on:
        args.complete_on = ["association"]  # deploy/orthanc/README.md: the route Orthanc's series take
    if min(args.slices, args.size) < 8:
        parser.error("--slices and --size must be at least 8 (the phantom's smallest grid)")
    if args.complete_on and "complete_on" not in RouteConfig.model_fields:
        parser.error("--complete-on: this version of sct_node.config has no route option complete_on")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder must be new or empty")

    storescu, storescp = dcmtk_tool("storescu"), dcmtk_tool("storescp")
    gpu = gpu_available()
    print(f"machine: {machine()}")
    rule = (f"complete_on = {args.complete_on}, else the quiet period of {args.quiet_period_s:g} s" if args.complete_on
            else f"the quiet period, {args.quiet_period_s:g} s (route without complete_on)")
    print(f"completion rule configured: {rule}; poll interval {args.poll_interval_s:g} s")
    if args.via_orthanc:
        print(f"via Orthanc ({ORTHANC or 'not installed'}): deploy/orthanc/orthanc.json + route-to-sct-node.lua, "
              f"StableAge {args.stable_age_s} s (--stable-age-s; the production default is "
              f"{PRODUCTION_STABLE_AGE_S} s), TCP_NODELAY=1 in Orthanc's environment")
    if storescu is None or storescp is None:
        print("not measured: dcmtk storescu/storescp not found (apt-get install dcmtk)")
        return 0
    if args.via_orthanc and ORTHANC is None:
        print("not measured: Orthanc not found (apt-get install orthanc)")
        return 0
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        scratch = args.keep.resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="sct-latency-bench-"))
    try:
        started = time.perf_counter()
        series = write_series(scratch / "series", args.slices, args.size, args.seed)
        path = ("Orthanc, which routes it to the node (python -m sct_node serve)" if args.via_orthanc
                else "the node (python -m sct_node serve)")
        size_kb = sum(f.stat().st_size for f in series) / len(series) / 1024
        print(f"series: pelvis phantom seed {args.seed}, {len(series)} MR instances of {args.size}x{args.size} "
              f"({size_kb:.0f} KB each; written in {time.perf_counter() - started:.1f} s), sent by dcmtk storescu on "
              f"one association to {path}, delivered to dcmtk storescp")
        warm_up_series = None
        if args.warm_up:
            warm_up_series = write_series(scratch / "warm-up-series", args.slices, args.size, args.seed + 1)
        outcomes = []
        for model in (MODELS if args.model == "both" else (args.model,)):
            print(f"\nrunning model {model} ...", flush=True)
            outcomes.append(run_model(model, args, series, storescu, storescp, scratch / f"run-{model}",
                                      warm_up_series))
        print("\n" + "=" * 100)
        print("Latency from the last acknowledged MR instance to the last bundle object stored by the planning "
              f"system (s){', through Orthanc' if args.via_orthanc else ''}")
        for outcome in outcomes:
            print_outcome(outcome, args, gpu)
        print(f"\nissue 17 targets: <= {TARGET_CPU_S:g} s on the 2-core benchmark CPU, <= {TARGET_GPU_S:g} s on one "
              "GPU, with the default model, QA and report.")
        if args.keep is not None:
            print(f"kept: {scratch}")
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
