"""Several processes as one node: a receiver, workers and a dispatcher joined by Dramatiq over a real Redis.

Each test starts ``redis-server`` on a private port and data folder (AOF on, ``appendfsync everysec``, no RDB
snapshots), a dcmtk ``storescp`` as the planning system, and ``sct-node serve --role ...`` processes sharing one
spool and its SQLite database, exactly as an operator would on one host. Series are sent by dcmtk ``storescu``.
What is checked is what the cluster promises (issue 20): every series processed exactly once, delivered once,
spread over the workers; a worker SIGKILLed mid-job loses nothing; a Redis restarted (AOF) or flushed loses no
job.

Skipped when redis-server or dcmtk is not installed (tests/install-system-tools.sh installs both).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from sct_node.config import (
    AllowedCaller,
    ClusterConfig,
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.node.state import StateStore
from tests.sct_node.node_helpers import (
    REPO_ROOT,
    StoreScp,
    dcmtk,
    free_port,
    phantom_mr_series,
    port_open,
    storescu,
    wait_for,
    write_toml,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None or dcmtk("storescu") is None,
                                 reason="redis-server or dcmtk not installed (tests/install-system-tools.sh)")]

#: Short for a test: a SIGKILLed worker's job is taken again after about this long.
HEARTBEAT_TIMEOUT_S = 6.0
LEASE_S = 8.0
JOB_TIMEOUT_S = 120.0


class Redis:
    """redis-server on loopback with its own folder: AOF on, fsync every second, no snapshots."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, "redis-server to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def command(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()


class Role:
    """``sct-node serve --role ROLE`` in a subprocess; ``slow_write_s`` makes its sCT writer pause per slice."""

    def __init__(self, config: Path, role: str, log: Path, slow_write_s: float = 0.0) -> None:
        self.role, self.log_path = role, log
        command = [sys.executable, "-c", "from tests.sct_node.test_cluster import serve_slowly; serve_slowly()",
                   str(slow_write_s), str(config), role]
        self._log = open(log, "ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout_s: float = 60) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_for(seen, timeout_s, f"{self.role} to log {text!r}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def serve_slowly() -> None:
    """``python -c ... serve_slowly() DELAY_S CONFIG ROLE``: ``sct-node serve --role ROLE`` whose sCT writer
    pauses DELAY_S after each slice (through its own progress callback), so a job is long enough to kill."""
    delay_s, config, role = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    from sct_node.cli import main
    from sct_node.node import process

    if delay_s > 0:
        real_writer = process.write_sct_series

        def slow_writer(*args, **kwargs):
            return real_writer(*args, progress=lambda done, total: time.sleep(delay_s), **kwargs)

        process.write_sct_series = slow_writer
    raise SystemExit(main(["serve", "--config", config, "--role", role]))


class Cluster:
    """Redis, a planning system, and the node's roles on one shared spool."""

    def __init__(self, folder: Path, database_url: str | None = None) -> None:
        self.folder, self.database_url = folder, database_url
        self.redis = Redis(folder / "redis")
        self.tps_port, self.node_port = free_port(), free_port()
        self.tps = StoreScp(folder / "tps", self.tps_port)
        self.spool = folder / "spool"
        config = NodeConfig(
            network=NetworkConfig(ae_title="SCT_NODE", port=self.node_port, network_timeout_s=10,
                                  allowed_callers=(AllowedCaller(ae_title="PACS", host="127.0.0.1"),)),
            storage=StorageConfig(spool_dir=self.spool, min_free_space_mb=0),
            processing=ProcessingConfig(quiet_period_s=30.0, poll_interval_s=0.1, preload=False),
            dispatch=DispatchConfig(max_attempts=5, initial_delay_s=0.2, max_delay_s=1.0, timeout_s=10),
            cluster=ClusterConfig(broker_url=self.redis.url, database_url=database_url,
                                  heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, lease_s=LEASE_S,
                                  requeue_check_probability=1.0),
            routes=(RouteConfig(name="mr-to-sct", model="bulk", qa=False, destinations=("tps",),
                                complete_on=("association",), association_grace_s=0.2),),
            destinations=(DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=self.tps_port),),
        )
        self.config = write_toml(config, folder / "node.toml")
        self.roles: list[Role] = []

    def start(self, role: str, slow_write_s: float = 0.0) -> Role:
        started = Role(self.config, role, self.folder / f"{role.replace(',', '+')}-{len(self.roles)}.log",
                       slow_write_s)
        self.roles.append(started)
        if "receiver" in role:
            wait_for(lambda: port_open(self.node_port) or started.process.poll() is not None, 60, "the receiver")
        if "worker" in role:
            started.wait_for_line("taking jobs from queue")
        return started

    def jobs(self) -> list[tuple]:
        """(id, state, claimed_by) of every job, read as another process sees the database (either kind)."""
        if self.database_url is None and not (self.spool / "state.sqlite3").exists():
            return []
        state = StateStore(self.database_url or self.spool / "state.sqlite3")
        try:
            return sorted((job.id, job.state.value, job.claimed_by) for job in state.jobs(limit=1000))
        finally:
            state.close()

    def deliveries(self) -> list[tuple]:
        state = StateStore(self.database_url or self.spool / "state.sqlite3")
        try:
            return [(job_id, d.destination, d.state.value) for job_id, _, _ in self.jobs()
                    for d in state.deliveries(job_id)]
        finally:
            state.close()

    def stop(self) -> None:
        for role in reversed(self.roles):
            role.stop()
        self.tps.stop()
        self.redis.stop()

    def diagnostics(self) -> str:
        return "\n".join(f"--- {role.role}\n{role.log()[-2500:]}" for role in self.roles)


@pytest.fixture
def cluster(request, tmp_path) -> Iterator[Cluster]:
    """The cluster, on the spool's SQLite file, or on a fresh PostgreSQL database when the test is parametrized
    with ``database = "postgresql"`` (a real server, tests/sct_node/postgres_helpers.py)."""
    database = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres").new_database() if database == "postgresql" else None
    started = Cluster(tmp_path, url)
    try:
        yield started
    finally:
        started.stop()


def _series(folder: Path, count: int) -> list:
    return [phantom_mr_series(folder / f"scanner-{index}", seed=index, case_id=f"pelvis-{index:04d}")
            for index in range(count)]


def _sct_per_series(cluster: Cluster) -> dict[str, int]:
    """Frame of reference of the MR -> sCT instances the planning system holds for it (each counted once)."""
    counts: dict[str, set[str]] = {}
    for path in cluster.tps.files():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        counts.setdefault(str(dataset.FrameOfReferenceUID), set()).add(str(dataset.SOPInstanceUID))
    return {frame: len(uids) for frame, uids in counts.items()}


def _all_done(cluster: Cluster, count: int) -> bool:
    jobs = cluster.jobs()
    return len(jobs) == count and all(state == "done" for _, state, _ in jobs)


@pytest.mark.parametrize("cluster", ["sqlite", "postgresql"], indirect=True)
def test_two_workers_process_four_series_each_exactly_once_and_deliver_each_once(cluster, tmp_path):
    cluster.start("receiver,dispatcher")
    cluster.start("worker", slow_write_s=0.15)  # about 2 s a job: long enough for both workers to take some
    cluster.start("worker", slow_write_s=0.15)
    series = _series(tmp_path, 4)
    for mr in series:
        assert storescu(cluster.node_port, mr.files).returncode == 0

    try:
        wait_for(lambda: _all_done(cluster, 4), JOB_TIMEOUT_S, "four jobs done")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.jobs()}\n{cluster.diagnostics()}") from None
    jobs = cluster.jobs()
    assert len({claimed_by for _, _, claimed_by in jobs}) == 2, f"not spread over both workers: {jobs}"
    # Each series processed once: one job per series, and each worker logged each of its jobs once.
    logs = "".join(role.log() for role in cluster.roles if role.role == "worker")
    for job_id, _, _ in jobs:
        assert logs.count(f"job {job_id}: claimed by worker") == 1
    # Delivered once each: the planning system got every slice of every series, no instance twice.
    assert _sct_per_series(cluster) == {mr.frame_of_reference_uid: len(mr.files) for mr in series}
    assert len(cluster.tps.files()) == sum(len(mr.files) for mr in series)
    assert cluster.deliveries() == [(job_id, "tps", "done") for job_id, _, _ in jobs]


