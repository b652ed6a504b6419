"""The node: one process, one role per thread, all coordinated through the state database.

* receiver — the Storage SCP (pynetdicom's association threads);
* router — every ``poll_interval_s``, turns quiet series into jobs;
* processors — ``workers`` threads, each runs one job at a time;
* dispatcher — sends due deliveries, with backoff;
* cleaner — removes inputs and outputs after their retention.

On start, jobs interrupted during processing are processed again; pending
deliveries resume; series still receiving complete after their quiet period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sct_node.config import NodeConfig
from sct_node.errors import ConfigError
from sct_node.node.cluster import ClusterWorker, JobQueue, requeue_loop
from sct_node.node.commitment import CommitmentRegistry
from sct_node.node.dispatch import Dispatcher
from sct_node.node.metrics import NodeMetrics
from sct_node.node.process import JobProcessor
from sct_node.node.receive import StorageSCP
from sct_node.node.retrieve import ReferenceFetcher
from sct_node.node.route import route_complete_series
from sct_node.node.spool import Spool, SpoolPathError
from sct_node.node.state import Job, JobState, StateStore

__all__ = ["ROLES", "Node", "state_location", "state_path"]

logger = logging.getLogger(__name__)

#: What ``sct-node serve --role`` may name: all (one process, no queue) or any of the other three.
ROLES = ("all", "receiver", "worker", "dispatcher")


def state_path(config: NodeConfig) -> Path:
    """Where the node's database lives."""
    return Spool(config.storage.spool_dir).state_db


def state_location(config: NodeConfig) -> Path | str:
    """The node's state database: ``[cluster] database_url`` (PostgreSQL) when set, else the SQLite file."""
    return config.cluster.database_url or state_path(config)


def _warn_unreachable_move(config: NodeConfig) -> None:
    """A PACS retrieving by C-MOVE sends to the node's Storage SCP: say at start when the allow-list would refuse
    it (a warning, not an error: a PACS may send its sub-operations under another AE title that is listed)."""
    allowed = {caller.ae_title for caller in config.network.allowed_callers or ()}
    for pacs in config.pacs:
        if pacs.retrieve == "move" and config.network.allowed_callers is not None and pacs.ae_title not in allowed:
            logger.warning("PACS %s retrieves by C-MOVE, but its AE title %s is not in network.allowed_callers: the "
                           "instances it sends to the node will be refused", pacs.name, pacs.ae_title)


