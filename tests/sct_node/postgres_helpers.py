"""A real PostgreSQL server for the state tests, started by the tests on a private port and data folder.

Debian's ``postgresql`` package (tests/install-system-tools.sh installs it) puts ``initdb``, ``pg_ctl`` and
``postgres`` under /usr/lib/postgresql/<version>/bin without putting them on PATH; :func:`pg_bin` finds them
there. The server runs as the current user; PostgreSQL refuses to run as root, so under root (CI
containers) it runs as ``nobody`` through ``runuser`` (util-linux), with its data and socket folders in a
fresh folder under the system's temporary folder that ``nobody`` owns. It listens on 127.0.0.1 only, on a
free port, trusts local connections (a throw-away server), and runs with ``fsync=off``: the tests check
the state machine's statements, not PostgreSQL's durability, and must stay fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.sct_node.node_helpers import free_port

__all__ = ["PostgresServer", "pg_bin", "postgres_server", "why_no_postgres"]

#: The unprivileged account the server runs as when the tests run as root.
SERVER_USER_UNDER_ROOT = "nobody"


def pg_bin(tool: str) -> Path | None:
    """A PostgreSQL server program: on PATH, or else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(tool)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / tool).exists():
            return folder / tool
    return None


def why_no_postgres() -> str | None:
    """Why the PostgreSQL tests cannot run here (None when they can)."""
    missing = [tool for tool in ("initdb", "pg_ctl", "postgres") if pg_bin(tool) is None]
    if missing:
        return (f"PostgreSQL server not installed ({', '.join(missing)} not found; tests/install-system-tools.sh "
                f"installs Debian's postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 not installed (pip install -e '.[test]' installs it)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, where PostgreSQL refuses to start, and runuser (util-linux) is missing"
    return None


@dataclass
class PostgresServer:
    """A running throw-away server: its port, and a fresh database per :meth:`new_database` call."""

    port: int
    user: str
    _count: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        self._count += 1
        name = f"state_test_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server (initdb into a fresh folder, pg_ctl start), yield it, stop it and remove its folder."""
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="sct-node-pg-"))
    data, sockets, log = folder / "data", folder / "sockets", folder / "server.log"
    sockets.mkdir()
    prefix: list[str] = []
    if as_root:
        prefix = ["runuser", "-u", SERVER_USER_UNDER_ROOT, "--"]
        shutil.chown(folder, SERVER_USER_UNDER_ROOT)
        shutil.chown(sockets, SERVER_USER_UNDER_ROOT)
        folder.chmod(0o700)
    user = "sctnode"
    port = free_port()

    def run(*command: str | Path) -> None:
        subprocess.run([*prefix, *map(str, command)], check=True, capture_output=True, timeout=120, cwd=folder)

    try:
        run(pg_bin("initdb") or "initdb", "-D", data, "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8",
            "--locale=C")
        options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off")
        run(pg_bin("pg_ctl") or "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        server = PostgresServer(port, user)
        _wait_ready(server)
        yield server
    except subprocess.CalledProcessError as error:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr.decode(errors='replace')[-2000:]}\n{tail}") \
            from error
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(pg_bin("pg_ctl") or "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60, cwd=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(server: PostgresServer, timeout_s: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
