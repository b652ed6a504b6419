"""Several processes as one node: the job queue between receivers and workers, Dramatiq over Redis.

``sct-node serve --role receiver`` stores and routes as the single node does, and puts every job it makes on
the queue (:class:`JobQueue`); ``--role worker`` takes jobs off it and runs read -> model -> write -> QA ->
report (:class:`ClusterWorker`); ``--role dispatcher`` delivers. They share the state database and the spool
(``storage.spool_dir`` on a shared file system); ``[cluster]`` in node.toml names the broker (docs/cluster.md).

Why Dramatiq with Redis: a message is acknowledged only after its actor returns, and the messages a worker
holds are put back on the queue when it stops sending heartbeats (``heartbeat_timeout_s``), however long the
job runs. So a worker that dies mid-job (power, OOM killer, SIGKILL) loses no job, and a long job is never
handed to a second worker while the first still works on it (Celery acknowledges early by default, and with
Redis redelivers anything still running after its visibility timeout). Dramatiq's default time limit of 10
minutes is raised to ``job_time_limit_s``.

The queue carries job ids only; the state database decides. A worker claims a job by id with a lease
(:meth:`StateStore.claim_job_by_id`) that a thread renews every ``lease_s / 4`` while the job runs; a message
for a job that is finished, or claimed by a worker whose lease still runs, is acknowledged and dropped. So a
message delivered twice (the receiver's re-enqueue below, a redelivery after a heartbeat timeout while the
worker was only slow) never processes a job twice at once, and a job whose worker died is taken again once
its lease ran out. Deliveries are rows with a unique (job, destination) key, made once.

The database is the source of truth, Redis only a notice board: the receiver puts every unfinished job back
on the queue when it starts and every ``lease_s`` after (:meth:`JobQueue.requeue_unfinished`: jobs waiting to
be processed, and jobs whose lease ran out). A Redis that lost its data (restarted without AOF, flushed, a new
instance) therefore loses no job; with AOF (``appendfsync everysec``) it loses at most a second of messages,
which the re-enqueue covers too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sct_node.config import ClusterConfig
from sct_node.errors import ConfigError
from sct_node.node.state import JobState

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from sct_node.node.process import JobProcessor
    from sct_node.node.state import StateStore

__all__ = ["ACTOR", "ClusterWorker", "JobQueue", "make_broker", "requeue_loop", "worker_name"]

logger = logging.getLogger(__name__)

#: The actor that processes one job; its messages carry the job id.
ACTOR = "process_job"


def make_broker(config: ClusterConfig) -> RedisBroker:
    """The Redis broker of ``config``, with the middleware the node relies on (time limit, shutdown, retries).

    Raises
    ------
    ConfigError
        No ``broker_url``, or dramatiq/redis not installed (``pip install 'sct-node[cluster]'``).
    """
    if not config.broker_url:
        raise ConfigError("[cluster] broker_url is needed for the roles receiver, worker and dispatcher "
                          "(e.g. redis://127.0.0.1:6379/0); --role all runs without one")
    try:
        from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
        from dramatiq.middleware import Retries, ShutdownNotifications, TimeLimit
    except ImportError as error:
        raise ConfigError(f"the cluster roles need dramatiq and redis ({error}); pip install 'sct-node[cluster]'") \
            from None
    middleware = [
        TimeLimit(time_limit=int(config.job_time_limit_s * 1000)),
        ShutdownNotifications(notify_shutdown=True),
        # An actor that raises is retried: only infrastructure errors get there (the processor records a job's
        # own failure in the database and returns).
        Retries(max_retries=5, min_backoff=1000, max_backoff=60_000),
    ]
    return RedisBroker(url=config.broker_url, namespace=config.namespace, middleware=middleware,
                       heartbeat_timeout=int(config.heartbeat_timeout_s * 1000),
                       maintenance_chance=max(1, int(config.requeue_check_probability * MAINTENANCE_SCALE)))


def worker_name() -> str:
    """This process's name in job claims and logs: host, process id and a random suffix (a restarted process with
    the same pid is another claimer)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobQueue:
    """The receiver's side: put jobs on the queue, and every unfinished job back after a restart or loss."""

    def __init__(self, config: ClusterConfig, state: StateStore) -> None:
        import dramatiq

        self.config, self.state = config, state
        self.broker = make_broker(config)
        self.broker.declare_queue(config.queue)
        self._message = dramatiq.Message
        self._looked_before = False
        self._missed = False

    def enqueue(self, job_id: int) -> bool:
        """Put one job on the queue; False (logged) when the broker cannot be reached: the job stays in the
        database and :meth:`requeue_unfinished` puts it on later."""
        message: dramatiq.Message[Any] = self._message(queue_name=self.config.queue, actor_name=ACTOR,
                                                        args=(job_id,), kwargs={}, options={})
        try:
            self.broker.enqueue(message)
        except Exception as error:  # noqa: BLE001  redis raises its own hierarchy; the database keeps the job
            logger.error("job %d could not be queued (%s: %s); it is queued again within %.0f s", job_id,
                         type(error).__name__, error, self.config.lease_s)
            self._missed = True  # the next round of requeue_unfinished queues every waiting job
            return False
        logger.debug("job %d queued", job_id)
        return True

    def requeue_unfinished(self, now: float | None = None) -> int:
        """Queue again what the queue may have lost; returns how many jobs were queued.

        Jobs whose claim's lease ran out always (their worker died, and so may have Redis's copy of the message).
        Jobs waiting to be processed only the first time, after :meth:`enqueue` failed (Redis unreachable when a
        job was made), and whenever Redis lost its data: a marker key set here is gone then (restarted without
        AOF, flushed, a new instance). Queuing them every round would pile
        up copies of every waiting job behind a long backlog; harmless (a copy of a taken job is dropped) but
        wasteful.
        """
        marker = f"{self.config.namespace}:sct-node-queue-marker"
        try:
            # Waiting jobs are queued again at the first round, after a job could not be queued, and when the
            # marker is gone.
            marker_gone = not self.broker.client.exists(marker)
            lost = not self._looked_before or self._missed or marker_gone
            self._missed = False
            if marker_gone:
                self.broker.client.set(marker, uuid.uuid4().hex)
                if self._looked_before:
                    logger.warning("the queue's Redis lost its data (marker gone): every waiting job is queued again")
            self._looked_before = True
        except Exception as error:  # noqa: BLE001  Redis unreachable: try again next round
            logger.error("the queue's Redis cannot be reached (%s: %s)", type(error).__name__, error)
            return 0
        queued = 0
        for job_id in self.state.jobs_to_queue(now):
            if lost or self.state.job(job_id).state == JobState.PROCESSING:  # waiting jobs: only when lost
                queued += self.enqueue(job_id)
        return queued


