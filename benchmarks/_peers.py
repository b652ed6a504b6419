"""What the benchmark scripts share: loopback ports, finding dcmtk, starting and ending peer processes.

Imported by the scripts in this folder (``python benchmarks/NAME.py`` puts the folder on ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

__all__ = ["PeerUnavailable", "dcmtk_tool", "end_process", "free_port", "log_tail", "port_open", "wait_until"]


class PeerUnavailable(Exception):
    """A peer (the node, storescp, Orthanc) could not be started or did not answer; the message says why."""


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    with closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def dcmtk_tool(name: str) -> str | None:
    """dcmtk's ``storescu``/``storescp``, skipping pynetdicom's same-named scripts in the virtual environment."""
    candidates = [str(Path(d) / name) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    candidates.append(f"/usr/bin/{name}")
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            version = subprocess.run([candidate, "--version"], check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return candidate
    return None


def wait_until(predicate: Callable[[], bool], timeout_s: float, process: subprocess.Popen | None, what: str) -> None:
    """Poll ``predicate`` every 50 ms; PeerUnavailable when ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and process.poll() is not None:
            raise PeerUnavailable(f"{what} exited with status {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{what} did not answer within {timeout_s:.0f} s")
        time.sleep(0.05)


def end_process(process: subprocess.Popen | None, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit; only the process this script started."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def log_tail(path: Path, lines: int = 3) -> str:
    """The last ``lines`` lines of a log, joined: what a peer said before it failed."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
