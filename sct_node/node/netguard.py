"""The Storage SCP's front: bounds what a peer can do before and after it is authenticated.

pynetdicom reads a PDU by trusting its length field and blocking until that
many bytes arrived, does TLS handshakes in its accept loop, and counts a
connection that never sent an A-ASSOCIATE-RQ against the association limit.
On a hospital network that lets anyone who can open a TCP connection stall
the node or grow its memory before any AE title is checked. This module puts
a small front in front of pynetdicom's state machine, at the two places
where bytes enter it:

* :class:`GuardedServer` (the accept loop) only accepts; it closes a
  connection at once beyond ``max_connections`` in total or
  ``max_connections_per_host`` from one IP address, and runs the TLS
  handshake in the connection's own thread with a deadline;
* :class:`PduReader` replaces the association socket's ``recv``: every PDU
  must arrive whole within ``network_timeout_s`` of its first byte, its type
  must be known and its length within bounds — an A-ASSOCIATE-RQ at most
  :data:`MAX_ASSOCIATE_RQ_BYTES`, a P-DATA-TF at most the maximum length the
  node proposed, a data set in total at most ``max_instance_mb`` — or the
  connection is closed before the bytes are read;
* :class:`GuardedACSE` checks the calling AE title and host, and counts only
  *established* associations against ``max_associations``.

Every refusal is logged once, as a WARNING naming the peer's address, its
calling AE title when known and the reason, through :class:`PeerWarnings`
(rate-limited under a flood). pynetdicom's own messages about broken peers
(with tracebacks) are demoted to DEBUG by :class:`PeerNoiseFilter`.

pynetdicom internals this relies on (pinned in pyproject.toml, checked by
``tests/sct_node/test_netguard.py``): ``DULServiceProvider._read_pdu_data``
reads a PDU as ``socket.recv(6)`` then ``socket.recv(length)`` through
``AssociationSocket.recv``; ``RequestHandler._create_association``;
``ThreadedAssociationServer.process_request_thread`` and ``AE._servers``;
``ACSE._negotiate_as_acceptor`` and ``ACSE.send_reject``.

References
----------
DICOM PS3.8 9.3 (PDU structure), 9.3.1 (maximum length), 9.1.1 (ARTIM);
PS3.15 B.1 (Basic TLS Secure Transport Connection Profile);
Python ``socketserver`` (verify_request, process_request_thread).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.fsm import InvalidEventError
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

__all__ = [
    "MAX_ASSOCIATE_RQ_BYTES", "Connection", "GuardLimits", "GuardedACSE", "GuardedRequestHandler",
    "GuardedServer", "PduReader", "PeerNoiseFilter", "PeerWarnings", "connection_of", "install_noise_filter",
    "printable", "relax_uid_validation",
]

logger = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ accepted. 128 presentation contexts with a few transfer syntaxes each, the most
#: any sender proposes, take about 20 KiB.
MAX_ASSOCIATE_RQ_BYTES = 64 * 1024
#: A-RELEASE-RQ/RP and A-ABORT have a 4-byte variable field (PS3.8 9.3.6-9.3.8); a little slack.
_MAX_CONTROL_PDU_BYTES = 1024
_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
#: A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value): sent before closing an
#: established association whose peer broke a limit, so it knows why.
_ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


def printable(text: object, limit: int = 64) -> str:
    """Text from the network made safe for one log line: printable ASCII only, at most ``limit`` characters."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in str(text)[:limit]).strip()
    return shown or "''"


@dataclass(frozen=True)
class GuardLimits:
    """What one peer may do (from ``[network]`` and ``[storage]`` of node.toml)."""

    max_connections: int
    max_connections_per_host: int
    max_associations: int
    deadline_s: float
    max_message_bytes: int
    allowed: dict[str, frozenset[str | None]] | None = None
    tls: ssl.SSLContext | None = None


