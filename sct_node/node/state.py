"""Durable job state in an embedded SQLite database: the node's one source of truth.

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
The database runs in WAL mode with ``synchronous=FULL``, so a committed
transition survives power loss; `sct-node status`, `retry`, `release` and
`dismiss` open the same file from another process.

References
----------
SQLite, "Write-Ahead Logging" and "PRAGMA synchronous" (sqlite.org);
Mercure's job states (receiver -> router -> processor -> dispatcher).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sct_node.errors import SctNodeError

if TYPE_CHECKING:
    from dosimetry.qa_result import QaResult

__all__ = ["Delivery", "DeliveryState", "InstanceRecord", "Job", "JobState", "JobTimings", "SeriesRecord", "SeriesState",
           "SeriesStatus", "StateStore"]


class SeriesState(StrEnum):
    """A series generation's own state (the module docstring draws the transitions)."""

    RECEIVING = "receiving"
    QUEUED = "queued"      # a job was made; from here the job's state says what happened
    UNROUTED = "unrouted"  # no routing rule matched
    PURGED = "purged"      # its instances were forgotten by the cleaner


class JobState(StrEnum):
    """A job's state (the module docstring draws the transitions)."""

    COMPLETE = "complete"      # its series is complete: waiting for a worker
    PROCESSING = "processing"
    DELIVERING = "delivering"
    DONE = "done"              # final
    HELD = "held"              # the sCT is held back after a QA FAIL: release or dismiss
    FAILED = "failed"          # reason kept: retry or dismiss
    DISMISSED = "dismissed"    # final: a person gave up on it, with a comment

    @property
    def at_rest(self) -> bool:
        """Whether the node has stopped working on the job: for good (done, dismissed) or until a person acts."""
        return self in (JobState.DONE, JobState.HELD, JobState.FAILED, JobState.DISMISSED)


