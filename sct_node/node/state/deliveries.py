"""Deliveries (one per job and destination) and the delivery log: what was sent where, once.

A delivery's key is its job and destination (the table's primary key; a job is one generation of one
series on one route), so a job has at most one delivery per destination, whatever sends its messages
twice. Sending it is claimed (:meth:`DeliveryStore.claim_delivery`) and its success is recorded once
(:meth:`DeliveryStore.delivery_succeeded`), so that a redelivered message neither sends nor logs it again.
"""

from __future__ import annotations

import time

from sct_node.errors import SctNodeError
from sct_node.node.state.backend import Backend
from sct_node.node.state.base import StoreBase
from sct_node.node.state.records import Delivery, DeliveryState, JobState, delivery_from_row

__all__ = ["DeliveryStore", "add_deliveries", "log_delivery"]


class DeliveryStore(StoreBase):
    """The deliveries' part of :class:`sct_node.node.state.StateStore`."""

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._query("SELECT d.job_id, d.destination, d.state, d.attempts, d.next_attempt_at, d.last_error, "
                           "d.images_sent FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.state = ? "
                           "AND j.state = ? AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at",
                           (DeliveryState.PENDING, JobState.DELIVERING, now))
        return [delivery_from_row(row) for row in rows]

    def claim_delivery(self, job_id: int, destination: str, lease_s: float, now: float | None = None) -> bool:
        """Take a due delivery for one attempt, so that no other dispatcher sends it meanwhile.

        The claim moves the delivery's next attempt ``lease_s`` ahead in the same transaction that checks it
        is due: of two dispatchers that saw it due (:meth:`due_deliveries`), one gets True and sends, the
        other False. The attempt's outcome (:meth:`delivery_succeeded`, :meth:`delivery_failed`) replaces the
        lease; a dispatcher that dies mid-attempt leaves the delivery due again once the lease is over.

        Parameters
        ----------
        lease_s : float
            How long the attempt may take before another dispatcher may try (seconds, > 0): longer than
            the destination's timeout allows an attempt to last.

        Returns True when this caller holds the attempt.

        Raises
        ------
        SctNodeError
            If ``lease_s`` is not positive.
        """
        if not lease_s > 0:
            raise SctNodeError(f"claim_delivery: lease_s must be > 0 seconds; found {lease_s}")
        now = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? WHERE job_id = ? AND destination = ? "
                "AND state = ? AND next_attempt_at <= ? AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND state = ?)",
                (now + lease_s, now, job_id, destination, DeliveryState.PENDING, now, job_id,
                 JobState.DELIVERING)).rowcount == 1

    def delivery_succeeded(self, job_id: int, destination: str, detail: str = "") -> bool:
        """The destination has the job's outputs: the delivery is done, and the job once all of them are.

        Recorded once: a delivery that is already done (the same success reported again, by a redelivered
        message) changes nothing and adds no log line. Returns whether this call recorded it.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT state FROM deliveries WHERE job_id = ? AND destination = ?",
                             (job_id, destination)).fetchone()
            if row is not None and row[0] == DeliveryState.DONE:
                return False
            log_delivery(db, job_id, destination, "delivered", detail, now)
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
        return True

    def delivery_failed(self, job_id: int, destination: str, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` means no attempts are left."""
        now = time.time()
        with self._transaction() as db:
            log_delivery(db, job_id, destination, "failed" if next_attempt_at is None else "will retry", error, now)
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
            log_delivery(db, job_id, destination, outcome, detail, time.time())

    def delivery_log(self, job_id: int) -> list[tuple[float, str, str, str]]:
        """Every delivery event of a job, oldest first: (time, destination, outcome, detail)."""
        return [(row[0], row[1], row[2], row[3]) for row in self._query(
            "SELECT at, destination, outcome, detail FROM delivery_log WHERE job_id = ? ORDER BY id", (job_id,))]

    def deliveries(self, job_id: int) -> list[Delivery]:
        rows = self._query("SELECT job_id, destination, state, attempts, next_attempt_at, last_error, images_sent "
                           "FROM deliveries WHERE job_id = ? ORDER BY destination", (job_id,))
        return [delivery_from_row(row) for row in rows]


def log_delivery(db: Backend, job_id: int, destination: str, outcome: str, detail: str, now: float) -> None:
    """One line of the delivery log, inside the caller's transaction."""
    db.execute("INSERT INTO delivery_log (job_id, destination, at, outcome, detail) VALUES (?, ?, ?, ?, ?)",
               (job_id, destination, now, outcome, detail[:1000]))


def add_deliveries(db: Backend, job_id: int, destinations: tuple[str, ...], now: float,
                   images_sent: tuple[str, ...] = ()) -> None:
    """One pending delivery per destination, due now (replacing any earlier row of the job: a retry sends all).

    The (job, destination) key keeps it one row whoever calls; the caller's claim fencing
    (:meth:`sct_node.node.state.jobs.JobStore.job_processed`) keeps a stale worker from resetting a done one.
    """
    for name in destinations:
        db.execute("INSERT INTO deliveries (job_id, destination, state, attempts, next_attempt_at, last_error, "
                   "updated_at, images_sent) VALUES (?, ?, ?, 0, ?, NULL, ?, ?) "
                   "ON CONFLICT (job_id, destination) DO UPDATE SET state = excluded.state, attempts = 0, "
                   "next_attempt_at = excluded.next_attempt_at, last_error = NULL, updated_at = excluded.updated_at, "
                   "images_sent = excluded.images_sent",
                   (job_id, name, DeliveryState.PENDING, now, now, int(name in images_sent)))
