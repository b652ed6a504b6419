"""The two databases the state lives in, behind one small interface: SQLite (embedded) and PostgreSQL (cluster).

Every statement of :mod:`sct_node.node.state` is written once, in SQLite's dialect with ``?`` and ``:name``
parameters; :class:`PostgresBackend` rewrites what PostgreSQL spells differently (:func:`postgres_sql`), so
the dialect differences live here and nowhere else:

========================  =================================  ==============================================
                          SQLite                             PostgreSQL (psycopg 3)
========================  =================================  ==============================================
parameters                ``?``, ``:name``                   ``%s``, ``%(name)s`` (a literal ``%`` doubled)
null-safe equality        ``a IS ?``                         ``a IS NOT DISTINCT FROM %s``
new row's key             ``cursor.lastrowid``               ``INSERT ... RETURNING id``
column types              :mod:`.schema`                     :mod:`.schema`
one writer at a time      ``BEGIN IMMEDIATE``                ``BEGIN`` + ``pg_advisory_xact_lock``
claiming a row            (the writer lock)                  the lock + ``FOR UPDATE SKIP LOCKED``
========================  =================================  ==============================================

Why one writer at a time on PostgreSQL too: every transition of the state machine reads, checks, then
writes (a duplicate instance, a series that changed since the router saw it, a job that is no longer
failed when `retry` comes). SQLite makes each such transaction a serial one by taking the write lock at
``BEGIN IMMEDIATE``; the PostgreSQL backend takes one transaction-scoped advisory lock per database at
``BEGIN``, so every write transaction still sees every earlier commit and none interleaves, with exactly
SQLite's semantics and no serialization failures to retry. Readers take no lock (MVCC, like WAL). The node
writes a few rows per instance and per job, far below what one PostgreSQL commits in series. Claiming a
job also locks its row (``FOR UPDATE SKIP LOCKED``), so a claim stays exclusive even for a writer that
skipped the advisory lock.

References
----------
SQLite, "BEGIN TRANSACTION", "Write-Ahead Logging", "PRAGMA synchronous" (sqlite.org);
PostgreSQL 15 documentation, "Advisory Locks" (13.3.5), "The Locking Clause" (SELECT ... FOR UPDATE SKIP
LOCKED), "Transaction Isolation" (13.2);
psycopg 3 documentation, "Passing parameters to SQL queries", "Transactions management".
"""

from __future__ import annotations

import functools
import re
import sqlite3
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from sct_node.errors import SctNodeError
from sct_node.node.state.schema import ADDED_COLUMNS, TYPES, tables

__all__ = ["Backend", "Cursor", "PostgresBackend", "SqliteBackend", "database_errors", "is_database_url",
           "open_backend", "postgres_sql", "redacted_url"]

Parameters = Sequence[Any] | dict[str, Any]

#: The advisory lock every write transaction takes on PostgreSQL (one per database: two nodes' databases on
#: one server do not wait for each other). Any 64-bit number; this one spells "sct-node".
_WRITER_LOCK = 0x7363742D6E6F6465


class Cursor(Protocol):
    """What both drivers' cursors give the state code: rows, and how many rows a change touched."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Backend(ABC):
    """One open connection to the state database; the caller (StateStore) serializes its use with a lock.

    Attributes
    ----------
    dialect : str
        ``sqlite`` or ``postgresql`` (the keys of :data:`sct_node.node.state.schema.TYPES`).
    where : str
        The database as messages name it: the file, or the URL without its password.
    row_lock : str
        What a ``SELECT`` that claims rows ends with: empty on SQLite, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL.
    """

    dialect: str
    where: str
    row_lock: str = ""

    @abstractmethod
    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        """Run one statement written in SQLite's dialect."""

    @abstractmethod
    def insert(self, sql: str, parameters: Parameters = ()) -> int:
        """Run one ``INSERT`` into a table with an ``id`` key; returns the new row's id."""

    @abstractmethod
    def begin(self) -> None:
        """Start a write transaction, holding the database's one writer lock until commit or rollback."""

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    @abstractmethod
    def close(self) -> None: ...