class DeliveryState(StrEnum):
    """One destination's delivery of a job's outputs."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"          # no attempts left
    CANCELLED = "cancelled"    # its job was dismissed before it was sent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL,
    generation INTEGER NOT NULL,
    frame_of_reference_uid TEXT,
    association TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, generation);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    study_uid TEXT, modality TEXT, description TEXT, image_type TEXT, body_part TEXT, calling_ae TEXT,
    instances INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    association TEXT,
    single_association INTEGER NOT NULL DEFAULT 1,
    released_at REAL,
    expected_instances INTEGER,
    acquisition TEXT,
    PRIMARY KEY (series_uid, generation)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    output_dir TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    timings TEXT,
    held TEXT,
    dismissed_comment TEXT,
    dismissed_at REAL,
    refused TEXT,
    completed_by TEXT,
    UNIQUE (series_uid, generation, route)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    images_sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS delivery_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS delivery_log_job ON delivery_log (job_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id INTEGER,
    comment TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str
    received_at: float
    generation: int
    frame_of_reference_uid: str | None = None
    #: The association that brought it (:attr:`sct_node.node.netguard.Connection.association_id`).
    association: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    generation: int
    state: SeriesState
    study_uid: str | None
    modality: str | None
    description: str | None
    image_type: str | None
    body_part: str | None
    calling_ae: str | None
    instances: int
    first_received_at: float
    last_received_at: float
    updated_at: float
    #: The association the generation's first instance came on.
    association: str | None = None
    #: Whether every instance of the generation came on that one association (duplicates included).
    single_association: bool = True
    #: When that association was released normally (None while it is open, or when it was aborted).
    released_at: float | None = None
    #: How many instances the series says it has (Images in Acquisition, or an Enhanced MR concatenation);
    #: None when the data do not say, -1 when its instances disagree (on the count or the acquisition).
    expected_instances: int | None = None
    #: The Acquisition Number of the generation's first instance (None when it has none).
    acquisition: str | None = None


@dataclass(frozen=True)
class SeriesStatus:
    """A series generation as `sct-node status` shows it: with its job, once it has one."""

    series: SeriesRecord
    job_id: int | None
    job_state: JobState | None

    @property
    def state(self) -> SeriesState | JobState:
        """What happened to the generation: its job's state once it has a job, else its own.

        ``queued`` only says that a job was made; after that the job's state (``processing``, ``done``,
        ``failed``, ``held``, ``dismissed``, ...) is what an operator needs. ``receiving``, ``unrouted``
        and ``purged`` are the series' own and are shown as they are.
        """
        if self.series.state == SeriesState.QUEUED and self.job_state is not None:
            return self.job_state
        return self.series.state


@dataclass(frozen=True)
class JobTimings:
    """What a job's processing took, stage by stage (seconds), and what its checks said.

    A stage that did not run (no QA on the route, a series the input guard refused) is None; the database
    keeps the JSON of the stages that ran (:meth:`to_json`), as it did when this was a dict.
    """

    read_s: float | None = None
    guard_s: float | None = None
    #: The input guard's verdict: ok, soft, hard or unjudged (models.envelope).
    guard_verdict: str | None = None
    model_s: float | None = None
    write_s: float | None = None
    qa_s: float | None = None
    #: PASS, WARN or FAIL; ERROR for a QA that could not be made (the sCT is delivered without it).
    qa_verdict: str | None = None
    #: The verdict the report bundle carries; ERROR for a bundle that could not be built.
    report: str | None = None
    report_s: float | None = None
    total_s: float | None = None
    #: What the console's trends follow (trend_numbers): the QA's gamma pass rate (None without dose), the
    #: body's soft-tissue and bone mean HU and bone share, and whether the sCT was held back after a FAIL.
    gamma_pass_percent: float | None = None
    soft_tissue_mean_hu: float | None = None
    bone_mean_hu: float | None = None
    bone_percent: float | None = None
    held_back: bool | None = None

    def to_json(self) -> str:
        return json.dumps({name: value for name, value in asdict(self).items() if value is not None})

    @classmethod
    def from_json(cls, text: str) -> JobTimings:
        """Read what :meth:`to_json` wrote; keys this version does not know (a newer node's) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in json.loads(text).items() if name in known})


def with_trend_numbers(timings: JobTimings, qa: QaResult) -> JobTimings:
    """``timings`` with the numbers of a QA result that the console's trends follow."""
    from dataclasses import replace

    hu = qa.hu
    bone = next((t for t in hu.tissue_fractions if str(t.tissue) == "bone"), None) if hu is not None else None
    return replace(timings, gamma_pass_percent=qa.dose.gamma.pass_rate_percent if qa.dose is not None else None,
                   soft_tissue_mean_hu=hu.soft_tissue_mean_hu if hu is not None else None,
                   bone_mean_hu=hu.bone_mean_hu if hu is not None else None,
                   bone_percent=100.0 * bone.fraction if bone is not None else None)


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    generation: int
    route: str
    model: str
    state: JobState
    reason: str | None
    output_dir: Path | None
    created_at: float
    updated_at: float
    #: What processing took; None until the job was processed.
    timings: JobTimings | None
    #: Why part of the outputs is held back (None when nothing is); the job ends ``held`` instead of ``done``.
    held: str | None = None
    #: Why a person dismissed the job (``sct-node dismiss``), and when (seconds since the epoch).
    dismissed_comment: str | None = None
    dismissed_at: float | None = None
    #: Why the input guard refused the series (no sCT); the job ends ``failed`` with this reason once the
    #: refusal notice (SR and PDF) was delivered, and ``sct-node retry`` processes it again.
    refused: str | None = None
    #: Which completion rule made the series complete (sct_node.node.route: association, expected count,
    #: quiet period), with the numbers that fired it.
    completed_by: str | None = None


@dataclass(frozen=True)
class Actor:
    """Who does something to a job: a console user (``name``, ``role``), or ``cli:<login>`` with role ``cli``."""

    name: str
    role: str


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit trail: who did what, to which job, when, and why."""

    id: int
    at: float
    actor: str
    role: str
    #: release, retry, dismiss (job actions); login, login_refused, logout (the console).
    action: str
    job_id: int | None
    comment: str
    #: What it led to: the job's new state, or why it was refused.
    outcome: str


@dataclass(frozen=True)
class Delivery:
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    #: The destination accepted the sCT images while the report was rendered (sent ahead by the processor):
    #: this delivery sends the rest of the bundle.
    images_sent: bool = False


class StateStore:
    """The node's SQLite database; safe to share between the node's threads.

    Parameters
    ----------
    path : pathlib.Path
        Database file (created with its folder).

    Raises
    ------
    SctNodeError
        If the database cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                               timeout=30.0)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
            # Columns added since the first release: a database made before held-back outputs (held),
            # dismissals (dismissed_*) or guard refusals (refused) existed gets them here (rows are read by column name, _JOB_COLUMNS).
            # Completion rules (association, expected count) added the instances' association and the series'
            # association, release time and expected count, and the jobs' completed_by.
            for table, added in _ADDED_COLUMNS:
                columns = {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}
                for name, kind in added:
                    if name not in columns:
                        self._connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        except (sqlite3.Error, OSError) as error:  # OSError: the folder cannot be made (a file is in the way)
            raise SctNodeError(f"cannot open the state database {self.path}: {error}") from error
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _query(self, sql: str, parameters: tuple[Any, ...] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    # --- receiving ----------------------------------------------------------------------------------

    def record_instance(self, *, sop_instance_uid: str, series_uid: str, sop_class_uid: str, path: Path,
                        calling_ae: str, study_uid: str | None, modality: str | None, description: str | None,
                        image_type: str | None, body_part: str | None, now: float | None = None,
                        frame_of_reference_uid: str | None = None, association: str | None = None,
                        expected_instances: int | None = None, acquisition: str | None = None) -> bool:
        """Record a stored instance; returns False when it was already known (a duplicate).

        An instance for a series whose last generation is no longer receiving opens a new
        generation, so late instances start a new processing instead of joining a finished one.
        A duplicate opens nothing, but restarts the quiet period of a generation still receiving.

        ``association`` names the association that brought the instance: a generation whose instances
        (duplicates included) came on more than one association is no longer complete at a release
        (:meth:`association_released`). ``expected_instances`` is what the instance says the series holds
        (None: it does not say); a generation whose instances disagree gets -1 (the count is not used).
        ``acquisition`` is the instance's Acquisition Number: a classic image announces the count of its
        acquisition, so instances of two acquisitions in one series (a multi-station stack, say) turn the count
        off too, however much each announces.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone():
                # A duplicate shows the sender is still sending this series (a whole-series re-send after a
                # dropped association starts with the instances already stored): keep a generation that is
                # still receiving open, or the quiet period could close it half-way through the re-send.
                db.execute("UPDATE series SET last_received_at = ?, updated_at = ?, single_association = "
                           "single_association AND association IS ? WHERE series_uid = ? AND state = ?",
                           (now, now, association, series_uid, SeriesState.RECEIVING))
                return False
            row = db.execute("SELECT generation, state, expected_instances, acquisition FROM series "
                             "WHERE series_uid = ? ORDER BY generation DESC LIMIT 1", (series_uid,)).fetchone()
            agrees = row is None or (expected_instances == row[2] and acquisition == row[3])
            if row is not None and row[1] == SeriesState.RECEIVING:
                generation = row[0]
                expected = row[2] if agrees or row[2] == -1 else -1
                db.execute("UPDATE series SET instances = instances + 1, last_received_at = ?, updated_at = ?, "
                           "single_association = single_association AND association IS ?, expected_instances = ? "
                           "WHERE series_uid = ? AND generation = ?",
                           (now, now, association, expected, series_uid, generation))
            else:
                generation = 1 if row is None else row[0] + 1
                # A later generation keeps the series' count (its late instances complete the same series).
                expected = expected_instances if agrees else -1
                db.execute(
                    "INSERT INTO series (series_uid, generation, state, study_uid, modality, description, "
                    "image_type, body_part, calling_ae, instances, first_received_at, last_received_at, updated_at, "
                    "association, single_association, released_at, expected_instances, acquisition) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, 1, NULL, ?, ?)",
                    (series_uid, generation, SeriesState.RECEIVING, study_uid, modality, description, image_type,
                     body_part, calling_ae, now, now, now, association, expected, acquisition))
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (sop_instance_uid, series_uid, sop_class_uid, str(path), calling_ae, now, generation,
                        frame_of_reference_uid, association))
        return True

    def association_released(self, association: str, now: float | None = None) -> int:
        """An association was released normally: the generations it alone brought may be complete.

        Returns how many generations, still receiving, took note (:mod:`sct_node.node.route` decides).
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute("UPDATE series SET released_at = ?, updated_at = ? WHERE association = ? "
                              "AND single_association AND state = ?",
                              (now, now, association, SeriesState.RECEIVING)).rowcount

    def receiving_series(self) -> list[SeriesRecord]:
        """Every series generation still receiving, oldest last instance first (the router judges each)."""
        rows = self._query("SELECT * FROM series WHERE state = ? ORDER BY last_received_at",
                           (SeriesState.RECEIVING,))
        return [_series(row) for row in rows]

    def series_instance_count(self, series_uid: str, up_to_generation: int) -> int:
        """How many instances of a series were received up to (and including) a generation."""
        return int(self._query("SELECT COUNT(*) FROM instances WHERE series_uid = ? AND generation <= ?",
                               (series_uid, up_to_generation))[0][0])

    def quiet_series(self, quiet_period_s: float, now: float | None = None) -> list[SeriesRecord]:
        """Series generations still receiving whose last instance is older than the quiet period."""
        now = time.time() if now is None else now
        rows = self._query("SELECT * FROM series WHERE state = ? AND last_received_at <= ? "
                           "ORDER BY last_received_at", (SeriesState.RECEIVING, now - quiet_period_s))
        return [_series(row) for row in rows]

    def series_instances(self, series_uid: str, up_to_generation: int) -> list[InstanceRecord]:
        """Every instance of a series received up to (and including) a generation."""
        rows = self._query("SELECT * FROM instances WHERE series_uid = ? AND generation <= ? "
                           "ORDER BY received_at", (series_uid, up_to_generation))
        return [_instance(row) for row in rows]

    def instances_in_frame(self, sop_class_uids: tuple[str, ...], frame_of_reference_uid: str) -> list[InstanceRecord]:
        """Stored instances of some SOP classes in one frame of reference (QA reference data), oldest first.

        An RT Structure Set's frame is the one it references (recorded at receipt).
        """
        marks = ", ".join("?" for _ in sop_class_uids)
        rows = self._query(f"SELECT * FROM instances WHERE sop_class_uid IN ({marks}) AND frame_of_reference_uid = ? "
                           "ORDER BY received_at", (*sop_class_uids, frame_of_reference_uid))
        return [_instance(row) for row in rows]

    def mark_unrouted(self, series: SeriesRecord) -> None:
        with self._transaction() as db:
            db.execute("UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ? AND generation = ? "
                       "AND state = ?", (SeriesState.UNROUTED, time.time(), series.series_uid, series.generation,
                                         SeriesState.RECEIVING))

    def create_job(self, series: SeriesRecord, route: str, model: str, output_root: Path,
                   completed_by: str | None = None) -> int | None:
        """Queue a job for a complete series generation; None if the series changed meanwhile.

        ``completed_by`` says which completion rule fired (kept with the job, shown by ``sct-node status``).
        """
        now = time.time()
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ? AND generation = ? "
                "AND state = ? AND last_received_at = ?",
                (SeriesState.QUEUED, now, series.series_uid, series.generation, SeriesState.RECEIVING,
                 series.last_received_at)).rowcount
            if not changed:
                return None
            cursor = db.execute(
                "INSERT INTO jobs (series_uid, generation, route, model, state, created_at, updated_at, completed_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (series.series_uid, series.generation, route, model, JobState.COMPLETE, now, now, completed_by))
            assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
            job_id = int(cursor.lastrowid)
            db.execute("UPDATE jobs SET output_dir = ? WHERE id = ?", (str(output_root / f"job-{job_id}"), job_id))
        return job_id

    # --- processing ---------------------------------------------------------------------------------

    def recover(self) -> int:
        """After a restart: jobs interrupted in processing are processed again. Returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                              (JobState.COMPLETE, time.time(), JobState.PROCESSING)).rowcount

    def claim_job(self) -> Job | None:
        """Take the oldest complete job for processing (atomically, so one worker gets it)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = ? ORDER BY id LIMIT 1", (JobState.COMPLETE,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                       (JobState.PROCESSING, time.time(), row[0]))
        return self.job(row[0])

    def job_processed(self, job_id: int, destinations: tuple[str, ...], timings: JobTimings,
                      hold_reason: str | None = None, images_sent: tuple[str, ...] = ()) -> None:
        """Processing finished: deliver to every destination, or finish when there are none.

        With ``hold_reason`` part of the outputs is held back: the job ends ``held`` (not ``done``) once what
        may be delivered was delivered, keeping the reason, until :meth:`release_job`. ``images_sent`` names the
        destinations that already accepted the sCT images (sent ahead while the report was rendered): their
        deliveries send the rest; the job is done only when every destination accepted all of it.
        """
        now = time.time()
        with self._transaction() as db:
            state = JobState.DELIVERING if destinations else (JobState.HELD if hold_reason else JobState.DONE)
            db.execute("UPDATE jobs SET state = ?, reason = NULL, held = ?, refused = NULL, timings = ?, updated_at = ? "
                       "WHERE id = ?", (state, hold_reason, timings.to_json(), now, job_id))
            _add_deliveries(db, job_id, destinations, now, images_sent)

    def job_refused(self, job_id: int, reason: str, destinations: tuple[str, ...], timings: JobTimings) -> None:
        """The input guard refused the series: deliver the refusal notice, then end ``failed`` with ``reason``.

        Without destinations the job fails at once. Retrying it processes the series again (e.g. after the
        route's on_input_outside_envelope was changed).
        """
        now = time.time()
        with self._transaction() as db:
            state = JobState.DELIVERING if destinations else JobState.FAILED
            db.execute("UPDATE jobs SET state = ?, reason = ?, held = NULL, refused = ?, timings = ?, updated_at = ? "
                       "WHERE id = ?", (state, None if destinations else reason[:2000], reason[:2000],
                                        timings.to_json(), now, job_id))
            _add_deliveries(db, job_id, destinations, now)

    def job_failed(self, job_id: int, reason: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                       (JobState.FAILED, reason[:2000], time.time(), job_id))

    # --- delivering ---------------------------------------------------------------------------------

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._query("SELECT d.job_id, d.destination, d.state, d.attempts, d.next_attempt_at, d.last_error, "
                           "d.images_sent FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.state = ? "
                           "AND j.state = ? AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at",
                           (DeliveryState.PENDING, JobState.DELIVERING, now))
        return [_delivery(row) for row in rows]

    def delivery_succeeded(self, job_id: int, destination: str, detail: str = "") -> None:
        now = time.time()
        with self._transaction() as db:
            _log_delivery(db, job_id, destination, "delivered", detail, now)
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = NULL, "
                       "updated_at = ? WHERE job_id = ? AND destination = ?", (DeliveryState.DONE, now, job_id, destination))
            pending = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id = ? AND state != ?",
                                 (job_id, DeliveryState.DONE)).fetchone()[0]
            if pending == 0:  # only a job still delivering finishes: a dismissal meanwhile stays a dismissal
                # A refused job (no sCT, only its notice was sent) ends failed with the guard's reason.
                db.execute("UPDATE jobs SET state = CASE WHEN refused IS NOT NULL THEN :failed WHEN held IS NULL "
                           "THEN :done ELSE :held END, reason = refused, updated_at = :now WHERE id = :job "
                           "AND state = :delivering",
                           {"failed": JobState.FAILED, "done": JobState.DONE, "held": JobState.HELD, "now": now,
                            "job": job_id, "delivering": JobState.DELIVERING})

    def delivery_failed(self, job_id: int, destination: str, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` means no attempts are left."""
        now = time.time()
        with self._transaction() as db:
            _log_delivery(db, job_id, destination, "failed" if next_attempt_at is None else "will retry", error, now)
            if next_attempt_at is None:
                # An attempt that was under way when the job was dismissed leaves the dismissal (and the
                # cancelled delivery) as the person left them.
                db.execute("UPDATE deliveries SET state = CASE WHEN state = ? THEN state ELSE ? END, "
                           "attempts = attempts + 1, last_error = ?, updated_at = ? WHERE job_id = ? "
                           "AND destination = ?",
                           (DeliveryState.CANCELLED, DeliveryState.FAILED, error, now, job_id, destination))
                db.execute("UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ? AND state != ?",
                           (JobState.FAILED, f"delivery to {destination} failed: {error}"[:2000], now, job_id,
                            JobState.DISMISSED))
            else:
                db.execute("UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, "
                           "updated_at = ? WHERE job_id = ? AND destination = ?",
                           (error, next_attempt_at, now, job_id, destination))

    def log_delivery(self, job_id: int, destination: str, outcome: str, detail: str = "") -> None:
        """Add a line to a job's delivery log that is not a delivery attempt (images sent ahead, say)."""
        with self._transaction() as db:
            _log_delivery(db, job_id, destination, outcome, detail, time.time())

    def delivery_log(self, job_id: int) -> list[tuple[float, str, str, str]]:
        """Every delivery event of a job, oldest first: (time, destination, outcome, detail)."""
        return [(row[0], row[1], row[2], row[3]) for row in self._query(
            "SELECT at, destination, outcome, detail FROM delivery_log WHERE job_id = ? ORDER BY id", (job_id,))]

    # --- the audit trail -----------------------------------------------------------------------------

    def audit(self, actor: Actor, action: str, job_id: int | None = None, comment: str = "", outcome: str = "",
              now: float | None = None) -> None:
        """Append one entry to the audit trail (SQLite triggers refuse any change or deletion of an entry)."""
        with self._transaction() as db:
            _append_audit(db, actor, action, job_id, comment, outcome, time.time() if now is None else now)

    def audit_entries(self, limit: int | None = 200, job_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first (all with ``limit=None``), or those of one job."""
        where, parameters = ("WHERE job_id = ?", (job_id,)) if job_id is not None else ("", ())
        rows = self._query(f"SELECT id, at, actor, role, action, job_id, comment, outcome FROM audit {where} "
                           "ORDER BY id DESC LIMIT ?", (*parameters, -1 if limit is None else limit))
        return [AuditEntry(*row) for row in rows]

    def retry_job(self, job_id: int, actor: Actor | None = None) -> JobState:
        """Put a failed job back: re-deliver when its outputs exist, otherwise process again.

        Returns the new state. Raises SctNodeError for an unknown or unfailed job.
        """
        job = self.job(job_id)
        if job.state != JobState.FAILED:
            raise SctNodeError(f"job {job_id} is {job.state}, not failed; only failed jobs can be retried")
        later = self._query("SELECT id, state FROM jobs WHERE series_uid = ? AND generation > ? "
                            "AND state IN (?, ?, ?) ORDER BY id DESC LIMIT 1",
                            (job.series_uid, job.generation, *_SUPERSEDING))
        if later:  # its sCT has the same UIDs as the newer one: delivering it would replace newer with older
            raise SctNodeError(f"job {job_id} is superseded by job {later[0][0]} ({later[0][1]}) of a later generation "
                               f"of the same series; retrying it would replace the newer sCT at the destination. "
                               f"`sct-node dismiss {job_id} --comment ...` closes it")
        now = time.time()
        with self._transaction() as db:
            failed = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id = ? AND state = ?",
                                (job_id, DeliveryState.FAILED)).fetchone()[0]
            state = JobState.DELIVERING if failed else JobState.COMPLETE
            # A person retrying after a failure gets everything sent again, the images sent ahead too.
            db.execute("UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, updated_at = ?, "
                       "images_sent = 0 WHERE job_id = ? AND state = ?",
                       (DeliveryState.PENDING, now, now, job_id, DeliveryState.FAILED))
            db.execute("UPDATE jobs SET state = ?, reason = NULL, updated_at = ? WHERE id = ?", (state, now, job_id))
            if actor is not None:
                _append_audit(db, actor, "retry", job_id, "", state, now)
        return state

    def release_job(self, job_id: int, actor: Actor | None = None, comment: str = "") -> JobState:
        """A held job's outputs are complete again (moved back by the caller): deliver all of them.

        Returns the new state. Raises SctNodeError for an unknown job or one that is not held.
        """
        job = self.job(job_id)
        if job.state != JobState.HELD:
            raise SctNodeError(f"job {job_id} is {job.state}, not held; only held jobs can be released")
        now = time.time()
        with self._transaction() as db:
            count = db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id = ?", (job_id,)).fetchone()[0]
            db.execute("UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, last_error = NULL, "
                       "updated_at = ?, images_sent = 0 WHERE job_id = ?", (DeliveryState.PENDING, now, now, job_id))
            state = JobState.DELIVERING if count else JobState.DONE
            db.execute("UPDATE jobs SET state = ?, reason = NULL, held = NULL, updated_at = ? WHERE id = ?",
                       (state, now, job_id))
            if actor is not None:
                _append_audit(db, actor, "release", job_id, comment, state, now)
        return state

    def dismiss_job(self, job_id: int, comment: str, now: float | None = None, actor: Actor | None = None) -> Job:
        """A person gives up on a failed or held job: it ends ``dismissed``, keeping its row, reason and outputs.

        Deliveries still pending are cancelled, so the dispatcher never sends them; delivered and failed
        ones stay as they were (history). The cleaner then removes the job's inputs and outputs after
        ``done_retention_h``, as for a done job. The check and the change are one transaction, so a
        ``retry`` or ``release`` from another process cannot slip in between.

        Parameters
        ----------
        comment : str
            Why (required: whoever reads the history must learn why the job was given up). Kept as given,
            up to 2000 characters; never logged, since it is free text.

        Returns the dismissed job. Raises SctNodeError for an empty comment, an unknown job, or a job that
        is neither failed nor held.
        """
        comment = comment.strip()
        if not comment:
            raise SctNodeError(f"job {job_id}: a comment saying why it is dismissed is required; found none")
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise SctNodeError(f"no job {job_id} in {self.path}; `sct-node status` lists the jobs")
            if row[0] not in (JobState.FAILED, JobState.HELD):
                raise SctNodeError(f"job {job_id} is {row[0]}; only failed or held jobs can be dismissed")
            db.execute("UPDATE jobs SET state = ?, dismissed_comment = ?, dismissed_at = ?, updated_at = ? "
                       "WHERE id = ?", (JobState.DISMISSED, comment[:2000], now, now, job_id))
            db.execute("UPDATE deliveries SET state = ?, updated_at = ? WHERE job_id = ? AND state = ?",
                       (DeliveryState.CANCELLED, now, job_id, DeliveryState.PENDING))
            if actor is not None:
                _append_audit(db, actor, "dismiss", job_id, comment, JobState.DISMISSED, now)
        return self.job(job_id)

    # --- reading ------------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise SctNodeError(f"no job {job_id}")
        return _job(rows[0])

    def jobs(self, limit: int = 50) -> list[Job]:
        return [_job(row) for row in self._query(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?",
                                                 (limit,))]

    def series(self, limit: int = 50) -> list[SeriesRecord]:
        return [_series(row) for row in self._query("SELECT * FROM series ORDER BY updated_at DESC LIMIT ?", (limit,))]

    def series_status(self, limit: int = 50) -> list[SeriesStatus]:
        """Recent series generations with their job (the newest, should there be several), newest first.

        What `sct-node status` shows: a generation's own state stops at ``queued`` when its job is made;
        what happened next is the job's state.
        """
        rows = self._query(
            "SELECT s.*, j.id, j.state FROM series s LEFT JOIN jobs j ON j.id = ("
            "    SELECT MAX(k.id) FROM jobs k WHERE k.series_uid = s.series_uid AND k.generation = s.generation) "
            "ORDER BY s.updated_at DESC LIMIT ?", (limit,))
        width = len(fields(SeriesRecord))
        return [SeriesStatus(_series(row[:width]), row[width], None if row[width + 1] is None else JobState(row[width + 1]))
                for row in rows]

    def deliveries(self, job_id: int) -> list[Delivery]:
        rows = self._query("SELECT job_id, destination, state, attempts, next_attempt_at, last_error, images_sent "
                           "FROM deliveries WHERE job_id = ? ORDER BY destination", (job_id,))
        return [_delivery(row) for row in rows]

    def job_counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (states without jobs left out)."""
        return {JobState(state): count for state, count in
                self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def instance_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM instances")[0][0])

    # --- cleaning -----------------------------------------------------------------------------------

    def purgeable_series(self, done_before: float, unrouted_before: float) -> list[str]:
        """Series whose every generation is finished long enough ago (the module docstring says when).

        A generation is finished when it is unrouted since ``unrouted_before`` or earlier, or when its job
        is settled (:data:`_SETTLED`: done, dismissed or superseded, all since ``done_before`` or earlier);
        purged generations do not count, and a series needs one generation that is not purged yet.
        """
        rows = self._query(
            "SELECT s.series_uid FROM series s GROUP BY s.series_uid HAVING "
            "SUM(CASE WHEN s.state = :purged THEN 0 "
            "         WHEN s.state = :unrouted AND s.updated_at <= :unrouted_before THEN 0 "
            "         WHEN s.state = :queued AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid "
            f"              AND j.generation = s.generation AND NOT {_SETTLED}) THEN 0 "
            "         ELSE 1 END) = 0 "
            "AND SUM(CASE WHEN s.state = :purged THEN 0 ELSE 1 END) > 0",
            {"done_before": done_before, "unrouted_before": unrouted_before, "purged": SeriesState.PURGED,
             "unrouted": SeriesState.UNROUTED, "queued": SeriesState.QUEUED})
        return [row[0] for row in rows]

    def settled_jobs(self, done_before: float) -> list[Job]:
        """Jobs whose outputs have outlived their retention: done, dismissed or superseded (see :data:`_SETTLED`)."""
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE {_SETTLED} ORDER BY id",
                           {"done_before": done_before})
        return [_job(row) for row in rows]

    def purge_series(self, series_uid: str) -> list[Path]:
        """Forget a finished series' instances; returns their files (to delete after the commit)."""
        with self._transaction() as db:
            paths = [Path(r[0]) for r in db.execute("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))]
            db.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            db.execute("UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ?",
                       (SeriesState.PURGED, time.time(), series_uid))
        return paths


#: The jobs columns in :class:`Job`'s order, named (a migrated database may hold them in another order).
_JOB_COLUMNS = ("id, series_uid, generation, route, model, state, reason, output_dir, created_at, updated_at, timings, "
                "held, dismissed_comment, dismissed_at, refused, completed_by")

#: (table, [(column, type)]): columns added since the first release, for databases made before them.
_ADDED_COLUMNS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("jobs", (("held", "TEXT"), ("dismissed_comment", "TEXT"), ("dismissed_at", "REAL"), ("refused", "TEXT"),
              ("completed_by", "TEXT"))),
    ("instances", (("association", "TEXT"),)),
    ("series", (("association", "TEXT"), ("single_association", "INTEGER NOT NULL DEFAULT 1"),
                ("released_at", "REAL"), ("expected_instances", "INTEGER"), ("acquisition", "TEXT"))),
    ("deliveries", (("images_sent", "INTEGER NOT NULL DEFAULT 0"),)),
)

#: SQL: job ``j`` needs nothing any more, and has not for ``done_retention_h`` (``:done_before``): it is done or
#: dismissed, or it is failed or held and superseded by the job of a later generation of the same series that is
#: done, held or dismissed (a later job still running, or failed too, does not supersede: it may be the one to
#: retry). Both the job and the superseding job must be older than the retention.
_SETTLED = f"""(j.updated_at <= :done_before AND (
    j.state IN ('{JobState.DONE}', '{JobState.DISMISSED}')
    OR (j.state IN ('{JobState.FAILED}', '{JobState.HELD}') AND EXISTS (
        SELECT 1 FROM jobs later WHERE later.series_uid = j.series_uid AND later.generation > j.generation
        AND later.state IN ('{JobState.DONE}', '{JobState.HELD}', '{JobState.DISMISSED}')
        AND later.updated_at <= :done_before))))"""

#: The states of a later generation's job that supersede a failed or held job of the same series.
_SUPERSEDING = (JobState.DONE, JobState.HELD, JobState.DISMISSED)


def _instance(row: tuple[Any, ...]) -> InstanceRecord:
    return InstanceRecord(row[0], row[1], row[2], Path(row[3]), *row[4:])


def _series(row: tuple[Any, ...]) -> SeriesRecord:
    values = list(row)
    values[2] = SeriesState(values[2])
    if len(values) > 14:
        values[14] = bool(values[14])  # single_association
    return SeriesRecord(*values)


def _job(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[5] = JobState(values[5])
    values[7] = Path(values[7]) if values[7] else None
    values[10] = JobTimings.from_json(values[10]) if values[10] else None
    return Job(*values)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    return Delivery(row[0], row[1], DeliveryState(row[2]), row[3], row[4], row[5], bool(row[6]))


def _log_delivery(db: sqlite3.Connection, job_id: int, destination: str, outcome: str, detail: str,
                  now: float) -> None:
    db.execute("INSERT INTO delivery_log (job_id, destination, at, outcome, detail) VALUES (?, ?, ?, ?, ?)",
               (job_id, destination, now, outcome, detail[:1000]))


def _append_audit(db: sqlite3.Connection, actor: Actor, action: str, job_id: int | None, comment: str,
                  outcome: str, now: float) -> None:
    db.execute("INSERT INTO audit (at, actor, role, action, job_id, comment, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (now, actor.name[:200], actor.role, action, job_id, comment[:2000], str(outcome)[:500]))


def _add_deliveries(db: sqlite3.Connection, job_id: int, destinations: tuple[str, ...], now: float,
                    images_sent: tuple[str, ...] = ()) -> None:
    """One pending delivery per destination, due now (replacing any earlier row of the job)."""
    for name in destinations:
        db.execute("INSERT OR REPLACE INTO deliveries (job_id, destination, state, attempts, next_attempt_at, "
                   "last_error, updated_at, images_sent) VALUES (?, ?, ?, 0, ?, NULL, ?, ?)",
                   (job_id, name, DeliveryState.PENDING, now, now, int(name in images_sent)))
