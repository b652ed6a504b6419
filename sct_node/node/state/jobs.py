"""Jobs: made from complete series, claimed by exactly one worker, processed, retried, released or dismissed.

A claim is fenced. Each claim adds one to the job's ``claims``, and a worker's result (processed, refused,
failed) counts only while the job is still ``processing`` under the claim that worker got. A cluster's
worker claims the job its queue message names for a lease it renews (:meth:`JobStore.claim_job_by_id`,
:meth:`JobStore.renew_lease`); a redelivered message for a job held under a live lease, or already past
processing, claims nothing. A job whose lease ran out may go to a second worker; whatever the first one
reports afterwards is refused, and the job's deliveries are made once.

References
----------
M. Kleppmann, "Designing Data-Intensive Applications", O'Reilly 2017, ch. 8 ("fencing tokens").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sct_node.errors import SctNodeError
from sct_node.node.state.audit import append_audit
from sct_node.node.state.backend import Backend
from sct_node.node.state.base import StoreBase
from sct_node.node.state.deliveries import add_deliveries
from sct_node.node.state.records import (
    Actor,
    DeliveryState,
    Job,
    JobState,
    JobTimings,
    SeriesRecord,
    SeriesState,
    job_from_row,
)

__all__ = ["JOB_COLUMNS", "SETTLED", "SUPERSEDING", "JobStore"]

logger = logging.getLogger(__name__)

#: The jobs columns in :class:`Job`'s order, named (a migrated database may hold them in another order).
JOB_COLUMNS = ("id, series_uid, generation, route, model, state, reason, output_dir, created_at, updated_at, timings, "
               "held, dismissed_comment, dismissed_at, refused, completed_by, claims, claimed_by, lease_until")

#: SQL: job ``j`` needs nothing any more, and has not for ``done_retention_h`` (``:done_before``): it is done or
#: dismissed, or it is failed or held and superseded by the job of a later generation of the same series that is
#: done, held or dismissed (a later job still running, or failed too, does not supersede: it may be the one to
#: retry). Both the job and the superseding job must be older than the retention.
SETTLED = f"""(j.updated_at <= :done_before AND (
    j.state IN ('{JobState.DONE}', '{JobState.DISMISSED}')
    OR (j.state IN ('{JobState.FAILED}', '{JobState.HELD}') AND EXISTS (
        SELECT 1 FROM jobs later WHERE later.series_uid = j.series_uid AND later.generation > j.generation
        AND later.state IN ('{JobState.DONE}', '{JobState.HELD}', '{JobState.DISMISSED}')
        AND later.updated_at <= :done_before))))"""

#: The states of a later generation's job that supersede a failed or held job of the same series.
SUPERSEDING = (JobState.DONE, JobState.HELD, JobState.DISMISSED)


class JobStore(StoreBase):
    """The jobs' part of :class:`sct_node.node.state.StateStore`."""

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
            job_id = db.insert(
                "INSERT INTO jobs (series_uid, generation, route, model, state, created_at, updated_at, completed_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (series.series_uid, series.generation, route, model, JobState.COMPLETE, now, now, completed_by))
            db.execute("UPDATE jobs SET output_dir = ? WHERE id = ?", (str(output_root / f"job-{job_id}"), job_id))
        return job_id

    # --- processing ---------------------------------------------------------------------------------

    def recover(self) -> int:
        """After a restart: jobs interrupted in processing are processed again. Returns how many.

        Only for a node whose workers all run in this process (the embedded node at start): in a cluster a
        job in ``processing`` may be another host's, and it is taken again only once its lease ran out
        (:meth:`claim_job_by_id`).
        """
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                              (JobState.COMPLETE, time.time(), JobState.PROCESSING)).rowcount

    def claim_job(self) -> Job | None:
        """Take the oldest complete job for processing (atomically: of workers racing for it, exactly one gets it).

        The embedded node's workers claim this way, without a lease: a job they leave in ``processing`` (the
        node stopped) is put back by :meth:`recover` at the next start. Returns the claimed job, its
        :attr:`Job.claims` the claim to report the result with; None when no job is waiting.
        """
        with self._transaction() as db:
            row = db.execute(f"SELECT id FROM jobs WHERE state = ? ORDER BY id LIMIT 1{db.row_lock}",
                             (JobState.COMPLETE,)).fetchone()
            if row is None:
                return None
            return _claim(db, row[0], None, None, time.time())

    def claim_job_by_id(self, job_id: int, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the job a queue message names, for ``lease_s``, unless another worker holds it or it is finished.

        A cluster's worker claims this way (:mod:`sct_node.node.cluster`). The job is taken when it is
        ``complete``, or when it is ``processing`` under a lease that ran out (its worker died, or lost the
        database for longer than the lease): the earlier claim is then stale and its result is refused
        (:meth:`job_processed` with ``claim``). Anything else (held by a live lease, past processing, unknown)
        gives None: a redelivered message does nothing. The worker keeps the job with :meth:`renew_lease`.

        Parameters
        ----------
        worker : str
            Who claims (host, process, a random suffix): kept with the job, checked by :meth:`renew_lease`.
        lease_s : float
            How long the claim holds without renewal (seconds, > 0).

        Raises
        ------
        SctNodeError
            If ``worker`` is empty or ``lease_s`` is not positive.
        """
        if not worker:
            raise SctNodeError(f"claim_job_by_id: job {job_id}: worker must name the claimer; found {worker!r}")
        if not lease_s > 0:
            raise SctNodeError(f"claim_job_by_id: job {job_id}: lease_s must be > 0 seconds; found {lease_s}")
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(f"SELECT id FROM jobs WHERE id = ? AND (state = ? OR (state = ? AND lease_until IS NOT "
                             f"NULL AND lease_until < ?)){db.row_lock}",
                             (job_id, JobState.COMPLETE, JobState.PROCESSING, now)).fetchone()
            if row is None:
                return None
            return _claim(db, job_id, worker, now + lease_s, now)

    def renew_lease(self, job_id: int, worker: str, lease_s: float, now: float | None = None) -> bool:
        """Extend ``worker``'s claim on a job it is processing by ``lease_s`` from now.

        False when the job is no longer this worker's to process: it finished, failed, or was taken by another
        worker after the lease ran out (the worker's result will then be refused).
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ? AND claimed_by = ?",
                              (now + lease_s, job_id, JobState.PROCESSING, worker)).rowcount == 1

    def jobs_to_queue(self, now: float | None = None) -> list[int]:
        """Jobs a cluster's queue must hold, oldest first: complete ones, and those whose lease ran out.

        The database is the source of truth; a receiver puts these on the queue again at start and now and
        then (:meth:`sct_node.node.cluster.JobQueue.requeue_unfinished`), so a queue that lost its messages
        loses no job. A job processing without a lease (an embedded node's) is never listed.
        """
        now = time.time() if now is None else now
        rows = self._query("SELECT id FROM jobs WHERE state = ? OR (state = ? AND lease_until IS NOT NULL "
                           "AND lease_until < ?) ORDER BY id", (JobState.COMPLETE, JobState.PROCESSING, now))
        return [int(row[0]) for row in rows]

    def job_processed(self, job_id: int, destinations: tuple[str, ...], timings: JobTimings,
                      hold_reason: str | None = None, images_sent: tuple[str, ...] = (),
                      claim: int | None = None) -> bool:
        """Processing finished: deliver to every destination, or finish when there are none.

        With ``hold_reason`` part of the outputs is held back: the job ends ``held`` (not ``done``) once what
        may be delivered was delivered, keeping the reason, until :meth:`release_job`. ``images_sent`` names the
        destinations that already accepted the sCT images (sent ahead while the report was rendered): their
        deliveries send the rest; the job is done only when every destination accepted all of it.

        ``claim`` (the claimed job's :attr:`Job.claims`) fences the result: it counts only while the job is
        still processing under that claim. Returns whether it counted (always, for a job without ``claim``).
        """
        now = time.time()
        with self._transaction() as db:
            state = JobState.DELIVERING if destinations else (JobState.HELD if hold_reason else JobState.DONE)
            if not _update_claimed(db, job_id, claim, "processed",
                                   "state = ?, reason = NULL, held = ?, refused = NULL, timings = ?, updated_at = ?",
                                   (state, hold_reason, timings.to_json(), now)):
                return False
            add_deliveries(db, job_id, destinations, now, images_sent)
        return True

    def job_refused(self, job_id: int, reason: str, destinations: tuple[str, ...], timings: JobTimings,
                    claim: int | None = None) -> bool:
        """The input guard refused the series: deliver the refusal notice, then end ``failed`` with ``reason``.

        Without destinations the job fails at once. Retrying it processes the series again (e.g. after the
        route's on_input_outside_envelope was changed). ``claim`` fences it as in :meth:`job_processed`.
        """
        now = time.time()
        with self._transaction() as db:
            state = JobState.DELIVERING if destinations else JobState.FAILED
            if not _update_claimed(db, job_id, claim, "refused",
                                   "state = ?, reason = ?, held = NULL, refused = ?, timings = ?, updated_at = ?",
                                   (state, None if destinations else reason[:2000], reason[:2000],
                                    timings.to_json(), now)):
                return False
            add_deliveries(db, job_id, destinations, now)
        return True

    def job_failed(self, job_id: int, reason: str, claim: int | None = None) -> bool:
        """Processing failed with ``reason`` (kept; `sct-node retry` processes again). Fenced by ``claim``."""
        with self._transaction() as db:
            return _update_claimed(db, job_id, claim, "failed", "state = ?, reason = ?, updated_at = ?",
                                   (JobState.FAILED, reason[:2000], time.time()))

    # --- a person's actions -------------------------------------------------------------------------

    def retry_job(self, job_id: int, actor: Actor | None = None) -> JobState:
        """Put a failed job back: re-deliver when its outputs exist, otherwise process again.

        Returns the new state. Raises SctNodeError for an unknown or unfailed job.
        """
        job = self.job(job_id)
        if job.state != JobState.FAILED:
            raise SctNodeError(f"job {job_id} is {job.state}, not failed; only failed jobs can be retried")
        later = self._query("SELECT id, state FROM jobs WHERE series_uid = ? AND generation > ? "
                            "AND state IN (?, ?, ?) ORDER BY id DESC LIMIT 1",
                            (job.series_uid, job.generation, *SUPERSEDING))
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
                append_audit(db, actor, "retry", job_id, "", state, now)
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
                append_audit(db, actor, "release", job_id, comment, state, now)
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
                raise SctNodeError(f"no job {job_id} in {self.where}; `sct-node status` lists the jobs")
            if row[0] not in (JobState.FAILED, JobState.HELD):
                raise SctNodeError(f"job {job_id} is {row[0]}; only failed or held jobs can be dismissed")
            db.execute("UPDATE jobs SET state = ?, dismissed_comment = ?, dismissed_at = ?, updated_at = ? "
                       "WHERE id = ?", (JobState.DISMISSED, comment[:2000], now, now, job_id))
            db.execute("UPDATE deliveries SET state = ?, updated_at = ? WHERE job_id = ? AND state = ?",
                       (DeliveryState.CANCELLED, now, job_id, DeliveryState.PENDING))
            if actor is not None:
                append_audit(db, actor, "dismiss", job_id, comment, JobState.DISMISSED, now)
        return self.job(job_id)

    # --- reading ------------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise SctNodeError(f"no job {job_id}")
        return job_from_row(rows[0])

    def jobs(self, limit: int = 50) -> list[Job]:
        return [job_from_row(row)
                for row in self._query(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def job_counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (states without jobs left out)."""
        return {JobState(state): int(count) for state, count in
                self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def settled_jobs(self, done_before: float) -> list[Job]:
        """Jobs whose outputs have outlived their retention: done, dismissed or superseded (see :data:`SETTLED`)."""
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs j WHERE {SETTLED} ORDER BY id",
                           {"done_before": done_before})
        return [job_from_row(row) for row in rows]


def _claim(db: Backend, job_id: int, worker: str | None, lease_until: float | None, now: float) -> Job:
    """Make a job ``processing`` under a new claim (one more than the last); the claimed job."""
    db.execute("UPDATE jobs SET state = ?, claims = claims + 1, claimed_by = ?, lease_until = ?, updated_at = ? "
               "WHERE id = ?", (JobState.PROCESSING, worker, lease_until, now, job_id))
    return job_from_row(db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _update_claimed(db: Backend, job_id: int, claim: int | None, what: str, assignments: str,
                    values: tuple[Any, ...]) -> bool:
    """``UPDATE jobs SET <assignments>`` for one job, fenced by a claim when one is given; whether it counted."""
    if claim is None:
        return db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id)).rowcount == 1
    if db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ? AND claims = ?",
                  (*values, job_id, JobState.PROCESSING, claim)).rowcount == 1:
        return True
    row = db.execute("SELECT state, claims FROM jobs WHERE id = ?", (job_id,)).fetchone()
    now_is = "gone" if row is None else f"{row[0]} under claim {row[1]}"
    logger.warning("job %d: the result (%s) of claim %d is refused: the job is %s now (its message was "
                   "redelivered to another worker, or a person acted on it)", job_id, what, claim, now_is)
    return False