@dataclass
class Connection:
    """What happened on one TCP connection, for its one closing log line."""

    host: str
    port: int
    calling_ae: str | None = None
    established: bool = False
    #: Set once a WARNING about this connection was logged, so it gets no second one.
    refusal_logged: bool = False
    pdus: int = 0
    #: pynetdicom decoded an A-ASSOCIATE-RQ on this connection (its thread is negotiating).
    request_decoded: bool = False
    #: The last thing pynetdicom complained about (demoted to DEBUG), used as the reason when it ends badly.
    pynetdicom_reason: str | None = None
    stored: int = 0
    duplicates: int = 0
    refused_instances: int = 0
    series: list[str] = field(default_factory=list)
    #: This connection's association among all the node has accepted (the completion rule "association").
    association_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The association ended by a normal release (A-RELEASE), not by an abort or a dropped connection.
    released: bool = False

    @property
    def peer(self) -> str:
        ae = f"AE {printable(self.calling_ae, 16)} at " if self.calling_ae is not None else ""
        return f"{ae}{self.host}:{self.port}"


#: Association -> its Connection (weak, so a record cannot outlive its association).
_CONNECTIONS: weakref.WeakKeyDictionary[Association, Connection] = weakref.WeakKeyDictionary()


def connection_of(assoc: Association) -> Connection | None:
    """The record of the connection an association runs on (None for associations this module did not accept)."""
    return _CONNECTIONS.get(assoc)


class _Bucket:
    """A token bucket: ``burst`` tokens, refilled at ``per_s`` per second."""

    def __init__(self, burst: float, per_s: float) -> None:
        self.burst, self.per_s, self.tokens, self.last = burst, per_s, float(burst), time.monotonic()

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
        self.last = now


class PeerWarnings:
    """WARNINGs about peers, rate-limited per peer address and in total.

    Each address may log ``burst`` warnings at once and ``per_s`` per second after that; all addresses
    together ``total_burst`` and ``total_per_s``. A flood from one address therefore cannot hide the
    warnings about another. What is suppressed is counted and reported with the next warning that gets
    through, or by :meth:`flush` (called from the accept loop) once the flood has passed.
    """

    def __init__(self, log: logging.Logger, burst: int = 20, per_s: float = 1.0, total_burst: int = 100,
                 total_per_s: float = 5.0, max_hosts: int = 4096) -> None:
        self._log = log
        self._per_host = (burst, per_s)
        self._total = _Bucket(total_burst, total_per_s)
        self._hosts: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_hosts = max_hosts
        self._suppressed = 0
        self._lock = threading.Lock()

    def _take(self, host: str | None) -> tuple[bool, int]:
        with self._lock:
            now = time.monotonic()
            self._total.refill(now)
            bucket = None
            if host is not None:
                bucket = self._hosts.pop(host, None) or _Bucket(*self._per_host)
                self._hosts[host] = bucket  # most recently used last
                while len(self._hosts) > self._max_hosts:
                    self._hosts.popitem(last=False)
                bucket.refill(now)
            if self._total.tokens < 1 or (bucket is not None and bucket.tokens < 1):
                self._suppressed += 1
                return False, 0
            self._total.tokens -= 1
            if bucket is not None:
                bucket.tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed

    def warning(self, host: str | None, message: str, *args: object) -> None:
        """Log ``message % args`` as a WARNING unless ``host`` (or everyone) has logged too much lately."""
        allowed, suppressed = self._take(host)
        if allowed:
            if suppressed:
                message, args = message + " (%d similar warning(s) suppressed before this one)", (*args, suppressed)
            self._log.warning(message, *args)

    def flush(self) -> None:
        """Report suppressed warnings once the flood is over (a token of the total is free again)."""
        with self._lock:
            if not self._suppressed:
                return
            self._total.refill(time.monotonic())
            if self._total.tokens < 1:
                return
            self._total.tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
        self._log.warning("%d warning(s) about peers were suppressed (rate limit)", suppressed)


