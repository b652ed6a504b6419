"""The network guard's parts on their own, and the pynetdicom internals it relies on.

If a pynetdicom release changes how its reactor reads a PDU, how the server hands a connection to its
request handler, or how the ACSE negotiates as acceptor, the guard would silently stop guarding: the
tests at the end of this file fail first (pyproject.toml pins pynetdicom to the tested minor version).
"""

from __future__ import annotations

import inspect
import logging
import socket
import struct
import threading
import time

import pytest
from pynetdicom import AE, _config
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.transport import (
    AssociationServer,
    RequestHandler,
    ThreadedAssociationServer,
)

from sct_node.node.netguard import (
    MAX_ASSOCIATE_RQ_BYTES,
    Connection,
    GuardLimits,
    PduReader,
    PeerWarnings,
    printable,
)


class _FakeAcceptor:
    maximum_length = 16382


class _Assoc:
    """Just what PduReader reads of an association: whether it is established, and the acceptor's max length."""

    def __init__(self, established: bool = False) -> None:
        self.is_established = established
        self.acceptor = _FakeAcceptor()

        class _Dul:
            def __init__(self) -> None:
                import queue

                self.to_user_queue = queue.Queue()

        self.dul = _Dul()


def _recording_logger(name: str) -> tuple[logging.Logger, list[str]]:
    """A logger whose messages land in the returned list (one fresh list per call)."""
    records: list[str] = []
    log = logging.getLogger(name)
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log, records


def _reader(established: bool = False, deadline_s: float = 0.5, max_message_bytes: int = 1 << 20):
    server_side, client_side = socket.socketpair()
    connection = Connection("127.0.0.9", 4242)
    log, records = _recording_logger("test.netguard")
    limits = GuardLimits(max_connections=4, max_connections_per_host=2, max_associations=2, deadline_s=deadline_s,
                         max_message_bytes=max_message_bytes)
    assoc = _Assoc(established)
    reader = PduReader(server_side, assoc, connection, limits, PeerWarnings(log))
    return reader, client_side, records, assoc


def test_a_complete_pdu_passes_through_unchanged():
    reader, client, records, _ = _reader()
    pdu = struct.pack(">BBL", 0x05, 0, 4) + bytes(4)
    client.sendall(pdu)
    assert reader(6) + reader(4) == pdu
    assert records == []


@pytest.mark.parametrize("pdu_type, length, established, expected", [
    (0x01, MAX_ASSOCIATE_RQ_BYTES + 1, False, "A-ASSOCIATE-RQ of 65537 bytes exceeds the limit before an association"),
    (0x04, 100_000, False, "P-DATA-TF of 100000 bytes exceeds the limit before an association"),
    (0x04, 16383, True, "P-DATA-TF of 16383 bytes exceeds the maximum PDU length the node proposed"),
    (0x07, 5000, True, "A-ABORT of 5000 bytes exceeds the size of that PDU"),
    (0x09, 4, False, "unknown PDU type 0x09"),
])
def test_out_of_bounds_headers_close_before_the_body_is_read(pdu_type, length, established, expected):
    reader, client, records, assoc = _reader(established)
    client.sendall(struct.pack(">BBL", pdu_type, 0, length))
    assert reader(6) == bytearray()
    assert len(records) == 1 and expected in records[0] and "127.0.0.9:4242" in records[0]
    client.settimeout(2)
    received = client.recv(64)
    if established:  # an associated peer is told why: A-ABORT, source 2, reason 6
        assert received[:1] == b"\x07" and received[8:10] == b"\x02\x06"
        assert client.recv(64) == b""
    else:
        assert received == b""
        assert assoc.dul.to_user_queue.get_nowait() is None  # the association thread is woken at once


def test_a_pdu_must_arrive_whole_within_the_deadline():
    reader, client, records, _ = _reader(deadline_s=0.3)
    client.sendall(struct.pack(">BBL", 0x01, 0, 200) + bytes(50))
    started = time.monotonic()
    header = reader(6)
    assert len(header) == 6
    client.sendall(bytes(10))  # a trickle keeps each read alive but not the whole PDU
    assert len(reader(200)) < 200
    assert time.monotonic() - started < 5
    assert len(records) == 1 and "PDU not complete within 0.3 s" in records[0]


