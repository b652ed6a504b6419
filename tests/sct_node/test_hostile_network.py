"""The node on a hostile network: each attack from the issue, against a real `sct-node serve` on loopback.

A peer that knows an allowed AE title, or that can merely open a TCP connection, tries to write outside
the spool, stall the node, exhaust its memory or flood its log. Each test then checks that an allowed
PACS is still served, that nothing outside the spool changed, and what the log says. Peers other than the
PACS connect from other loopback addresses (127.0.0.x; Linux routes all of 127/8 to lo), so the per-host
limit can be seen working.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from sct_node.config import (
    AllowedCaller,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    StorageConfig,
    TlsConfig,
)
from tests.sct_node.node_helpers import (
    NodeProcess,
    db_rows,
    free_port,
    wait_for,
    write_toml,
)
from tests.sct_node.raw_dicom import MR_IMAGE_STORAGE, RawAssociation, associate_rq

NETWORK_TIMEOUT_S = 2.0
CANNOT_UNDERSTAND = 0xC000


def mr_dataset(sop_uid: str, series_uid: str, study_uid: str = "1.2.826.0.1.3680043.9.7433.3.1",
               extra: bytes = b"") -> bytes:
    """A small MR image (8 x 8) encoded explicit VR little endian, with whatever UIDs (valid or not)."""
    with pydicom.config.disable_value_validation():  # the point is to send what pydicom would warn about
        dataset = Dataset()
        dataset.SOPClassUID = MR_IMAGE_STORAGE
        dataset.SOPInstanceUID = sop_uid
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.9.7433.3.2"
        dataset.Modality = "MR"
        dataset.PatientName = "Hostile^Test"
        dataset.Rows = dataset.Columns = 8
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PixelRepresentation = 1, "MONOCHROME2", 0
        dataset.PixelData = bytes(128)
        stream = DicomBytesIO()
        stream.is_little_endian, stream.is_implicit_VR = True, False
        write_dataset(stream, dataset)
    return stream.getvalue() + extra


def valid_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.9.7433.9.{n}"


_COUNTER = iter(range(1, 10**9))


def store_valid(port: int, ae: str = "PACS") -> int | None:
    """Store one valid instance as the allowed PACS; its status (None when no association)."""
    n = next(_COUNTER) + int(time.time() * 1000) % 10**6 * 1000
    try:
        assoc = RawAssociation(port, ae, timeout_s=10)
    except Exception:  # noqa: BLE001  any failure to associate is the answer (None)
        return None
    try:
        return assoc.store(MR_IMAGE_STORAGE, valid_uid(n), mr_dataset(valid_uid(n), valid_uid(n + 1))).status
    finally:
        assoc.release()


def echo(port: int, ae: str = "PACS", source: str = "127.0.0.1") -> bool:
    try:
        assoc = RawAssociation(port, ae, source=source, timeout_s=10)
    except Exception:  # noqa: BLE001  any failure to associate is the answer (False)
        return False
    try:
        return assoc.echo().status == 0x0000
    finally:
        assoc.release()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def files_outside(root: Path, spool: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if spool not in p.parents and p != spool}


def start_guarded_node(root: Path, *, max_instance_mb: float = 64, **network) -> NodeProcess:
    """``sct-node serve`` allowing caller PACS (any host), no processing, with a canary file beside its spool.

    ``node.root`` is ``root``; ``node.spool`` the spool, under ``root/data`` next to ``root/data/canary``.
    """
    port = free_port()
    config = NodeConfig(
        network=NetworkConfig(port=port, allowed_callers=(AllowedCaller(ae_title="PACS"),), **network),
        storage=StorageConfig(spool_dir=root / "data" / "spool", min_free_space_mb=0, max_instance_mb=max_instance_mb),
        processing=ProcessingConfig(quiet_period_s=3600, poll_interval_s=0.2),
    )
    (root / "data" / "canary").mkdir(parents=True)
    (root / "data" / "canary" / "keep.txt").write_text("must survive")
    node = NodeProcess(write_toml(config, root / "node.toml"), port, root / "node.log")
    node.root, node.spool = root, root / "data" / "spool"
    # The node loads its route's model and the QA code in the background at start (processing.preload): let it
    # finish, so that memory is measured, and rate limits timed, on a node at rest.
    wait_for(lambda: "preloaded the models" in node.log(), 120, "the node's preload at start")
    return node


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One node for the module: allowed caller PACS, 2 s network timeout, no processing."""
    node = start_guarded_node(tmp_path_factory.mktemp("hostile"), network_timeout_s=NETWORK_TIMEOUT_S,
                              max_connections=40, max_connections_per_host=10)
    yield node
    node.stop()


