"""The append-only audit trail: who did what to which job, when, and why (the database refuses any change)."""

from __future__ import annotations

import time

from sct_node.node.state.backend import Backend
from sct_node.node.state.base import StoreBase
from sct_node.node.state.records import Actor, AuditEntry

__all__ = ["AuditStore", "append_audit"]


class AuditStore(StoreBase):
    """The audit trail's part of :class:`sct_node.node.state.StateStore`."""

    def audit(self, actor: Actor, action: str, job_id: int | None = None, comment: str = "", outcome: str = "",
              now: float | None = None) -> None:
        """Append one entry to the audit trail (database triggers refuse any change or deletion of an entry)."""
        with self._transaction() as db:
            append_audit(db, actor, action, job_id, comment, outcome, time.time() if now is None else now)

    def audit_entries(self, limit: int | None = 200, job_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first (all with ``limit=None``), or those of one job."""
        where, parameters = ("WHERE job_id = ?", (job_id,)) if job_id is not None else ("", ())
        # LIMIT -1 (SQLite's "no limit") is an error in PostgreSQL: leave the clause out instead.
        bound, limits = ("LIMIT ?", (limit,)) if limit is not None else ("", ())
        rows = self._query(f"SELECT id, at, actor, role, action, job_id, comment, outcome FROM audit {where} "
                           f"ORDER BY id DESC {bound}", (*parameters, *limits))
        return [AuditEntry(*row) for row in rows]


def append_audit(db: Backend, actor: Actor, action: str, job_id: int | None, comment: str, outcome: str,
                 now: float) -> None:
    """One entry, inside the caller's transaction (so a job action and its entry commit together)."""
    db.execute("INSERT INTO audit (at, actor, role, action, job_id, comment, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (now, actor.name[:200], actor.role, action, job_id, comment[:2000], str(outcome)[:500]))