class SqliteBackend(Backend):
    """The embedded node's database file: WAL, ``synchronous=FULL`` (a commit survives power loss).

    Parameters
    ----------
    path : pathlib.Path
        Database file (created with its folder); an existing one made by an earlier release is migrated.

    Raises
    ------
    SctNodeError
        If the file cannot be opened or made.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                               timeout=30.0)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(tables(self.dialect))
            for table, added in ADDED_COLUMNS:
                columns = {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}
                for name, kind in added:
                    if name not in columns:
                        self._connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} "
                                                 f"{kind.format(**TYPES[self.dialect])}")
        except (sqlite3.Error, OSError) as error:  # OSError: the folder cannot be made (a file is in the way)
            raise SctNodeError(f"cannot open the state database {self.path}: {error}") from error

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        return self._connection.execute(sql, parameters)

    def insert(self, sql: str, parameters: Parameters = ()) -> int:
        cursor = self._connection.execute(sql, parameters)
        if cursor.lastrowid is None:  # an INSERT into a rowid table always sets it
            raise SctNodeError(f"{self.where}: an insert gave no row id ({sql[:60]}...)")
        return int(cursor.lastrowid)

    def begin(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self._connection.close()


class PostgresBackend(Backend):
    """A PostgreSQL database shared by a cluster's receivers, workers and dispatchers (psycopg 3).

    The connection is in autocommit mode: a read is one statement that sees the last commit, and a write
    transaction is opened by :meth:`begin` with the writer lock (the module docstring says why). A
    connection the server dropped (a restart, a failover) is opened again before the next statement that
    starts outside a transaction; one dropped inside a transaction fails that transaction, which the caller
    redoes as after any crash.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user:password@host:port/database`` (query parameters such as
        ``sslmode=verify-full`` pass through). The schema is made when missing, under the writer lock, so
        several processes may start at once.

    Raises
    ------
    SctNodeError
        If psycopg is not installed (``pip install 'sct-node[cluster]'``) or the database cannot be reached.
    """

    dialect = "postgresql"
    row_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted_url(url)
        try:
            import psycopg
        except ImportError as error:
            raise SctNodeError(f"the state database {self.where} is PostgreSQL, which needs psycopg 3: "
                               f"pip install 'sct-node[cluster]'") from error
        self._psycopg = psycopg
        #: Inside a write transaction a dropped connection must fail it, never be replaced half-way.
        self._in_transaction = False
        self._connection = self._connect()
        try:
            self.begin()
            try:
                self._connection.execute(tables(self.dialect))
                for table, added in ADDED_COLUMNS:
                    for name, kind in added:
                        self._connection.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} "
                                                 f"{kind.format(**TYPES[self.dialect])}")
            except BaseException:
                self.rollback()
                raise
            self.commit()
        except psycopg.Error as error:
            self._connection.close()
            raise SctNodeError(f"cannot make the state schema in {self.where}: {error}") from error

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=30,
                                         application_name="sct-node")
        except self._psycopg.Error as error:
            raise SctNodeError(f"cannot open the state database {self.where}: {error}") from error

    def execute(self, sql: str, parameters: Parameters = ()) -> Cursor:
        if self._connection.broken and not self._in_transaction:
            self._connection = self._connect()
        # Parameters always go along (an empty list too), so that psycopg reads the placeholders and %%.
        return self._connection.execute(postgres_sql(sql), _plain(parameters))

    def insert(self, sql: str, parameters: Parameters = ()) -> int:
        row = self.execute(sql + " RETURNING id", parameters).fetchone()
        return int(row[0])

    def begin(self) -> None:
        if self._connection.broken:
            self._connection = self._connect()
        self._connection.execute("BEGIN")
        self._in_transaction = True
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITER_LOCK,))

    def commit(self) -> None:
        try:
            self._connection.execute("COMMIT")
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        try:
            if not self._connection.broken:
                self._connection.execute("ROLLBACK")
        finally:
            self._in_transaction = False

    def close(self) -> None:
        self._connection.close()


def _plain(parameters: Parameters) -> Parameters:
    """Parameters with the state enums as plain strings (what SQLite stores; psycopg would dump them by type)."""
    if isinstance(parameters, dict):
        return {key: str(value) if isinstance(value, str) else value for key, value in parameters.items()}
    return [str(value) if isinstance(value, str) else value for value in parameters]


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=512)
def postgres_sql(sql: str) -> str:
    """A statement in SQLite's dialect as psycopg sends it to PostgreSQL (the module docstring's table).

    The state code's statements hold no ``?`` or ``:word`` inside string literals, so plain rewriting is safe.
    """
    sql = sql.replace("%", "%%")
    sql = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", sql)
    sql = _NAMED.sub(r"%(\1)s", sql)
    return sql.replace("?", "%s")


def is_database_url(location: object) -> bool:
    """Whether a state location is a PostgreSQL URL (``postgresql://`` or ``postgres://``) rather than a file."""
    return isinstance(location, str) and location.split("://", 1)[0] in ("postgresql", "postgres")


def redacted_url(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def open_backend(location: Path | str) -> Backend:
    """The backend for a state location: a PostgreSQL URL, or else a SQLite file."""
    if is_database_url(location):
        return PostgresBackend(str(location))
    return SqliteBackend(Path(location))


def database_errors() -> tuple[type[Exception], ...]:
    """The drivers' errors a state call may raise (``except database_errors():``), psycopg's once it is loaded.

    A process that never opened a PostgreSQL database has not imported psycopg, and cannot get its errors.
    """
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, psycopg.Error) if psycopg is not None else (sqlite3.Error,)
