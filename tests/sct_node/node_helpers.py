"""Real peers for node tests: dcmtk's storescu and storescp, the node as a subprocess, its database read-only.

Everything here runs on loopback with ports picked by the kernel, and every
process started here is ended by the caller's fixture teardown (``stop()``).
Nothing is mocked: the one test hook, :func:`slow_serve`, only stretches the
time the real writer takes, so a crash in the middle of processing can be
aimed at.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom

from models.phantoms import generate_phantom
from sct_node.config import NodeConfig, load_config
from sct_node.tools.phantom_writer import write_phantom_dicom

__all__ = [
    "MrSeries", "NodeProcess", "ResponseParser", "StoreScp", "StorescuResult", "db_rows", "dcmtk", "free_port",
    "node_db", "phantom_mr_series", "run_sct_node", "series_in", "slow_serve", "sop_instance_uid", "storescu",
    "storescu_command", "wait_for", "write_toml",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A small pelvis grid: 12 slices of 48 x 48, so sending, translating and delivering take well under a second.
SMALL_SHAPE_ZYX = (12, 48, 48)
SMALL_SPACING_MM = (8.0, 8.0, 12.0)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now, below the kernel's ephemeral range.

    Never the same port twice in one test session: the node's port and a destination's port are picked
    before either listens. Below the ephemeral range (``ip_local_port_range``) because a port the kernel
    offers for port 0 is also one it hands to outgoing connections: a node's association could take it
    before storescp binds it ("Address already in use", seen once in a full run).
    """
    low = _ephemeral_low()
    while True:
        port = random.randrange(max(1024, low - 20000), low)
        if port in _HANDED_OUT:
            continue
        with closing(socket.socket()) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