class ClusterWorker:
    """The worker's side: a Dramatiq worker in this process whose actor claims and processes jobs."""

    def __init__(self, config: ClusterConfig, state: StateStore, processor: JobProcessor,
                 on_processed: Callable[[], None] | None = None) -> None:
        import dramatiq

        self.config, self.state, self.processor, self.on_processed = config, state, processor, on_processed
        self.name = worker_name()
        self.broker = make_broker(config)
        self.broker.declare_queue(config.queue)
        # The actor belongs to this broker only (no global broker): one process may hold a receiver's queue too.
        self.actor = dramatiq.actor(actor_name=ACTOR, queue_name=config.queue, broker=self.broker,
                                    time_limit=int(config.job_time_limit_s * 1000))(self._process)
        self._worker: dramatiq.Worker | None = None
        self._dramatiq = dramatiq

    def start(self) -> None:
        # worker_timeout is also the idle consumer's longest back-off between polls of Redis: Dramatiq's 1 s default
        # adds about 0.35 s to every job's start (benchmarks/cluster.py); a poll is one small Lua script.
        self._worker = self._dramatiq.Worker(self.broker, queues={self.config.queue},
                                             worker_threads=self.config.worker_threads,
                                             worker_timeout=self.config.queue_poll_ms)
        # One message per thread, not Dramatiq's two: a job waiting in this worker's buffer while another worker
        # is idle costs a whole job's time (minutes on a GPU), and a dead worker's buffer waits for its heartbeat.
        self._worker.queue_prefetch = self.config.worker_threads
        self._worker.start()
        logger.info("worker %s: taking jobs from queue %s (%d at a time)", self.name, self.config.queue,
                    self.config.worker_threads)

    def stop(self) -> None:
        """Stop taking jobs; a job under way is interrupted, its message not acknowledged, its lease left to
        run out: another worker takes it."""
        if self._worker is not None:
            self._worker.stop(timeout=10_000)
            self._worker = None
        self.broker.close()

    def _process(self, job_id: Any) -> None:
        if not isinstance(job_id, int):  # only the node puts messages on its queue; still, never trust them
            logger.warning("queue %s: message with job id %r ignored", self.config.queue, job_id)
            return
        job = self.state.claim_job_by_id(job_id, self.name, self.config.lease_s)
        if job is None:
            logger.debug("job %d: finished, or another worker holds it; message dropped", job_id)
            return
        logger.info("job %d: claimed by worker %s", job_id, self.name)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job_id, stop), name=f"lease-{job_id}", daemon=True)
        renewer.start()
        try:
            self.processor.process(job)
        finally:
            stop.set()
            renewer.join(timeout=5)
        if self.on_processed is not None:
            self.on_processed()

    def _renew(self, job_id: int, stop: threading.Event) -> None:
        interval_s = self.config.lease_s / 4
        while not stop.wait(interval_s):
            try:
                if not self.state.renew_lease(job_id, self.name, self.config.lease_s):
                    return  # finished meanwhile (no longer processing), or taken over after a lost lease
            except Exception as error:  # noqa: BLE001  a database hiccup: the next renewal may succeed
                logger.warning("job %d: lease not renewed (%s); retrying in %.0f s", job_id, error, interval_s)


def requeue_loop(queue: JobQueue, stop: threading.Event, interval_s: float) -> None:
    """The receiver's re-enqueue: at once, then every ``interval_s`` until ``stop``."""
    while True:
        started = time.monotonic()
        try:
            queued = queue.requeue_unfinished()
            if queued:
                logger.info("queued %d unfinished job(s) again (the database is the source of truth)", queued)
        except Exception:  # a role must not die: the next round tries again
            logger.exception("re-enqueueing unfinished jobs failed; trying again in %.0f s", interval_s)
        if stop.wait(max(0.0, interval_s - (time.monotonic() - started))):
            return
