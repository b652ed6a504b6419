"""Series generations and their instances: receiving, completion, status, and the cleaner's forgetting."""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

from sct_node.node.state.base import StoreBase
from sct_node.node.state.jobs import SETTLED
from sct_node.node.state.records import (
    InstanceRecord,
    JobState,
    SeriesRecord,
    SeriesState,
    SeriesStatus,
    instance_from_row,
    series_from_row,
)

__all__ = ["SeriesStore"]


class SeriesStore(StoreBase):
    """The series' and instances' part of :class:`sct_node.node.state.StateStore`."""

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
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, TRUE, NULL, ?, ?)",
                    (series_uid, generation, SeriesState.RECEIVING, study_uid, modality, description, image_type,
                     body_part, calling_ae, now, now, now, association, expected, acquisition))
            db.execute("INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, path, calling_ae, "
                       "received_at, generation, frame_of_reference_uid, association) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        return [series_from_row(row) for row in rows]

    def series_instance_count(self, series_uid: str, up_to_generation: int) -> int:
        """How many instances of a series were received up to (and including) a generation."""
        return int(self._query("SELECT COUNT(*) FROM instances WHERE series_uid = ? AND generation <= ?",
                               (series_uid, up_to_generation))[0][0])

    def quiet_series(self, quiet_period_s: float, now: float | None = None) -> list[SeriesRecord]:
        """Series generations still receiving whose last instance is older than the quiet period."""
        now = time.time() if now is None else now
        rows = self._query("SELECT * FROM series WHERE state = ? AND last_received_at <= ? "
                           "ORDER BY last_received_at", (SeriesState.RECEIVING, now - quiet_period_s))
        return [series_from_row(row) for row in rows]

    def series_instances(self, series_uid: str, up_to_generation: int) -> list[InstanceRecord]:
        """Every instance of a series received up to (and including) a generation."""
        rows = self._query("SELECT * FROM instances WHERE series_uid = ? AND generation <= ? "
                           "ORDER BY received_at", (series_uid, up_to_generation))
        return [instance_from_row(row) for row in rows]

    def instances_in_frame(self, sop_class_uids: tuple[str, ...], frame_of_reference_uid: str) -> list[InstanceRecord]:
        """Stored instances of some SOP classes in one frame of reference (QA reference data), oldest first.

        An RT Structure Set's frame is the one it references (recorded at receipt).
        """
        marks = ", ".join("?" for _ in sop_class_uids)
        rows = self._query(f"SELECT * FROM instances WHERE sop_class_uid IN ({marks}) AND frame_of_reference_uid = ? "
                           "ORDER BY received_at", (*sop_class_uids, frame_of_reference_uid))
        return [instance_from_row(row) for row in rows]

    def mark_unrouted(self, series: SeriesRecord) -> None:
        with self._transaction() as db:
            db.execute("UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ? AND generation = ? "
                       "AND state = ?", (SeriesState.UNROUTED, time.time(), series.series_uid, series.generation,
                                         SeriesState.RECEIVING))

    # --- reading ------------------------------------------------------------------------------------

    def series(self, limit: int = 50) -> list[SeriesRecord]:
        return [series_from_row(row)
                for row in self._query("SELECT * FROM series ORDER BY updated_at DESC LIMIT ?", (limit,))]

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
        return [SeriesStatus(series_from_row(row[:width]), row[width],
                             None if row[width + 1] is None else JobState(row[width + 1])) for row in rows]

    def instance_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM instances")[0][0])

    # --- cleaning -----------------------------------------------------------------------------------

    def purgeable_series(self, done_before: float, unrouted_before: float) -> list[str]:
        """Series whose every generation is finished long enough ago (the package docstring says when).

        A generation is finished when it is unrouted since ``unrouted_before`` or earlier, or when its job
        is settled (:data:`sct_node.node.state.jobs.SETTLED`: done, dismissed or superseded, all since
        ``done_before`` or earlier); purged generations do not count, and a series needs one generation that
        is not purged yet.
        """
        rows = self._query(
            "SELECT s.series_uid FROM series s GROUP BY s.series_uid HAVING "
            "SUM(CASE WHEN s.state = :purged THEN 0 "
            "         WHEN s.state = :unrouted AND s.updated_at <= :unrouted_before THEN 0 "
            "         WHEN s.state = :queued AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid "
            f"              AND j.generation = s.generation AND NOT {SETTLED}) THEN 0 "
            "         ELSE 1 END) = 0 "
            "AND SUM(CASE WHEN s.state = :purged THEN 0 ELSE 1 END) > 0",
            {"done_before": done_before, "unrouted_before": unrouted_before, "purged": SeriesState.PURGED,
             "unrouted": SeriesState.UNROUTED, "queued": SeriesState.QUEUED})
        return [row[0] for row in rows]

    def purge_series(self, series_uid: str) -> list[Path]:
        """Forget a finished series' instances; returns their files (to delete after the commit)."""
        with self._transaction() as db:
            paths = [Path(r[0]) for r in db.execute("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))]
            db.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            db.execute("UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ?",
                       (SeriesState.PURGED, time.time(), series_uid))
        return paths