class Node:
    """A running sct-node. ``start()`` returns at once; ``stop()`` shuts every role down."""

    def __init__(self, config: NodeConfig, roles: tuple[str, ...] = ("all",)) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown or not roles or ("all" in roles and len(roles) > 1):
            raise ConfigError(f"roles: one of all, or any of receiver, worker, dispatcher; found {', '.join(roles)}")
        self.config = config
        #: What this process does (docs/cluster.md): all (the single node) or its parts, joined by [cluster]'s queue.
        self.roles = frozenset(("receiver", "worker", "dispatcher") if "all" in roles else roles)
        self.clustered = "all" not in roles
        self._queue: JobQueue | None = None
        self._worker: ClusterWorker | None = None
        self.spool = Spool(config.storage.spool_dir)
        # The spool's root exists from here on whichever database holds the state (SQLite's file made it so).
        self.spool.root.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(state_location(config))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._dispatch_wake = threading.Event()  # set when a job is processed, so delivery starts at once
        self._router_wake = threading.Event()  # set when an association rule's grace has passed
        self.metrics = NodeMetrics(self.state, self.spool, config.storage)
        #: Storage commitments waiting for their report (None when no destination asks for commitment).
        self.commitments = CommitmentRegistry.for_config(config)
        self.scp = StorageSCP(config.network, config.storage, self.state, self.spool, on_stored=None,
                              on_released=self._association_released, metrics=self.metrics,
                              commitments=self.commitments)
        routes = {route.name: route for route in config.routes}
        self.dispatcher = Dispatcher(self.state, {d.name: d for d in config.destinations}, config.dispatch,
                                     config.network.ae_title, metrics=self.metrics, commitments=self.commitments)
        # Reference data a route fetches from a PACS (C-GET stores through the Storage SCP's own store).
        fetcher = ReferenceFetcher(self.state, config.pacs, config.network.ae_title, self.scp.store) \
            if config.pacs else None
        self.processor = JobProcessor(self.state, routes.get, self.spool, send_ahead=self.dispatcher.send_ahead,
                                      metrics=self.metrics, fetcher=fetcher)
        _warn_unreachable_move(config)
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    def status(self) -> dict[str, Any]:
        """What the node is doing, for the console's node page: roles, connections, queues, disk, models."""
        import shutil

        from sct_node import __version__

        jobs = self.state.job_counts()
        server = self.scp.server
        usage = shutil.disk_usage(self.spool.root)
        return {
            "version": __version__, "started_at": self._started_at,
            "roles": {thread.name.removeprefix("sct-node-"): thread.is_alive() for thread in self._threads},
            "listening": server is not None, "port": self.port,
            "connections": server.open_connections if server is not None else 0,
            "max_connections": self.config.network.max_connections,
            "jobs": {state.value: jobs.get(state, 0) for state in JobState},
            "pending_deliveries": len(self.state.due_deliveries(now=float("inf"))),
            "spool": str(self.spool.root), "free_mb": usage.free / 2**20,
            "reserve_mb": self.config.storage.min_free_space_mb,
            "models": [{"name": m.card.name, "version": m.card.version, "identity": m.card.identity,
                        "description": m.card.description, "intended_use": m.card.intended_use}
                       for m in self.processor.loaded_models()],
            "routes": [{"name": r.name, "model": r.model, "destinations": ", ".join(r.destinations),
                        "complete_on": ", ".join(r.complete_on) or "quiet period", "on_qa_fail": r.on_qa_fail}
                       for r in self.config.routes],
            "destinations": [{"name": d.name, "address": d.address, "bundle": d.bundle}
                             for d in self.config.destinations],
        }

    def start(self) -> None:
        """Start this process's roles. The single node (``all``) first takes back the jobs a crash interrupted;
        in a cluster, interrupted jobs are taken back by their lease running out (sct_node.node.cluster)."""
        self._started_at = time.time()
        if not self.clustered:
            recovered = self.state.recover()
            if recovered:
                logger.info("restart: %d job(s) interrupted during processing will be processed again", recovered)
        if "receiver" in self.roles:
            if self.clustered:
                queue = self._queue = JobQueue(self.config.cluster, self.state)
                self._spawn("requeue", lambda: requeue_loop(queue, self._stop, self.config.cluster.lease_s))
            self.scp.start()
            self._spawn("router", self._router_loop)
            self._spawn("cleaner", self._cleaner_loop)
        if "worker" in self.roles:
            if self.clustered:
                self._worker = ClusterWorker(self.config.cluster, self.state, self.processor,
                                             on_processed=self._dispatch_wake.set)
                self._worker.start()
            else:
                for index in range(self.config.processing.workers):
                    self._spawn(f"processor-{index + 1}", self._processor_loop)
            if self.config.processing.preload:
                self._spawn("preload", self._preload)
        if "dispatcher" in self.roles:
            if self.clustered and "receiver" not in self.roles and any(d.storage_commitment
                                                                        for d in self.config.destinations):
                logger.warning("this dispatcher runs without the receiver: storage commitment reports that come on "
                               "a new association reach the receiver's Storage SCP, not this process, and those "
                               "deliveries will time out; run --role receiver,dispatcher (docs/cluster.md)")
            if self.clustered:
                # Several dispatchers may run: each attempt is claimed for longer than it may last (commitment
                # included), so a dispatcher that dies mid-attempt leaves it to another after that.
                longest_s = max((d.commitment_timeout_s for d in self.config.destinations if d.storage_commitment),
                                default=0.0)
                # A large bundle on a slow link takes minutes; if a lease still runs out, the worst is a second
                # send of the same instances, which the deterministic UIDs make a replacement.
                self.dispatcher.claim_lease_s = max(600.0, 4 * self.config.dispatch.timeout_s + longest_s + 30)
            self._spawn("dispatcher", self._dispatcher_loop)
        if self.clustered:
            logger.info("roles %s (cluster queue %s in %s)", ", ".join(sorted(self.roles)), self.config.cluster.queue,
                        self.config.cluster.namespace)

    @property
    def port(self) -> int:
        return self.scp.port

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._dispatch_wake.set()
        self._router_wake.set()
        if self._worker is not None:
            self._worker.stop()
        self.scp.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        self.state.close()

    def wait_for_job(self, timeout_s: float, poll_interval_s: float = 0.1) -> Job | None:
        """Wait until the newest job is done, held or failed; returns it (or the newest unfinished one, or None)."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.state.jobs(limit=1)
            job = jobs[0] if jobs else None
            if (job is not None and job.state.at_rest) or time.monotonic() >= deadline:
                return job
            time.sleep(poll_interval_s)

    def request_stop(self) -> None:
        """Ask the node to stop (safe from a signal handler); ``wait()`` then returns."""
        self._stop.set()

    def wait(self) -> None:
        """Block until stopped (by ``stop()`` from another thread or a signal handler)."""
        while not self._stop.wait(1.0):
            pass

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guarded, args=(name, target), name=f"sct-node-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guarded(self, name: str, target: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception:  # a role must not die silently: log and carry on after a pause
                logger.exception("%s: unexpected error; continuing", name)
                self._stop.wait(self.config.processing.poll_interval_s)

    def _preload(self) -> None:
        """Load each route's model and import the QA and report code, so the first job does not wait for them.

        A job that starts meanwhile waits for the same model load (:meth:`JobProcessor.model` holds a lock).
        A model that cannot be loaded is reported now, at start, rather than with the first series.
        """
        import importlib

        started = time.perf_counter()
        for route in self.config.routes:
            try:
                self.processor.model(route.model, route)
            except Exception as error:  # noqa: BLE001 - reported here; the job that needs it fails with it too
                logger.warning("route %s: model %s cannot be loaded: %s", route.name, route.model, error)
        for module in ("dosimetry.qa", "dosimetry.qa_result", "sct_node.report.bundle", "sct_node.report.pdf",
                       "sct_node.report.structures", "sct_node.dicom.qa_sr", "sct_node.dicom.encapsulated_pdf"):
            importlib.import_module(module)
        logger.info("preloaded the models of %d route(s) and the QA and report code in %.1f s",
                    len(self.config.routes), time.perf_counter() - started)

    def _router_loop(self) -> None:
        while not self._stop.is_set():
            self._router_wake.wait(self.config.processing.poll_interval_s)
            self._router_wake.clear()
            if self._stop.is_set():
                return
            created = route_complete_series(self.state, self.config)
            if created and self._queue is not None:
                for job_id in created:
                    self._queue.enqueue(job_id)
            elif created:
                self._wake.set()

    def _association_released(self) -> None:
        """An association that stored instances was released: look again when each route's association rule can
        fire (after its grace), instead of at the next poll."""
        graces = {route.association_grace_s for route in self.config.routes if "association" in route.complete_on}
        for grace_s in graces:
            timer = threading.Timer(grace_s + 0.05, self._router_wake.set)
            timer.daemon = True
            timer.start()

    def _processor_loop(self) -> None:
        while not self._stop.is_set():
            if self.processor.run_one():
                self._dispatch_wake.set()
            else:
                self._wake.wait(self.config.processing.poll_interval_s)
                self._wake.clear()

    def _dispatcher_loop(self) -> None:
        while not self._stop.is_set():
            self._dispatch_wake.wait(self.config.processing.poll_interval_s)
            self._dispatch_wake.clear()
            if not self._stop.is_set():
                self.dispatcher.run_due()

    def _cleaner_loop(self) -> None:
        interval_s = 60.0
        while not self._stop.wait(interval_s):
            self.clean()

    def clean(self, now: float | None = None) -> int:
        """Remove inputs and outputs past their retention; returns the number of series purged.

        A series goes once every generation of it is finished: unrouted for ``unrouted_retention_h``, or
        with a job that is done, dismissed or superseded for ``done_retention_h``
        (:meth:`StateStore.purgeable_series`). The outputs of such jobs go after ``done_retention_h`` too
        (:meth:`StateStore.settled_jobs`), even while the series is kept for a later generation. A failed or
        held job that is not superseded keeps its inputs and outputs: it waits for retry, release or dismiss.
        Every deletion goes through the spool, which refuses paths outside it.
        """
        now = time.time() if now is None else now
        done_before = now - self.config.storage.done_retention_h * 3600
        unrouted_before = now - self.config.storage.unrouted_retention_h * 3600
        purged = 0
        for series_uid in self.state.purgeable_series(done_before, unrouted_before):
            for path in self.state.purge_series(series_uid):
                try:
                    self.spool.remove_instance_file(path)
                except SpoolPathError as error:  # a recorded path outside instances/: never follow it
                    logger.warning("cleaner: instance file not removed: %s", error)
            self.spool.remove_series_dir(series_uid)
            purged += 1
        removed_outputs = 0
        for job in self.state.settled_jobs(done_before):
            if job.output_dir and job.output_dir.exists():
                try:
                    removed_outputs += self.spool.remove_job_dir(job.output_dir)
                except (SpoolPathError, OSError) as error:
                    logger.warning("cleaner: outputs of job %d (%s) not removed: %s", job.id, job.state, error)
        if purged or removed_outputs:
            logger.info("cleaner: removed %d finished series and the outputs of %d job(s) past retention", purged,
                        removed_outputs)
        return purged