def _log_since(node: NodeProcess, offset: int) -> str:
    return node.log()[offset:]


@pytest.mark.parametrize("series_uid, sop_uid, what", [
    ("../../../x", valid_uid(101), "Series Instance UID"),
    ("/tmp/sct-node-absolute", valid_uid(102), "Series Instance UID"),
    (".", valid_uid(103), "Series Instance UID"),
    ("..", valid_uid(104), "Series Instance UID"),
    ("1.2/3", valid_uid(105), "Series Instance UID"),
    ("1." + "2" * 298, valid_uid(106), "Series Instance UID"),
    (valid_uid(107), "../../../../x", "SOP Instance UID"),
    (valid_uid(108), "..", "SOP Instance UID"),
    (valid_uid(109), "1." + "3" * 298, "SOP Instance UID"),
])
def test_uids_that_would_be_paths_are_refused_with_cannot_understand(hostile, series_uid, sop_uid, what):
    before = files_outside(hostile.root, hostile.spool)
    offset = len(hostile.log())
    assoc = RawAssociation(hostile.port, "PACS")
    try:
        response = assoc.store(MR_IMAGE_STORAGE, sop_uid, mr_dataset(sop_uid, series_uid))
    finally:
        assoc.release()
    assert response.status == CANNOT_UNDERSTAND, response
    assert what in (response.comment or ""), response.comment
    assert files_outside(hostile.root, hostile.spool) == before
    assert not Path("/tmp/sct-node-absolute").exists()
    assert db_rows(hostile.spool, "SELECT COUNT(*) FROM instances WHERE series_uid = ? OR sop_instance_uid = ?",
                   (series_uid, sop_uid)) == [(0,)]
    log = wait_for(lambda: (text := _log_since(hostile, offset)) and "refused instance" in text and text, 10,
                   "the refusal in the log")
    warning = next(line for line in log.splitlines() if "refused instance" in line)
    assert "WARNING" in warning and "AE PACS at 127.0.0.1:" in warning and what in warning
    assert "Traceback" not in log
    assert store_valid(hostile.port) == 0x0000


def test_every_spooled_file_has_a_uid_path_inside_the_spool(hostile):
    assert store_valid(hostile.port) == 0x0000
    for path in (hostile.spool / "instances").rglob("*"):
        relative = path.relative_to(hostile.spool / "instances")
        for part in relative.parts:
            assert part.removesuffix(".dcm").replace(".", "").isdigit(), relative
    (row,) = db_rows(hostile.spool, "SELECT path FROM instances LIMIT 1")
    assert Path(row[0]).is_absolute() and hostile.spool in Path(row[0]).parents


