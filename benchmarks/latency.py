"""Latency from the last MR image to the last bundle object at the planning system, stage by stage (issue 17).

Run with the project installed (``pip install -e .``, as in the README), its virtual environment active and
dcmtk installed (``storescu``, ``storescp``)::

    python benchmarks/latency.py [--model bulk|diffusion|both] [--slices 100] [--size 256]
                                 [--quiet-period-s 2] [--complete-on association] [--no-qa] [--no-report]
                                 [--warm-up] [--keep DIR]

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
  (loading the model for the node's first job, the guard's and QA's small files, reference look-up);
* dispatch = the last file's modification time - processing end: the dispatcher's wake-up, reading the
  outputs' headers, the association and every C-STORE.

Each model runs once. By default the measured job is the fresh node's first: it loads the model (in
"other") and imports the QA and report code (in "QA" and "report"), as after every node start. With
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

A stage that cannot be measured (dcmtk absent, a node that does not start, a job that fails) gets a line
saying so. The script exits 0 unless its arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where benchmarks/models.py would shadow the
# models package: the repository root goes first instead (as in benchmarks/models.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.phantoms import generate_phantom
from models.registry import DEFAULT_MODEL
from sct_node.config import RouteConfig, load_config
from sct_node.node.dispatch import ordered_outputs
from sct_node.node.service import state_path
from sct_node.node.state import Job, JobState, JobTimings, StateStore
from sct_node.tools.phantom_writer import phantom_identity, write_image_series

MODELS = ("bulk", "diffusion")
TARGET_CPU_S = 45.0
TARGET_GPU_S = 10.0
START_TIMEOUT_S = 120.0
SEND_TIMEOUT_S = 600.0
NODE_AE, TPS_AE = "SCT_NODE", "TPS_IMPORT"
#: storescu's log: epoch seconds, then milliseconds.microseconds (log4cplus %Q), then the message.
LOG_CONFIG = ("log4cplus.rootLogger = INFO, console\n"
              "log4cplus.appender.console = log4cplus::ConsoleAppender\n"
              "log4cplus.appender.console.layout = log4cplus::PatternLayout\n"
              "log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %m%n\n")
_LOG_LINE = re.compile(r"^(\d+)\.(\d+)\.(\d+) (.*)$")
_DELIVERED = re.compile(r"job (\d+): delivered (\d+) instance\(s\) to tps")


class Unavailable(Exception):
    """A part of the run could not be started or finished; the message says why."""


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
    received: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    completion_rule: str = ""
    warm: bool = False

    @property
    def total_s(self) -> float:
        return self.last_file_at - self.ack_at


# --- helpers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    with closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def dcmtk_tool(name: str) -> str | None:
    """dcmtk's ``storescu``/``storescp``, skipping pynetdicom's same-named scripts in the virtual environment."""
    candidates = [str(Path(d) / name) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    candidates.append(f"/usr/bin/{name}")
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            version = subprocess.run([candidate, "--version"], check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return candidate
    return None


def wait_until(predicate: Callable[[], bool], timeout_s: float, process: subprocess.Popen | None, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and process.poll() is not None:
            raise Unavailable(f"{what} exited with status {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} did not answer within {timeout_s:.0f} s")
        time.sleep(0.05)


def end_process(process: subprocess.Popen | None, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit; only the process this script started."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


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


def node_config(workdir: Path, port: int, tps_port: int, args: argparse.Namespace, model: str) -> Path:
    """node.toml for one run. The completion rule is the route's ``complete_on`` line (one line to change)."""
    if args.complete_on:
        complete_on = "complete_on = " + json.dumps(list(args.complete_on))
    else:
        complete_on = '# complete_on = ["association"]   # uncomment (or --complete-on): no quiet period to wait'
    text = (
        "[network]\n"
        f'ae_title = "{NODE_AE}"\nbind_address = "127.0.0.1"\nport = {port}\n'
        "[storage]\n"
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


def send(storescu: str, port: int, series_dir: Path, workdir: Path, name: str = "storescu") -> tuple[float, str, float, int]:
    """Send the series on one association. Returns (time zero, its source, storescu's wall time, instances acked)."""
    log_config = workdir / "storescu-log.cfg"
    log_config.write_text(LOG_CONFIG, encoding="utf-8")
    command = [storescu, "-lc", str(log_config), "-aec", NODE_AE, "+sd", "+r", "127.0.0.1", str(port), str(series_dir)]
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


def warm_up(warm_up_series: list[Path], storescu: str, node_port: int, workdir: Path, received: Path,
            state: StateStore, node: subprocess.Popen, timeout_s: float) -> int:
    """Send the warm-up series and wait for its job; move what storescp stored aside. Returns the job's ID."""
    send(storescu, node_port, warm_up_series[0].parent, workdir, "storescu-warm-up")
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
    config_path = node_config(workdir, node_port, tps_port, args, model)
    tps = node = None
    state = None
    try:
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
            after_id = warm_up(warm_up_series, storescu, node_port, workdir, received, state, node, args.timeout_s)
            print(f"  [{model}] warm-up series processed and delivered in {time.perf_counter() - started:.1f} s "
                  f"(not measured)", flush=True)
        outcome.ack_at, outcome.ack_source, outcome.send_s, acked = send(storescu, node_port, series[0].parent,
                                                                          workdir)
        outcome.sent = acked or len(series)
        print(f"  [{model}] sent {len(series)} instances in {outcome.send_s:.1f} s (storescu wall time); waiting "
              f"for the job", flush=True)
        job, seen_delivering = wait_for_job(state, args.timeout_s, node, after_id)
        if job is None or job.state != JobState.DONE:
            raise Unavailable(f"the job did not finish: {job.state if job else 'no job'}"
                              f"{': ' + job.reason if job and job.reason else ''}; node log: "
                              f"{log_tail(workdir / 'node.log')}")
        outcome.job = job
        series_records = [s for s in state.series() if s.series_uid == job.series_uid]
        outcome.last_recorded_at = max(s.last_received_at for s in series_records)
        outcome.completion_rule = getattr(job, "completed_by", None) or (
            f"quiet period ({args.quiet_period_s:g} s; this node version records no rule)")
        deliveries = state.deliveries(job.id)
        if deliveries and all(d.attempts == 1 for d in deliveries):
            outcome.processed_at = min(d.next_attempt_at for d in deliveries)
            outcome.processed_source = "the delivery record"
        else:
            outcome.processed_at = seen_delivering
            outcome.processed_source = "first seen delivering (polls every 0.2 s; a delivery was retried)"
        logged = [int(m.group(2)) for m in _DELIVERED.finditer((workdir / "node.log").read_text(errors="replace"))
                  if int(m.group(1)) == job.id]
        outcome.delivered = logged[-1] if logged else len(ordered_outputs(job.output_dir)) if job.output_dir else 0
        files = settled_files(received, outcome.delivered)
        if len(files) != outcome.delivered:
            raise Unavailable(f"storescp holds {len(files)} files; the node delivered {outcome.delivered}")
        outcome.last_file_at = max(p.stat().st_mtime for p in files)
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
    rows: list[tuple[str, float | None, str]] = [
        ("total: last ack -> last object at storescp", outcome.total_s, ""),
        ("  completion wait (ack -> job created)", job.created_at - outcome.ack_at, outcome.completion_rule),
        ("  claim (job created -> processing starts)", processing_start - job.created_at, ""),
    ]
    rows += [(f"  {name}", value, "did not run" if value is None else "") for name, value in stages]
    rows += [("  other inside processing", other, "guard.json, references" + ("" if outcome.warm else
                                                                          ", model load (first job)")),
             ("  dispatch (processed -> last object stored)", outcome.last_file_at - outcome.processed_at,
              f"{outcome.delivered} objects")]
    for name, value, note in rows:
        shown = "       -" if value is None else f"{value:8.2f}"
        print(f"  {name:46} {shown} s  {note}")
    print(f"  {'  (processing, job total_s)':46} {total_processing:8.2f} s")
    print(f"  {'  (total after the completion wait)':46} {outcome.total_s - (job.created_at - outcome.ack_at):8.2f} s")
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(outcome.received.items()))
    print(f"  MR in: {outcome.sent} instances acknowledged; at storescp: {kinds}; QA {t.qa_verdict or '-'}, report {t.report or '-'}, guard {t.guard_verdict or '-'}")
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
    parser.add_argument("--quiet-period-s", type=positive_float, default=2.0,
                        help="the node's quiet period (default 2 s; the node's own default is 60 s)")
    parser.add_argument("--complete-on", action="append", choices=("association", "expected_count"), default=[],
                        help="the route's complete_on rule(s), besides the quiet period (repeat for both; "
                             "default none: the quiet period completes the series)")
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
    args = parser.parse_args(argv)
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
    if storescu is None or storescp is None:
        print("not measured: dcmtk storescu/storescp not found (apt-get install dcmtk)")
        return 0
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        scratch = args.keep.resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="sct-latency-bench-"))
    try:
        started = time.perf_counter()
        series = write_series(scratch / "series", args.slices, args.size, args.seed)
        size_kb = sum(f.stat().st_size for f in series) / len(series) / 1024
        print(f"series: pelvis phantom seed {args.seed}, {len(series)} MR instances of {args.size}x{args.size} "
              f"({size_kb:.0f} KB each; written in {time.perf_counter() - started:.1f} s), sent by dcmtk storescu on "
              f"one association to the node (python -m sct_node serve), delivered to dcmtk storescp")
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
              "system (s)")
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