def test_a_worker_killed_mid_job_has_its_job_finished_by_the_other_and_delivered_once(cluster, tmp_path):
    cluster.start("receiver,dispatcher")
    doomed = cluster.start("worker", slow_write_s=1.0)  # 12 slices: 12 s a job
    [mr] = _series(tmp_path, 1)
    assert storescu(cluster.node_port, mr.files).returncode == 0
    doomed.wait_for_line("claimed by worker", 60)
    survivor = cluster.start("worker")  # started after the claim: the job is the doomed worker's
    time.sleep(1.0)  # mid-job (writing its sCT)
    doomed.kill()
    killed_at = time.monotonic()

    try:
        wait_for(lambda: _all_done(cluster, 1), JOB_TIMEOUT_S, "the job to be finished by the other worker")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.jobs()}\n{cluster.diagnostics()}") from None
    took_s = time.monotonic() - killed_at
    assert "job 1: claimed by worker" in survivor.log()
    assert took_s >= LEASE_S - 2, f"taken again after {took_s:.1f} s, before the dead worker's lease ran out"
    assert _sct_per_series(cluster) == {mr.frame_of_reference_uid: len(mr.files)}
    assert len(cluster.tps.files()) == len(mr.files)  # one delivery


def test_redis_restarted_mid_queue_or_flushed_loses_no_job(cluster, tmp_path):
    cluster.start("receiver,dispatcher")
    series = _series(tmp_path, 3)
    for mr in series[:2]:
        assert storescu(cluster.node_port, mr.files).returncode == 0
    wait_for(lambda: len(cluster.jobs()) == 2, 60, "two jobs queued")
    time.sleep(1.5)  # appendfsync everysec: the messages are on disk after a second

    cluster.redis.stop()  # Redis restarted mid-queue, AOF on: the two messages survive
    cluster.redis.start()
    assert cluster.redis.command("LLEN", "sct-node:jobs") == "2"

    cluster.redis.command("FLUSHALL")  # Redis loses everything: the receiver's restart queues the jobs again
    cluster.roles[0].stop()
    cluster.roles.pop(0)
    receiver = cluster.start("receiver,dispatcher")
    receiver.wait_for_line("unfinished job(s) again", 30)
    assert storescu(cluster.node_port, series[2].files).returncode == 0
    cluster.start("worker")

    try:
        wait_for(lambda: _all_done(cluster, 3), JOB_TIMEOUT_S, "all three jobs done")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.jobs()}\n{cluster.diagnostics()}") from None
    assert _sct_per_series(cluster) == {mr.frame_of_reference_uid: len(mr.files) for mr in series}


def test_a_job_made_while_redis_is_down_is_queued_once_it_is_back_without_a_restart(cluster, tmp_path):
    cluster.start("receiver,dispatcher")
    cluster.start("worker")
    [mr] = _series(tmp_path, 1)
    cluster.redis.stop()
    assert storescu(cluster.node_port, mr.files).returncode == 0  # receiving does not need the queue
    wait_for(lambda: len(cluster.jobs()) == 1, 60, "the job to be made")
    wait_for(lambda: "could not be queued" in cluster.roles[0].log(), 30, "the receiver to say so")
    cluster.redis.start()

    try:
        wait_for(lambda: _all_done(cluster, 1), JOB_TIMEOUT_S, "the job, once Redis is back")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.jobs()}\n{cluster.diagnostics()}") from None
    assert _sct_per_series(cluster) == {mr.frame_of_reference_uid: len(mr.files)}