@functools.cache
def _ephemeral_low() -> int:
    """First port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_open(port: int) -> bool:
    with closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# --- test data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MrSeries:
    """An MR series on disk, with the identifiers the sCT must carry over."""

    folder: Path
    files: tuple[Path, ...]  # in slice order (inferior to superior)
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str


def phantom_mr_series(folder: Path, *, slices: int = SMALL_SHAPE_ZYX[0], rows: int = SMALL_SHAPE_ZYX[1],
                      seed: int = 0, case_id: str = "pelvis-0000") -> MrSeries:
    """A phantom pelvis T1w MR series (slice spacing 12 mm) written under ``folder``."""
    phantom = generate_phantom("pelvis", seed, shape_zyx=(slices, rows, rows), spacing_mm=SMALL_SPACING_MM)
    written = write_phantom_dicom(phantom, case_id, folder)
    return series_in(written.mr_t1_dir)


def series_in(folder: Path) -> MrSeries:
    """Describe the one MR series in ``folder`` (files sorted by Instance Number)."""
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in folder.glob("*.dcm")}
    files = sorted(headers, key=lambda p: int(headers[p].InstanceNumber))
    first = headers[files[0]]
    return MrSeries(folder, tuple(files), str(first.SeriesInstanceUID), str(first.StudyInstanceUID),
                    str(first.FrameOfReferenceUID))


# --- configuration -----------------------------------------------------------------------------------


def write_toml(config: NodeConfig, path: Path) -> Path:
    """Write a configuration as ``node.toml`` (and check that it loads back to the same configuration)."""
    lines: list[str] = []
    _toml_table(config.model_dump(mode="json", exclude_none=True), "", lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_config(path)
    if loaded != config:
        raise AssertionError(f"{path} does not load back to the configuration it was written from")
    return path


def _toml_table(data: dict, prefix: str, lines: list[str]) -> None:
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    for key, value in data.items():
        if key not in tables and key not in arrays:
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and arrays of scalars are valid TOML
    for key, value in tables.items():
        lines.append(f"\n[{prefix}{key}]")
        _toml_table(value, f"{prefix}{key}.", lines)
    for key, items in arrays.items():
        for item in items:
            lines.append(f"\n[[{prefix}{key}]]")
            _toml_table(item, f"{prefix}{key}.", lines)


# --- the node ----------------------------------------------------------------------------------------


class NodeProcess:
    """``python -m sct_node serve --config ...`` as a subprocess (so that it can be SIGKILLed).

    ``slow_write_s`` > 0 runs it through :func:`slow_serve` instead, which makes the real sCT writer
    pause that long after each slice.
    """

    def __init__(self, config_path: Path, port: int, log_path: Path, slow_write_s: float = 0.0) -> None:
        self.config_path, self.port, self.log_path = config_path, port, log_path
        if slow_write_s > 0:
            command = [sys.executable, "-c", "from tests.sct_node.node_helpers import slow_serve; slow_serve()",
                       str(slow_write_s), str(config_path)]
        else:
            command = [sys.executable, "-m", "sct_node", "serve", "--config", str(config_path)]
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: port_open(port) or self.process.poll() is not None, 30, "the node to listen")
            if self.process.poll() is not None:
                raise AssertionError(f"the node exited with {self.process.returncode}:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or the OOM killer."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (the node shuts down cleanly), SIGKILL if it does not within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def slow_serve() -> None:
    """``python -c ... slow_serve() DELAY_S CONFIG``: ``sct-node serve`` whose sCT writer pauses after each slice.

    The pause goes through the writer's own ``progress`` callback, so the files on disk are exactly what
    the real writer leaves behind when it is interrupted; nothing else changes.
    """
    delay_s, config_path = float(sys.argv[1]), sys.argv[2]
    from sct_node.cli import main
    from sct_node.node import process

    real_writer = process.write_sct_series

    def slow_writer(*args, **kwargs):
        return real_writer(*args, progress=lambda done, total: time.sleep(delay_s), **kwargs)

    process.write_sct_series = slow_writer
    raise SystemExit(main(["serve", "--config", config_path]))


def run_sct_node(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The ``sct-node`` CLI in a subprocess, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "sct_node", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@contextmanager
def node_db(spool_dir: Path) -> Iterator[sqlite3.Connection]:
    """The node's database opened read-only from outside, as ``sct-node status`` would see it."""
    connection = sqlite3.connect(f"file:{spool_dir / 'state.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def db_rows(spool_dir: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    with node_db(spool_dir) as db:
        return db.execute(sql, parameters).fetchall()


# --- dcmtk -------------------------------------------------------------------------------------------


@functools.cache
def dcmtk(tool: str) -> str | None:
    """Path of a dcmtk tool, or None.

    pynetdicom installs its own ``storescu``/``storescp`` scripts into the virtual environment, ahead of
    dcmtk on PATH and with other options, so the first match of ``shutil.which`` is not enough: the
    tool must say it is dcmtk.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            try:
                version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True,
                                         timeout=10, check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "dcmtk" in version.lower():
                return str(candidate)
    return None


class StoreScp:
    """dcmtk ``storescp`` as the planning system: every instance it accepts lands in ``folder``.

    ``unique_filenames`` (``+uf``) gives every received instance its own file, so a file count is a
    count of deliveries and a duplicate delivery cannot hide by overwriting.
    """

    def __init__(self, folder: Path, port: int, *, ae_title: str = "TPS", options: Sequence[str] = (),
                 unique_filenames: bool = True, log_path: Path | None = None) -> None:
        self.folder, self.port = Path(folder), port
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or self.folder.parent / f"storescp-{port}.log"
        unique = ["+uf"] if unique_filenames else []
        command = [dcmtk("storescp"), "-v", "-aet", ae_title, "-od", str(self.folder), *unique, *options, str(port)]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: port_open(port) or self.process.poll() is not None, 10, "storescp to listen")
            if self.process.poll() is not None:
                raise AssertionError(f"storescp exited with {self.process.returncode}: "
                                     f"{self.log_path.read_text(errors='replace')}")
        except BaseException:
            self.stop()
            raise

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in self.files()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@dataclass(frozen=True)
class StorescuResult:
    """What storescu did: its exit code, its log, and the C-STORE response to each instance it sent."""

    returncode: int
    output: str
    statuses: dict[str, int]  # SOP Instance UID -> C-STORE response status
    comments: dict[str, str]  # SOP Instance UID -> Error Comment of the response, where there was one

    def stored(self) -> set[str]:
        return {uid for uid, status in self.statuses.items() if status == 0x0000}


class ResponseParser:
    """Reads C-STORE responses from ``storescu -d`` output, line by line (so it also works on a live stream).

    dcmtk's debug log prints each response as a block with the Affected SOP Instance UID and the exact
    ``DIMSE Status : 0xa700: ...``, followed by the Error Comment when the peer sent one.
    """

    _UID = re.compile(r"Affected SOP Instance UID\s*:\s*(\S+)")
    _STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
    _COMMENT = re.compile(r"\(0000,0902\) LO \[(.*?)\]")

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.comments: dict[str, str] = {}
        self._in_response = False
        self._uid: str | None = None
        self._last: str | None = None

    def feed(self, line: str) -> None:
        if "Message Type" in line:
            self._in_response = "C-STORE RSP" in line
            self._uid = None
        elif self._in_response and (match := self._UID.search(line)):
            self._uid = match.group(1)
        elif self._in_response and self._uid and (match := self._STATUS.search(line)):
            self.statuses[self._uid] = int(match.group(1), 16)
            self._last, self._in_response = self._uid, False
        elif self._last and (match := self._COMMENT.search(line)):
            self.comments[self._last] = match.group(1)
        elif "Sending file" in line:
            self._last = None


def storescu_command(port: int, paths: Sequence[Path], *, calling_ae: str = "PACS", called_ae: str = "SCT_NODE",
                     options: Sequence[str] = ()) -> list[str]:
    """``storescu -d`` sending files or folders (recursively) to the node, without halting on a failure."""
    return [dcmtk("storescu"), "-d", "-nh", "-aet", calling_ae, "-aec", called_ae, "+sd", "+r", *options, "127.0.0.1",
            str(port), *(str(p) for p in paths)]


def storescu(port: int, paths: Sequence[Path], *, calling_ae: str = "PACS", called_ae: str = "SCT_NODE",
             options: Sequence[str] = (), timeout_s: float = 60) -> StorescuResult:
    """Run storescu to completion."""
    result = subprocess.run(storescu_command(port, paths, calling_ae=calling_ae, called_ae=called_ae,
                                             options=options),
                            capture_output=True, text=True, timeout=timeout_s, check=False)
    parser = ResponseParser()
    for line in result.stderr.splitlines():  # dcmtk logs to stderr; stdout has only progress dots
        parser.feed(line)
    return StorescuResult(result.returncode, result.stderr, parser.statuses, parser.comments)


def sop_instance_uid(path: Path | str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)

