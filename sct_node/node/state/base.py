"""What every part of the state store shares: one backend connection, its lock, and one-transaction transitions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sct_node.node.state.backend import Backend, Parameters, SqliteBackend, open_backend

__all__ = ["StoreBase"]


class StoreBase:
    """The connection the store's parts (series, jobs, deliveries, audit) share; safe to share between threads.

    Parameters
    ----------
    location : pathlib.Path or str
        A SQLite database file (the embedded node: ``storage.spool_dir/state.sqlite3``), or a PostgreSQL URL
        (``postgresql://...``: a cluster's ``[cluster] database_url``).

    Raises
    ------
    SctNodeError
        If the database cannot be opened, or PostgreSQL is asked for without psycopg installed.
    """

    def __init__(self, location: Path | str) -> None:
        self._backend: Backend = open_backend(location)
        #: The SQLite file (None on PostgreSQL).
        self.path: Path | None = self._backend.path if isinstance(self._backend, SqliteBackend) else None
        #: The database as messages name it: the file, or the URL without its password.
        self.where = self._backend.where
        #: ``sqlite`` or ``postgresql``.
        self.dialect = self._backend.dialect
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._backend.close()

    @contextmanager
    def _transaction(self) -> Iterator[Backend]:
        """One transition: the writer lock from the first statement to the commit (rolled back on any error)."""
        with self._lock:
            self._backend.begin()
            try:
                yield self._backend
            except BaseException:
                self._backend.rollback()
                raise
            self._backend.commit()

    def _query(self, sql: str, parameters: Parameters = ()) -> list[Any]:
        """One read: the rows of a statement that sees the last commit."""
        with self._lock:
            return self._backend.execute(sql, parameters).fetchall()
