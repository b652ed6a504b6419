"""Cluster throughput and the queue's added latency (issue 20): 1 and 2 worker processes, bulk model.

Starts a real redis-server (AOF on, as deployed), a receiver with the dispatcher in its process, N workers
(``sct-node serve --role ...``) on one shared spool and SQLite database, and dcmtk's storescp as the planning
system; dcmtk's storescu sends the series.

Two numbers:

* **Series per hour** with 1 and then 2 workers: with the workers started and their model loaded,
  ``--series`` phantom series are sent at once (one storescu each); timed from the first job claimed to the
  last job done (its delivery recorded). Expect near-linear up to
  the cores (2 here): each worker is one process with its own torch threads (``OMP_NUM_THREADS=1`` per
  worker, so two workers do not fight over the two cores).
* **The queue's added latency per job**: with idle workers, one series at a time, from the router's
  "complete: job N" line to the worker's "job N: claimed" line (both in the processes' logs, millisecond
  stamps, one host clock). That is the path router -> Redis -> Dramatiq consumer -> database claim that the
  single node replaces with an in-process wake-up. Target < 50 ms.

    python benchmarks/cluster.py [--series 8] [--slices 24] [--size 96] [--latency-jobs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _peers import PeerUnavailable, dcmtk_tool, end_process, free_port, port_open, wait_until

from models.phantoms import generate_phantom
from sct_node.tools.phantom_writer import phantom_identity, write_image_series

REPO = Path(__file__).resolve().parents[1]
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def write_series(folder: Path, count: int, slices: int, size: int) -> list[Path]:
    folders = []
    for seed in range(count):
        phantom = generate_phantom("pelvis", 4000 + seed, shape_zyx=(slices, size, size))
        target = folder / f"series-{seed}"
        write_image_series(phantom.mr_t1, target, phantom_identity("pelvis", 4000 + seed, f"cluster-{seed:04d}"),
                           "MR")
        folders.append(target)
    return folders


def config_text(spool: Path, port: int, tps_port: int, redis_port: int) -> str:
    return f"""