class PeerNoiseFilter(logging.Filter):
    """Demotes what pynetdicom logs inside this node's acceptor threads to DEBUG (no tracebacks at INFO+).

    Those records are about peers (a PDU that does not decode, a connection closed half-way) and come
    with tracebacks; the node logs its own one-line WARNING per connection instead. The last such
    message is kept as the connection's reason. Records from other threads (the dispatcher's SCU
    associations) pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        thread = threading.current_thread()
        assoc = thread if isinstance(thread, Association) else getattr(thread, "_assoc", None)
        connection = _CONNECTIONS.get(assoc) if assoc is not None else None
        if connection is None:
            return True
        # Only pynetdicom's own words become the reason logged at WARNING: pydicom's messages about a
        # received data set may quote its values (a patient's name), and stay at DEBUG.
        if record.levelno >= logging.WARNING and record.name.startswith("pynetdicom"):
            connection.pynetdicom_reason = printable(record.getMessage(), 120)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def install_noise_filter() -> None:
    """Put one :class:`PeerNoiseFilter` on every pynetdicom and pydicom logger and on captured warnings.

    Filters do not apply to records of child loggers, so each logger gets its own. pydicom's messages
    (and the Python warnings it raises, logged as ``py.warnings`` when captured) about a received data
    set's values are as much about the peer as pynetdicom's.
    """
    prefixes = ("pynetdicom", "pydicom")
    names = [*prefixes, "py.warnings",
             *(n for n in logging.root.manager.loggerDict if n.startswith(tuple(p + "." for p in prefixes)))]
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, PeerNoiseFilter) for f in target.filters):
            target.addFilter(PeerNoiseFilter())


#: Longest UID pynetdicom lets through to the C-STORE handler (see :func:`relax_uid_validation`).
_MAX_DECODED_UID = 1024


def _lenient_ui(value: str) -> tuple[bool, str]:
    return (len(value) <= _MAX_DECODED_UID, f"longer than {_MAX_DECODED_UID} characters")


def relax_uid_validation() -> None:
    """Let pynetdicom pass over-long UIDs in DIMSE commands to the handler instead of aborting.

    pynetdicom refuses a command whose Affected SOP Instance UID is longer than 64 characters by
    aborting the association, which tells the sender nothing and looks like a network fault. The
    node's handler checks every UID itself (:func:`sct_node.dicom.uids.uid_problem`) and answers
    0xC000 with the reason. ``_config.VALIDATORS`` is pynetdicom's documented hook for this (2.0+).
    """
    from pynetdicom import _config

    _config.VALIDATORS["UI"] = _lenient_ui


class PduReader:
    """Replaces ``AssociationSocket.recv``: reads PDUs whole within a deadline and within size bounds.

    pynetdicom's reactor calls ``recv(6)`` for a PDU's header (once ``select`` says a byte is there) and
    then ``recv(length)`` for the rest. The header is checked before the rest is read; a PDU out of bounds,
    or one not complete within ``deadline_s`` of its first byte, shuts the connection down and returns
    nothing more, which pynetdicom takes for a closed connection.

    It also sets TCP_QUICKACK before each read: senders that leave Nagle's algorithm on (dcmtk, Orthanc)
    hold the last small segment of each C-STORE until the receiver's delayed ACK (~40 ms on Linux);
    benchmarks/receive_throughput.py measured 21 -> ~200 instances/s with a default ``storescu``.
    """

    def __init__(self, raw: socket.socket, assoc: Association, connection: Connection, limits: GuardLimits,
                 warnings: PeerWarnings) -> None:
        self._raw, self._assoc, self._connection = raw, assoc, connection
        self._limits, self._warnings = limits, warnings
        self._deadline = 0.0
        self._body_left = 0  # bytes of the current PDU still to come (0: next read is a header)
        self._body_is_pdata = False
        self._message_bytes = 0  # data-set bytes of the DIMSE message being received
        self._closed = False
        self._woken = False
        self._quickack = hasattr(socket, "TCP_QUICKACK") and not isinstance(raw, ssl.SSLSocket)

    def __call__(self, nr_bytes: int) -> bytearray:
        data = self._next(nr_bytes)
        if len(data) < nr_bytes:
            self._ended()
        return data

    def _next(self, nr_bytes: int) -> bytearray:
        if self._closed:
            return bytearray()
        if self._body_left == 0:
            self._deadline = time.monotonic() + self._limits.deadline_s
            header = self._read(nr_bytes)
            if len(header) == 6:
                problem = self._header_problem(header)
                if problem:
                    self._refuse(problem)
                    return bytearray()
            return header
        body = self._read(nr_bytes)
        self._body_left = max(0, self._body_left - len(body))
        if len(body) == nr_bytes and self._body_is_pdata:
            problem = self._count_message(body)
            if problem:
                self._refuse(problem)
                return bytearray()
        return body

    def _ended(self) -> None:
        """The connection is over (closed, reset or refused). Before an association, wake its thread now.

        pynetdicom's acceptor thread waits up to the ACSE timeout for an A-ASSOCIATE-RQ even after the
        transport closed; until then the connection would count against the limits and keep two threads.
        ``None`` on the DUL's user queue is what its wait returns on a timeout, so the thread ends as if
        the timeout had passed. Not done once a request was decoded: that thread is negotiating already.
        """
        self._closed = True
        if not self._assoc.is_established and not self._connection.request_decoded and not self._woken:
            self._woken = True
            # pynetdicom annotates the queue with its primitives only, yet its own wait returns None on a timeout.
            self._assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]

    def _header_problem(self, header: bytearray) -> str | None:
        pdu_type, _, length = struct.unpack(">BBL", header)
        name = _PDU_NAMES.get(pdu_type)
        if name is None:
            return f"unknown PDU type 0x{pdu_type:02X}"
        if pdu_type == 0x04 and self._assoc.is_established:
            limit = int(self._assoc.acceptor.maximum_length or 0) or self._limits.max_message_bytes
            what = "the maximum PDU length the node proposed"
        elif pdu_type in (0x05, 0x06, 0x07):
            limit, what = _MAX_CONTROL_PDU_BYTES, "the size of that PDU"
        else:
            limit, what = MAX_ASSOCIATE_RQ_BYTES, "the limit before an association"
        if length > limit:
            return f"{name} of {length} bytes exceeds {what} ({limit} bytes)"
        self._connection.pdus += 1
        self._body_left = length
        self._body_is_pdata = pdu_type == 0x04
        return None

    def _count_message(self, body: bytearray) -> str | None:
        """Add the data-set fragments of a P-DATA-TF to the message's size (PS3.8 9.3.5.1, E.2)."""
        offset = 0
        while offset + 6 <= len(body):
            item_length = struct.unpack_from(">L", body, offset)[0]
            control = body[offset + 5]
            if control & 0x01 == 0:  # a data-set fragment (bit 0 set: command)
                self._message_bytes += max(0, item_length - 2)
                if self._message_bytes > self._limits.max_message_bytes:
                    return (f"data set larger than {self._limits.max_message_bytes // 2**20} MB "
                            "(storage.max_instance_mb)")
                if control & 0x02:  # last fragment: the next message starts from zero
                    self._message_bytes = 0
            offset += 4 + item_length
        return None

    def _read(self, nr_bytes: int) -> bytearray:
        data = bytearray()
        while len(data) < nr_bytes:
            left_s = self._deadline - time.monotonic()
            if left_s <= 0:
                what = "PDU header" if self._body_left == 0 else "PDU"
                self._refuse(f"{what} not complete within {self._limits.deadline_s:g} s "
                             f"({len(data)} of {nr_bytes} bytes; network_timeout_s)")
                return bytearray()
            if self._quickack:
                try:
                    self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                except OSError:  # not a TCP socket, or closed meanwhile (the read below reports that)
                    self._quickack = False
            try:
                self._raw.settimeout(left_s)
                chunk = self._raw.recv(min(nr_bytes - len(data), 65536))
            except TimeoutError:
                continue  # the loop reports the deadline
            except (OSError, ValueError):  # reset by the peer, or closed meanwhile
                return data
            if not chunk:
                return data
            data.extend(chunk)
        return data

    def shutdown(self) -> None:
        """End the connection without a word (the reason is logged by whoever calls this, or at close)."""
        self._closed = True
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def _refuse(self, reason: str) -> None:
        """Log once, tell an associated peer why (A-ABORT), and shut the connection down."""
        self._closed = True
        if not self._connection.refusal_logged:
            self._connection.refusal_logged = True
            self._warnings.warning(self._connection.host, "closed connection from %s: %s", self._connection.peer,
                                   reason)
        try:
            if self._assoc.is_established:
                self._raw.settimeout(1.0)
                self._raw.sendall(_ABORT_INVALID_PARAMETER)
        except (OSError, ValueError):
            pass
        self.shutdown()


