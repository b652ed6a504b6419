"""Durable job state: the node's one source of truth, in SQLite (embedded) or PostgreSQL (a cluster).

States (docs/node.md draws the diagram)::

    series:   receiving -> queued (a job was made) | unrouted (no rule matched) -> purged
    job:      complete -> processing -> delivering -> done | held (sCT held back after a QA FAIL)
                              \\-> failed (reason)  \\-> failed (reason)   -- `sct-node retry JOB`
              held -> delivering (everything) -> done                      -- `sct-node release JOB`
              failed | held -> dismissed (reason and comment kept)         -- `sct-node dismiss JOB --comment`
    delivery: pending -> done | failed | cancelled (its job was dismissed)  (one per destination)

``done`` and ``dismissed`` are final. ``failed`` and ``held`` wait for a person (retry, release or
dismiss) unless the job is *superseded*: a later generation of the same series (late instances, a
re-send) has a job that is ``done``, ``held`` or ``dismissed``. That later job was made from every
instance the earlier one had, and more; it is the one whose sCT is delivered, released or given up,
and delivering the earlier one now would replace a newer sCT at the destination with an older one
(same UIDs). A later job that is still running, or that failed too, supersedes nothing yet: it may
still fail, or be the one to retry or dismiss, and until then the earlier job is kept as it is.

The cleaner (``Node.clean``) forgets a series once every generation of it is finished and older than
its retention: unrouted, or with a job that is done, dismissed or superseded (all timestamps, the
superseding job's included, older than ``done_retention_h``). A failed or held job that is not
superseded keeps its series and its outputs. `sct-node status` shows a queued series generation by
its job's state.

Every transition is one transaction, and every step a transition starts can be
redone: a job found in ``processing`` after a crash goes back to ``complete``
and is processed again (deterministic output UIDs make the repeat harmless).
A job is claimed by exactly one worker, and a worker's result counts only under
its claim (:mod:`.jobs`); a delivery is one row per job and destination, sent under
a claim and recorded once (:mod:`.deliveries`), so a redelivered queue message
never delivers twice.

The embedded node's database is one SQLite file in WAL mode with ``synchronous=FULL``,
so a committed transition survives power loss; `sct-node status`, `retry`, `release`
and `dismiss` open the same file from another process. A cluster's roles share one
PostgreSQL database (``[cluster] database_url``) with the same tables, statements and
one-writer-at-a-time transactions (:mod:`.backend` holds every difference).

The package has one module per concept: :mod:`.records` (states and rows as frozen
dataclasses), :mod:`.schema` (tables and migrations), :mod:`.backend` (SQLite and
PostgreSQL), :mod:`.series` (series and instances), :mod:`.jobs`, :mod:`.deliveries`
(deliveries and their log) and :mod:`.audit` (the append-only trail).

References
----------
SQLite, "Write-Ahead Logging" and "PRAGMA synchronous" (sqlite.org);
PostgreSQL 15 documentation, "Explicit Locking" (advisory locks, SELECT ... FOR UPDATE SKIP LOCKED);
Mercure's job states (receiver -> router -> processor -> dispatcher).
"""

from __future__ import annotations

from pathlib import Path

from sct_node.node.state.audit import AuditStore
from sct_node.node.state.backend import database_errors, is_database_url
from sct_node.node.state.deliveries import DeliveryStore
from sct_node.node.state.jobs import JobStore
from sct_node.node.state.records import (
    Actor,
    AuditEntry,
    Delivery,
    DeliveryState,
    InstanceRecord,
    Job,
    JobState,
    JobTimings,
    SeriesRecord,
    SeriesState,
    SeriesStatus,
    with_trend_numbers,
)
from sct_node.node.state.series import SeriesStore

__all__ = ["Actor", "AuditEntry", "Delivery", "DeliveryState", "InstanceRecord", "Job", "JobState", "JobTimings",
           "SeriesRecord", "SeriesState", "SeriesStatus", "StateStore", "database_errors", "is_database_url",
           "with_trend_numbers"]


class StateStore(SeriesStore, JobStore, DeliveryStore, AuditStore):
    """The node's state database; safe to share between the node's threads.

    One class over both backends: its series, jobs, deliveries and audit parts (one module each) share one
    connection and one lock (:class:`sct_node.node.state.base.StoreBase`).

    Parameters
    ----------
    location : pathlib.Path or str
        A SQLite database file (created with its folder; one made by an earlier release is migrated), or a
        PostgreSQL URL, ``postgresql://user:password@host:port/database`` (the schema is made when missing;
        needs ``pip install 'sct-node[cluster]'``).

    Raises
    ------
    SctNodeError
        If the database cannot be opened.
    """

    def __init__(self, location: Path | str) -> None:
        super().__init__(location)