[network]
port = {port}
network_timeout_s = 30
[storage]
spool_dir = "{spool}"
min_free_space_mb = 0
[processing]
quiet_period_s = 30
poll_interval_s = 0.1
preload = true
[dispatch]
timeout_s = 30
initial_delay_s = 0.5
[cluster]
broker_url = "redis://127.0.0.1:{redis_port}/0"
[[routes]]
name = "mr"
model = "bulk"
qa = false
destinations = ["tps"]
complete_on = ["association"]
association_grace_s = 0.2
[[destinations]]
name = "tps"
ae_title = "TPS"
host = "127.0.0.1"
port = {tps_port}
"""


def stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if match else None


def log_times(path: Path, pattern: str) -> dict[int, float]:
    """job id -> time of the first log line matching ``pattern`` (with a (\\d+) group for the job)."""
    found: dict[int, float] = {}
    regex = re.compile(pattern)
    for line in path.read_text(errors="replace").splitlines():
        match = regex.search(line)
        when = stamp(line)
        if match and when is not None:
            found.setdefault(int(match.group(1)), when)
    return found


def jobs_done(spool: Path) -> tuple[int, float]:
    database = spool / "state.sqlite3"
    if not database.exists():
        return 0, 0.0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT COUNT(*), MAX(updated_at) FROM jobs WHERE state = 'done'").fetchone()
    return int(row[0]), float(row[1] or 0.0)


def run(workers: int, series: list[Path], args: argparse.Namespace, storescu: str, storescp: str,
        one_at_a_time: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="sct-cluster-bench-") as tmp:
        work = Path(tmp)
        redis_port, port, tps_port = free_port(), free_port(), free_port()
        (work / "redis").mkdir()
        (work / "tps").mkdir()
        processes: list[subprocess.Popen] = []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir",
                                      str(work / "redis"), "--appendonly", "yes", "--appendfsync", "everysec",
                                      "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(redis)
            wait_until(lambda: port_open(redis_port), 10, redis, "redis-server")
            tps = subprocess.Popen([storescp, "-od", str(work / "tps"), "-aet", "TPS",
                                    str(tps_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(tps)
            wait_until(lambda: port_open(tps_port), 10, tps, "storescp")
            config = work / "node.toml"
            config.write_text(config_text(work / "spool", port, tps_port, redis_port))
            logs: dict[str, Path] = {}

            def start(role: str) -> None:
                name = f"{role.replace(',', '+')}-{len(logs)}"
                logs[name] = work / f"{name}.log"
                process = subprocess.Popen([sys.executable, "-m", "sct_node", "serve", "--config", str(config),
                                            "--role", role], cwd=REPO, env=env, stdout=open(logs[name], "wb"),
                                           stderr=subprocess.STDOUT)
                processes.append(process)
                if role == "worker":  # started, its model loaded and the QA code imported: idle and ready
                    wait_until(lambda path=logs[name]: "preloaded" in path.read_text(errors="replace"), 180,
                               process, "a worker to preload")

            start("receiver,dispatcher")
            wait_until(lambda: port_open(port), 60, processes[-1], "the receiver")
            for _ in range(workers):
                start("worker")
            started = time.monotonic()

            def send(folder: Path) -> subprocess.Popen:
                return subprocess.Popen([storescu, "-aet", "PACS", "-aec", "SCT_NODE", "127.0.0.1", str(port),
                                         *map(str, sorted(folder.glob("*.dcm")))], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

            if one_at_a_time:  # the latency: an idle worker, one series at a time
                for index, folder in enumerate(series):
                    send(folder).wait(timeout=120)
                    wait_until(lambda n=index + 1: jobs_done(work / "spool")[0] >= n, 300, None, "the job")
            else:  # the throughput: every series sent at once, so the workers are never short of jobs
                for sender in [send(folder) for folder in series]:
                    sender.wait(timeout=300)
            wait_until(lambda: jobs_done(work / "spool")[0] >= len(series), 1800, None, "every job")
            elapsed = time.monotonic() - started
            receiver_log = next(path for name, path in logs.items() if name.startswith("receiver"))
            made = log_times(receiver_log, r"complete: job (\d+),")
            claimed: dict[int, float] = {}
            for name, path in logs.items():
                if name.startswith("worker"):
                    claimed.update(log_times(path, r"job (\d+): claimed by worker"))
            _, last_done = jobs_done(work / "spool")
            span_s = last_done - min(claimed.values())  # the workers' time: first claim to last job done
            queue_ms = [1000 * (claimed[job] - made[job]) for job in made if job in claimed]
            per_worker = {name: len(log_times(path, r"job (\d+): claimed by worker"))
                          for name, path in logs.items() if name.startswith("worker")}
            return {"workers": workers, "series": len(series), "span_s": span_s, "elapsed_s": elapsed,
                    "per_hour": 3600 * len(series) / span_s, "queue_ms": queue_ms, "per_worker": per_worker}
        finally:
            for process in reversed(processes):
                end_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=8, help="series per throughput run (default 8)")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=160, help="rows and columns (default 160)")
    parser.add_argument("--latency-jobs", type=int, default=5, help="series sent one at a time for the latency")
    args = parser.parse_args()
    storescu, storescp = dcmtk_tool("storescu"), dcmtk_tool("storescp")
    if storescu is None or storescp is None or shutil.which("redis-server") is None:
        raise PeerUnavailable("needs dcmtk (storescu, storescp) and redis-server: sh tests/install-system-tools.sh")
    with tempfile.TemporaryDirectory(prefix="sct-cluster-series-") as tmp:
        series = write_series(Path(tmp), max(args.series, args.latency_jobs), args.slices, args.size)
        runs = [run(workers, series[:args.series], args, storescu, storescp, one_at_a_time=False)
                for workers in (1, 2)]
        latency = run(1, series[:args.latency_jobs], args, storescu, storescp, one_at_a_time=True)
    print(f"\nsct-node cluster benchmark: bulk model, {args.series} series of {args.slices} x {args.size} x "
          f"{args.size}, {os.cpu_count()} CPU cores, one host, SQLite state, Redis AOF everysec\n")
    print(f"{'workers':>8} {'first claim -> last done':>24} {'series/hour':>12} {'jobs per worker':>24}")
    for result in runs:
        print(f"{result['workers']:>8} {result['span_s']:>22.1f} s {result['per_hour']:>12.0f} "
              f"{sorted(result['per_worker'].values())!s:>24}")
    speedup = runs[1]["per_hour"] / runs[0]["per_hour"]
    print(f"\n2 workers / 1 worker: {speedup:.2f}x (near-linear up to the cores: expect close to "
          f"{min(2, os.cpu_count() or 1)}x)")
    queue = latency["queue_ms"]
    print(f"queue's added latency per job (router's job -> worker's claim, idle worker, {len(queue)} jobs): "
          f"median {statistics.median(queue):.0f} ms, max {max(queue):.0f} ms (target < 50 ms: "
          f"{'met' if statistics.median(queue) < 50 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