class GuardedACSE(ACSE):
    """ACSE that checks the caller (AE title, and host where configured) and the association limit.

    pynetdicom checks only the calling AE title and counts every connection, even one that never sent an
    A-ASSOCIATE-RQ, against its limit. Here a caller not allowed gets A-ASSOCIATE-RJ (rejected-permanent,
    service-user, calling AE title not recognized), and a request beyond ``max_associations``
    *established* associations gets rejected-transient, service-provider (presentation), local limit
    exceeded (PS3.8 9.3.4).
    """

    def _negotiate_as_acceptor(self) -> None:
        server = self.assoc._server
        connection = connection_of(self.assoc)
        request = self.requestor.primitive
        if request is None:  # pynetdicom sets the request before it negotiates as acceptor
            raise RuntimeError("no A-ASSOCIATE request to negotiate")
        title = str(request.calling_ae_title).strip()
        if connection is not None:
            connection.calling_ae = title
        allowed = server.limits.allowed if isinstance(server, GuardedServer) else None
        hosts = allowed.get(title) if allowed else None
        if allowed and (hosts is None or (None not in hosts and self.requestor.address not in hosts)):
            self._reject((0x01, 0x01, 0x03), "not an allowed caller (network.allowed_callers)")
            return
        if not isinstance(server, GuardedServer):
            super()._negotiate_as_acceptor()
            return
        with server.association_lock:
            if len(server.established) >= server.limits.max_associations:
                self._reject((0x02, 0x03, 0x02), f"{server.limits.max_associations} associations already "
                                                 "established (network.max_associations)")
                return
            super()._negotiate_as_acceptor()
            if self.assoc.is_established:
                server.established.add(self.assoc)
                if connection is not None:
                    connection.established = True

    def _reject(self, result_source_reason: tuple[int, int, int], reason: str) -> None:
        connection = connection_of(self.assoc)
        server = self.assoc._server
        if connection is not None and isinstance(server, GuardedServer):
            connection.refusal_logged = True
            server.warnings.warning(connection.host, "rejected association from %s: %s", connection.peer, reason)
        self.send_reject(*result_source_reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def _guard_state_machine(assoc: Association, connection: Connection, reader: PduReader) -> None:
    """Turn pynetdicom's InvalidEventError into the end of the connection instead of a dead DUL thread.

    A peer that sends a PDU while the association is being accepted can make pynetdicom's state
    machine meet an event its state does not allow (seen by the fuzz test: Evt7, the local A-ASSOCIATE
    accept, in Sta13). pynetdicom raises in its DUL thread, which then dies with a traceback and may
    leave the association thread waiting. Here the event is dropped, the reason kept for the closing
    WARNING, and the connection shut down, so the state machine ends through its normal close path.
    """
    machine = assoc.dul.state_machine
    original = machine.do_action

    def do_action(event: str) -> None:
        try:
            original(event)
        except InvalidEventError as error:
            connection.pynetdicom_reason = printable(f"protocol error: {error}", 120)
            reader.shutdown()

    # pynetdicom has no hook for this: the bound method is replaced on this association's machine only.
    machine.do_action = do_action  # type: ignore[method-assign]


def _note_request(event: evt.Event) -> None:
    """EVT_PDU_RECV: remember that pynetdicom decoded an A-ASSOCIATE-RQ (see :meth:`PduReader._ended`)."""
    if getattr(event.pdu, "pdu_type", None) == 0x01 and (connection := connection_of(event.assoc)) is not None:
        connection.request_decoded = True


class GuardedRequestHandler(RequestHandler):
    """Runs one connection: makes the association, installs the guards, and waits for it to end.

    Waiting (``join``) keeps this thread for the life of the connection, so the server's connection
    counts are exact and the closing log line is written once, whatever way the association ended.
    """

    server: GuardedServer

    def handle(self) -> None:
        assoc = self._create_association()
        host, port = str(self.client_address[0]), int(self.client_address[1])
        connection = Connection(host, port)
        _CONNECTIONS[assoc] = connection
        assoc.acse = GuardedACSE(assoc)
        transport = assoc.dul.socket
        if transport is None or transport.socket is None:  # set by _create_association from the accepted socket
            raise RuntimeError("the association has no socket")
        client = transport.socket
        # The DUL reads PDUs through transport.recv: the guarded reader takes its place on this connection.
        reader = PduReader(client, assoc, connection, self.server.limits, self.server.warnings)
        transport.recv = reader  # type: ignore[method-assign]
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        _guard_state_machine(assoc, connection, reader)
        assoc.bind(evt.EVT_PDU_RECV, _note_request)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        try:
            assoc.start()
            assoc.join()
        finally:
            with self.server.association_lock:
                self.server.established.discard(assoc)
            self.server.connection_ended(assoc, connection)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with connection limits and TLS off the accept loop.

    Made by ``AE.make_server(..., server_class=GuardedServer, request_handler=GuardedRequestHandler,
    limits=..., on_connection_end=...)`` with ``ssl_context=None``: TLS is in ``limits.tls`` and done
    here, per connection.
    """

    daemon_threads = True

    def __init__(self, *args: Any, limits: GuardLimits,
                 on_connection_end: Callable[[Connection], None] | None = None, **kwargs: Any) -> None:
        self.limits = limits
        self.warnings = PeerWarnings(logger)
        self.on_connection_end = on_connection_end
        self.association_lock = threading.Lock()
        self.established: set[Association] = set()
        self._count_lock = threading.Lock()
        self._open_total = 0
        self._open_by_host: dict[str, int] = {}
        super().__init__(*args, **kwargs)

    @property
    def open_connections(self) -> int:
        """Connections open now (each holds an association, or is about to)."""
        with self._count_lock:
            return self._open_total

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: no handshake here, so a silent client cannot hold the accept loop."""
        client, address = self.socket.accept()  # type: ignore[union-attr]  # bound before serving starts
        client.settimeout(self.limits.deadline_s)
        return client, address

    def verify_request(self, request: socket.socket, client_address: tuple[str, int]) -> bool:  # type: ignore[override]
        host = str(client_address[0])
        with self._count_lock:
            if self._open_total >= self.limits.max_connections:
                reason = f"{self._open_total} connections open (network.max_connections)"
            elif self._open_by_host.get(host, 0) >= self.limits.max_connections_per_host:
                reason = f"{self._open_by_host[host]} connections open from this address " \
                         "(network.max_connections_per_host)"
            else:
                self._open_total += 1
                self._open_by_host[host] = self._open_by_host.get(host, 0) + 1
                return True
        self.warnings.warning(host, "refused connection from %s:%d: %s", host, int(client_address[1]), reason)
        return False

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        host = str(client_address[0])
        try:
            if self.limits.tls is not None:
                wrapped = self._handshake(request, client_address)
                if wrapped is None:
                    return
                request = wrapped
            self.finish_request(request, client_address)
        except Exception:  # our bug, not the peer's: keep the traceback
            logger.exception("connection from %s:%s: internal error", host, client_address[1])
            self.shutdown_request(request)
        finally:
            with self._count_lock:
                self._open_total -= 1
                left = self._open_by_host.get(host, 1) - 1
                if left > 0:
                    self._open_by_host[host] = left
                else:
                    self._open_by_host.pop(host, None)

    def _handshake(self, request: socket.socket, client_address: tuple[str, int]) -> ssl.SSLSocket | None:
        if self.limits.tls is None:
            return None
        try:
            wrapped = self.limits.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            wrapped.settimeout(self.limits.deadline_s)
            wrapped.do_handshake()
            return wrapped
        except (ssl.SSLError, OSError, ValueError) as error:
            reason = f"no TLS handshake within {self.limits.deadline_s:g} s" if isinstance(error, TimeoutError) \
                else printable(getattr(error, "reason", None) or error, 120)
            self.warnings.warning(str(client_address[0]), "TLS handshake from %s:%d failed: %s", client_address[0],
                                  int(client_address[1]), reason)
            self.shutdown_request(request)
            return None

    def connection_ended(self, assoc: Association, connection: Connection) -> None:
        """The one line about a connection that ended without a WARNING so far (and the stored-instances INFO)."""
        connection.released = connection.established and bool(assoc.is_released) and not assoc.is_aborted
        if not connection.established:
            if not connection.refusal_logged:
                reason = connection.pynetdicom_reason or (
                    f"no A-ASSOCIATE-RQ within {self.limits.deadline_s:g} s or connection closed by the peer"
                    if connection.pdus == 0 else "association not completed")
                self.warnings.warning(connection.host, "connection from %s ended without an association: %s",
                                      connection.peer, reason)
        elif assoc.is_aborted and not connection.refusal_logged:
            self.warnings.warning(connection.host, "association from %s aborted%s", connection.peer,
                                  f": {connection.pynetdicom_reason}" if connection.pynetdicom_reason else "")
        if self.on_connection_end is not None:
            self.on_connection_end(connection)

    def service_actions(self) -> None:
        super().service_actions()
        self.warnings.flush()

    def handle_error(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        # socketserver would print to stderr
        logger.exception("connection from %s: internal error", client_address)