def test_element_declaring_4_gib_is_refused_not_stored(hostile):
    uid = valid_uid(201)
    truncated = struct.pack("<HH2sHL", 0x0011, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"abcd"
    assoc = RawAssociation(hostile.port, "PACS")
    try:
        response = assoc.store(MR_IMAGE_STORAGE, uid, mr_dataset(uid, valid_uid(202), extra=truncated))
    finally:
        assoc.release()
    assert response.status == CANNOT_UNDERSTAND
    assert "(0011,1010)" in (response.comment or "")
    assert db_rows(hostile.spool, "SELECT COUNT(*) FROM instances WHERE sop_instance_uid = ?", (uid,)) == [(0,)]


def _stall(port: int, source: str, declared: int, sent: int) -> socket.socket:
    """A connection that sends the first bytes of an A-ASSOCIATE-RQ declaring ``declared`` bytes, then waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(struct.pack(">BBL", 0x01, 0, declared) + bytes(sent))
    return sock


def _closed_by_node(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_connections_declaring_4_gib_associate_requests_are_closed_at_once(hostile):
    offset = len(hostile.log())
    stalls = [_stall(hostile.port, "127.0.0.21", 0xFFFFFFF0, 100) for _ in range(10)]
    try:
        assert all(_closed_by_node(s, 5) for s in stalls)
        assert echo(hostile.port)
    finally:
        for s in stalls:
            s.close()
    log = wait_for(lambda: (t := _log_since(hostile, offset)).count("A-ASSOCIATE-RQ of 4294967280 bytes") >= 10
                   and t, 10, "ten warnings")
    assert "Traceback" not in log


@pytest.mark.slow
def test_stalled_partial_pdus_hold_no_one_but_their_own_address(hostile):
    """Ten half-sent requests from one address: the PACS elsewhere is served at once; from the same
    address it is served as soon as the PDU deadline (network_timeout_s) closed them."""
    stalls = [_stall(hostile.port, "127.0.0.1", 200, 50) for _ in range(10)]
    try:
        started = time.monotonic()
        assert echo(hostile.port, source="127.0.0.22")  # another host: not affected by 127.0.0.1's stalls
        served_other_s = time.monotonic() - started
        assert served_other_s < NETWORK_TIMEOUT_S  # functional: it did not have to wait for the deadline
        wait_for(lambda: echo(hostile.port), NETWORK_TIMEOUT_S + 20, "the PACS to be served after the deadline",
                 interval_s=0.1)
        # Each stall is closed at its own deadline; on a loaded machine the last can come a little after the
        # first freed slot let the echo in (a 1 s window failed once under load): closed, not left open, is the point.
        assert all(_closed_by_node(s, NETWORK_TIMEOUT_S + 5) for s in stalls)
    finally:
        for s in stalls:
            s.close()


def test_streaming_a_200_mib_pdu_before_association_does_not_grow_memory(hostile):
    pid = hostile.process.pid
    before_kib, peak_before_kib = rss_kib(pid), rss_kib(pid, "VmHWM")
    sock = socket.create_connection(("127.0.0.1", hostile.port), timeout=10, source_address=("127.0.0.23", 0))
    chunk, sent = bytes(1 << 20), 0
    try:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200 << 20))
        while sent < (200 << 20):
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the node closed the connection: what we want
    finally:
        sock.close()
    growth_mib = (rss_kib(pid, "VmHWM") - max(before_kib, peak_before_kib)) / 1024
    assert sent < (200 << 20), "the node read a 200 MiB A-ASSOCIATE-RQ to the end"
    assert growth_mib < 50, f"node memory grew {growth_mib:.0f} MiB"
    assert echo(hostile.port)


def test_oversized_pdata_and_data_set_abort_the_association(hostile):
    offset = len(hostile.log())
    assoc = RawAssociation(hostile.port, "PACS", max_pdu=16384, source="127.0.0.24")
    try:  # a P-DATA-TF beyond the maximum length the node proposed (16382)
        assoc.send_raw(struct.pack(">BBL", 0x04, 0, 1 << 20) + bytes(4096))
        pdu_type, _body = assoc.read_pdu()
        assert pdu_type in (0x07, None)  # A-ABORT, then closed
    finally:
        assoc.close()
    assert "exceeds the maximum PDU length" in wait_for(lambda: _log_since(hostile, offset), 10, "log")
    # A data set larger than storage.max_instance_mb (64 MB here), sent in valid PDUs: aborted before 64 MB.
    pid = hostile.process.pid
    before_kib = rss_kib(pid)
    assoc = RawAssociation(hostile.port, "PACS", max_pdu=16382, source="127.0.0.24")
    from tests.sct_node.raw_dicom import c_store_rq, pdata, pdv
    aborted = False
    try:
        assoc.send_raw(pdata(pdv(3, 0x03, c_store_rq(1, MR_IMAGE_STORAGE, valid_uid(301)))))
        fragment = pdata(pdv(3, 0x00, bytes(16376)))
        for _ in range((80 << 20) // 16376):
            assoc.send_raw(fragment)
    except OSError:
        aborted = True
    finally:
        assoc.close()
    assert aborted
    assert (rss_kib(pid) - before_kib) / 1024 < 150
    assert echo(hostile.port)


def test_garbage_connections_leave_the_pacs_served_and_log_one_line_each(hostile):
    import random

    offset = len(hostile.log())
    rng = random.Random(12)
    for index in range(30):
        sock = socket.create_connection(("127.0.0.1", hostile.port), timeout=5,
                                        source_address=(f"127.0.0.{30 + index % 5}", 0))
        try:
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
            sock.shutdown(socket.SHUT_WR)
            _closed_by_node(sock, 5)
        except OSError:
            pass
        finally:
            sock.close()
    started = time.monotonic()
    assert echo(hostile.port)
    assert time.monotonic() - started < NETWORK_TIMEOUT_S
    time.sleep(0.5)
    lines = [line for line in _log_since(hostile, offset).splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(lines)
    garbage_lines = [line for line in lines if any(f"127.0.0.{30 + i}" in line for i in range(5))]
    assert 1 <= len(garbage_lines) <= 30 + 1, "\n".join(lines)  # one each (rate limit may fold some)
    assert all("WARNING" in line for line in garbage_lines)


def test_unknown_calling_ae_gets_one_warning_and_a_reject(hostile):
    offset = len(hostile.log())
    with pytest.raises(Exception, match="0x03"):
        RawAssociation(hostile.port, "INTRUDER")
    log = wait_for(lambda: "INTRUDER" in (t := _log_since(hostile, offset)) and t, 10, "the warning")
    lines = [line for line in log.splitlines() if "INTRUDER" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "not an allowed caller" in lines[0]


def test_one_info_line_per_association_that_stored(hostile):
    offset = len(hostile.log())
    assoc = RawAssociation(hostile.port, "PACS")
    series = valid_uid(401)
    try:
        for n in range(3):
            uid = valid_uid(410 + n)
            assert assoc.store(MR_IMAGE_STORAGE, uid, mr_dataset(uid, series)).status == 0
        assert assoc.store(MR_IMAGE_STORAGE, valid_uid(410), mr_dataset(valid_uid(410), series)).status == 0
    finally:
        assoc.release()
    log = wait_for(lambda: "3 instance(s) stored" in (t := _log_since(hostile, offset)) and t, 10, "the INFO line")
    (line,) = [line for line in log.splitlines() if "instance(s) stored" in line]
    assert "INFO" in line and "AE PACS at 127.0.0.1" in line and "1 duplicate(s)" in line and series in line
    assert "Hostile" not in log  # never the patient's name


def test_more_than_max_connections_per_host_are_closed_at_once(hostile):
    sockets = [socket.create_connection(("127.0.0.1", hostile.port), timeout=5, source_address=("127.0.0.40", 0))
               for _ in range(10)]
    try:
        wait_for(lambda: True, 1, "")
        extra = socket.create_connection(("127.0.0.1", hostile.port), timeout=5, source_address=("127.0.0.40", 0))
        assert _closed_by_node(extra, 5)
        extra.close()
        assert echo(hostile.port)  # another address is not affected
    finally:
        for s in sockets:
            s.close()


def test_nothing_outside_the_spool_changed(hostile):
    """Runs after the attacks above (module order): the canary beside the spool is intact."""
    assert (hostile.root / "data" / "canary" / "keep.txt").read_text() == "must survive"
    assert files_outside(hostile.root, hostile.spool) >= {"data/canary", "data/canary/keep.txt"}
    assert "Traceback" not in hostile.log()


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_tcp_connection_on_the_tls_port_blocks_no_tls_client(tmp_path, pki):
    port = free_port()
    config = NodeConfig(
        network=NetworkConfig(port=port, network_timeout_s=NETWORK_TIMEOUT_S,
                              tls=TlsConfig(certificate=pki["server.pem"], private_key=pki["server.key"])),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=3600),
    )
    node = NodeProcess(write_toml(config, tmp_path / "node.toml"), port, tmp_path / "node.log")
    idle = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.50", 0))
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
        context.check_hostname = False
        started = time.monotonic()
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw) as tls:
            tls.sendall(associate_rq("ANY"))
            assert tls.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        assert time.monotonic() - started < NETWORK_TIMEOUT_S
        assert _closed_by_node(idle, NETWORK_TIMEOUT_S + 10)
        log = wait_for(lambda: "TLS handshake from 127.0.0.50" in node.log() and node.log(), 10,
                       "the handshake warning")
        line = next(line for line in log.splitlines() if "TLS handshake from 127.0.0.50" in line)
        assert "WARNING" in line and f"within {NETWORK_TIMEOUT_S:g} s" in line
        plain = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.51", 0))
        plain.sendall(associate_rq("PLAIN"))
        assert _closed_by_node(plain, 10)
        plain.close()
        wait_for(lambda: "TLS handshake from 127.0.0.51" in node.log(), 10, "a warning for the plain-TCP client too")
        assert "Traceback" not in node.log()
    finally:
        idle.close()
        node.stop()


def test_node_threads_and_descriptors_return_to_idle(hostile):
    """After the attacks, the node holds no connection: its open descriptors are back near the start."""
    pid = hostile.process.pid
    wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) < 40, NETWORK_TIMEOUT_S + 15,
             "the node's connections to close")
    threading.Event().wait(0)