def test_a_data_set_larger_than_the_limit_is_refused_while_it_arrives():
    reader, client, records, _ = _reader(established=True, max_message_bytes=40_000)

    def fragment(last: bool) -> bytes:
        body = struct.pack(">LBB", 16_002, 1, 0x02 if last else 0x00) + bytes(16_000)
        return struct.pack(">BBL", 0x04, 0, len(body)) + body

    sender = threading.Thread(target=lambda: [client.sendall(fragment(False)) for _ in range(3)])
    sender.start()
    assert len(reader(6)) == 6 and len(reader(16_006)) == 16_006
    assert len(reader(6)) == 6 and len(reader(16_006)) == 16_006
    assert len(reader(6)) == 6 and reader(16_006) == bytearray()  # 48 000 > 40 000
    sender.join(timeout=5)
    assert "data set larger than" in records[0]


def test_a_new_message_starts_counting_from_zero():
    reader, client, records, _ = _reader(established=True, max_message_bytes=20_000)
    body = struct.pack(">LBB", 16_002, 1, 0x02) + bytes(16_000)  # last fragment of its message each time
    for _ in range(3):
        client.sendall(struct.pack(">BBL", 0x04, 0, len(body)) + body)
        assert len(reader(6)) == 6 and len(reader(len(body))) == len(body)
    assert records == []


def test_peer_warnings_are_limited_per_address_and_report_what_was_suppressed():
    log, records = _recording_logger("test.netguard.rate")
    warnings = PeerWarnings(log, burst=3, per_s=0.0001, total_burst=10, total_per_s=0.0001)
    for n in range(50):
        warnings.warning("10.0.0.1", "flood %d", n)
    assert records == ["flood 0", "flood 1", "flood 2"]
    warnings.warning("10.0.0.2", "other host")  # a flood from one address does not silence another
    assert records[-1] == "other host (47 similar warning(s) suppressed before this one)"
    for n in range(20):
        warnings.warning(f"10.0.1.{n}", "many hosts %d", n)
    assert len(records) == 10  # the total is bounded too
    warnings._total.tokens = 1
    warnings.flush()
    assert records[-1] == "14 warning(s) about peers were suppressed (rate limit)"


def test_text_from_the_network_is_made_printable():
    assert printable("PACS\r\nFAKE LOG LINE") == "PACS??FAKE LOG LINE"
    assert printable("x" * 500, 16) == "x" * 16
    assert printable("") == "''"


def test_client_context_with_a_ca_bundle_trusts_only_that_bundle(pki):
    from sct_node.config import TlsConfig
    from sct_node.node.tls import client_context

    assert len(client_context(TlsConfig(ca_certificates=pki["ca.pem"])).get_ca_certs()) == 1


# --- pynetdicom internals the guard relies on ---------------------------------------------------------


def test_pynetdicom_reads_a_pdu_as_header_then_body_through_the_socket_wrapper():
    source = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in source and "self.socket.recv(pdu_length)" in source
    assert "to_user_queue" in inspect.getsource(DULServiceProvider.__init__)
    reactor = inspect.getsource(Association.run_reactor)
    assert "receive_pdu(wait=True, timeout=self.acse_timeout)" in reactor and "if primitive is None" in reactor


def test_pynetdicom_server_and_handler_hooks_exist():
    assert "request_handler" in inspect.signature(AssociationServer.__init__).parameters
    assert hasattr(RequestHandler, "_create_association")
    assert "process_request_thread" in ThreadedAssociationServer.__dict__
    assert "server_class" in inspect.signature(AE.make_server).parameters
    assert isinstance(AE()._servers, list)
    assert "_server" in inspect.getsource(Association.__init__)


def test_pynetdicom_acse_and_state_machine_hooks_exist():
    assert callable(ACSE._negotiate_as_acceptor) and callable(ACSE.send_reject)
    assert "def do_action" in inspect.getsource(StateMachine)
    assert "UI" in _config.VALIDATORS


def test_noise_in_acceptor_threads_is_demoted_and_only_pynetdicom_words_become_the_reason(caplog):
    """pydicom may quote a received value (a patient's name) in its warnings: that must never reach the
    WARNING logged when the connection ends; pynetdicom's own complaint becomes the reason."""
    from sct_node.node.netguard import _CONNECTIONS, install_noise_filter

    install_noise_filter()

    class Acceptor(Association):
        def run(self) -> None:
            logging.getLogger("pynetdicom.dul").error("Unable to decode the received PDU data")
            logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Leak^Canary'")  # the later one

    assoc = Acceptor(AE(), "acceptor")
    connection = Connection("127.0.0.9", 4242)
    _CONNECTIONS[assoc] = connection
    caplog.set_level(logging.INFO)
    assoc.start()
    assoc.join(timeout=10)
    assert connection.pynetdicom_reason == "Unable to decode the received PDU data"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(("pydicom", "pynetdicom"))]
    logging.getLogger("pynetdicom.dul").error("an SCU-side error outside acceptor threads")
    assert any("SCU-side" in r.getMessage() for r in caplog.records)  # other threads are not filtered
