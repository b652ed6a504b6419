"""Fixtures shared by the node tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throw-away CA, a server certificate and a client certificate made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make test certificates")
    folder = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=sct-node test CA")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=sct-node test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2")
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/sct_node/postgres_helpers.py), or a skip saying why not."""
    from tests.sct_node.postgres_helpers import postgres_server, why_no_postgres

    reason = why_no_postgres()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request, tmp_path: Path) -> Path | str:
    """Where a StateStore under test lives: a fresh SQLite file, or a fresh database on the test PostgreSQL.

    Tests of the state machine take this instead of a file, so that both backends pass the same tests.
    """
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    return request.getfixturevalue("postgres").new_database()
