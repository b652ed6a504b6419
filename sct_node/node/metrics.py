"""The node's Prometheus metrics: what it received, refused, processed, judged and delivered.

One :class:`NodeMetrics` per node, in its own registry (two nodes in one process, as in the tests, never
mix their numbers). The roles report events as they happen (the Storage SCP, the processors, the
dispatcher); what is a state rather than an event (jobs by state, the spool's free space) is read from the
state database and the disk when Prometheus scrapes. The console serves it at ``/metrics``
(:mod:`sct_node.console`); ``docs/node.md`` lists the names.

Counters start at zero when the node starts, as Prometheus expects of a restarted process (its ``rate()``
and ``increase()`` handle the reset). Labels are bounded: status codes, stages, verdicts, configured
destination names and job states; never a UID, an AE title from the network or anything about a patient.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sct_node import __version__
from sct_node.config import StorageConfig
from sct_node.node.spool import Spool
from sct_node.node.state import JobState, JobTimings, StateStore

__all__ = ["STAGES", "NodeMetrics"]

#: The processing stages timed per job (JobTimings), as the ``stage`` label.
STAGES = ("read", "guard", "model", "write", "qa", "report", "total")
#: Seconds: from a bulk-model read (0.1 s) to a CPU diffusion model with an ensemble (minutes).
_STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class NodeMetrics:
    """Every metric of one node, in :attr:`registry`."""

    def __init__(self, state: StateStore, spool: Spool, storage: StorageConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        Gauge("sctnode_info", "The node's software version", ["version"], registry=registry).labels(__version__).set(1)
        self.instances_received = Counter(
            "sctnode_instances_received", "Instances stored durably and acknowledged (duplicates not counted)",
            registry=registry)
        self.instances_duplicate = Counter(
            "sctnode_instances_duplicate", "Instances received again (acknowledged, already stored)",
            registry=registry)
        self.instances_refused = Counter(
            "sctnode_instances_refused", "Instances answered with a failure status, by status (hex)",
            ["status"], registry=registry)
        self.stage_seconds = Histogram(
            "sctnode_job_stage_seconds", "Seconds each processing stage of a job took", ["stage"],
            buckets=_STAGE_BUCKETS, registry=registry)
        self.jobs_processed = Counter(
            "sctnode_jobs_processed", "Jobs that ended processing, by outcome (processed, refused, failed)",
            ["outcome"], registry=registry)
        self.qa_verdicts = Counter(
            "sctnode_qa_verdicts", "QA verdicts of processed jobs (ERROR: the QA could not run)", ["verdict"],
            registry=registry)
        self.guard_verdicts = Counter(
            "sctnode_input_guard_verdicts", "The input guard's verdicts (ok, soft, hard, unjudged)", ["verdict"],
            registry=registry)
        self.deliveries = Counter(
            "sctnode_deliveries", "Delivery attempts by destination and outcome (delivered; retry: failed, another "
            "attempt is due; failed: no attempts left)", ["destination", "outcome"], registry=registry)
        self.sent_ahead = Counter(
            "sctnode_images_sent_ahead", "sCT images a destination accepted while the report was rendered",
            ["destination"], registry=registry)
        registry.register(_StateCollector(state, spool, storage))

    # --- events, called by the roles ------------------------------------------------------------------

    def instance_stored(self, new: bool) -> None:
        (self.instances_received if new else self.instances_duplicate).inc()

    def instance_refused(self, status: int) -> None:
        self.instances_refused.labels(f"0x{status:04X}").inc()

    def job_processed(self, timings: JobTimings) -> None:
        """A job's sCT was made (and QA'd and reported where its route asks)."""
        self.jobs_processed.labels("processed").inc()
        self._observe(timings)
        if timings.qa_verdict is not None:
            self.qa_verdicts.labels(timings.qa_verdict).inc()

    def job_refused(self, timings: JobTimings) -> None:
        """The input guard refused the series: no sCT."""
        self.jobs_processed.labels("refused").inc()
        self._observe(timings)

    def job_failed(self) -> None:
        self.jobs_processed.labels("failed").inc()

    def delivery(self, destination: str, outcome: str) -> None:
        """``outcome``: delivered, retry or failed."""
        self.deliveries.labels(destination, outcome).inc()

    def images_sent_ahead(self, destination: str, count: int) -> None:
        self.sent_ahead.labels(destination).inc(count)

    def _observe(self, timings: JobTimings) -> None:
        values = {"read": timings.read_s, "guard": timings.guard_s, "model": timings.model_s,
                  "write": timings.write_s, "qa": timings.qa_s, "report": timings.report_s, "total": timings.total_s}
        for stage in STAGES:
            value = values[stage]
            if value is not None:
                self.stage_seconds.labels(stage).observe(value)
        if timings.guard_verdict is not None:
            self.guard_verdicts.labels(timings.guard_verdict).inc()


class _StateCollector(Collector):
    """What is read at each scrape: jobs by state (from the database) and the spool's disk."""

    def __init__(self, state: StateStore, spool: Spool, storage: StorageConfig) -> None:
        self.state, self.spool, self.storage = state, spool, storage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("sctnode_jobs", "Jobs in the database by state", labels=["state"])
        counts = self.state.job_counts()
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        usage = shutil.disk_usage(self.spool.root)
        yield GaugeMetricFamily("sctnode_spool_free_bytes", "Free bytes on the spool's file system",
                                value=usage.free)
        yield GaugeMetricFamily("sctnode_spool_reserve_bytes", "The reserve below which instances are refused "
                                "(storage.min_free_space_mb)", value=self.storage.min_free_space_mb * 2**20)
