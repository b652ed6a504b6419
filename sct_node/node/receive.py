"""The Storage SCP: accept instances from the PACS and acknowledge only what is durably stored.

For each C-STORE the handler writes the received bytes (never decoded and
re-encoded) to a temporary file in the spool, fsyncs it, renames it into
place, fsyncs the folder, records it in the state database, and only then
answers Success; it does so through :class:`sct_node.node.store.InstanceStore`,
the one storage path that STOW-RS and C-GET share. When anything in that
chain fails — disk under the reserve, disk full, I/O error, database
error — it answers with an Out of Resources
failure, so the sender keeps the instance and sends it again later. An
instance that cannot be understood (no UIDs, pixel data shorter than its
header says) gets a Cannot Understand failure naming why, and nothing else
of its series is affected.

Nothing from the network becomes a path unless it is a valid UID
(:func:`sct_node.dicom.uids.uid_problem`); spool paths are made by
:class:`sct_node.node.spool.Spool`. An instance with an invalid UID, or with an
element whose declared length runs past the data
(:func:`sct_node.dicom.sanity.encoding_problem`), is refused with a
Cannot Understand status (0xC000) and a comment naming what is wrong, and
logged once as a WARNING naming the peer. What a peer can do before and
around that (connections, PDU sizes and deadlines, TLS, the allow-list)
is bounded by :mod:`sct_node.node.netguard`.

The DICOM event handlers are the one place exceptions stop: they are logged
with the SOP Instance UID (never the patient's name or ID) and turned into a
named status. Each association that stored instances gets one INFO line
(calling AE, address, counts, series UIDs).

References
----------
DICOM PS3.4 B.2.3 (Storage SOP Class statuses); PS3.8 9.3.4 (A-ASSOCIATE-RJ);
pynetdicom "Storage SCP" and ``event.encoded_dataset`` documentation.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import pydicom
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import from pynetdicom's registry

from sct_node.config import NetworkConfig, StorageConfig
from sct_node.dicom.image_writer import IMPLEMENTATION_VERSION_NAME
from sct_node.dicom.uids import IMPLEMENTATION_CLASS_UID, uid_problem
from sct_node.node.netguard import (
    Connection,
    GuardedRequestHandler,
    GuardedServer,
    GuardLimits,
    connection_of,
    install_noise_filter,
    relax_uid_validation,
)
from sct_node.node.spool import Spool
from sct_node.node.state import StateStore, database_errors
from sct_node.node.store import (
    ACCEPTED_SOP_CLASSES,
    ACCEPTED_TRANSFER_SYNTAXES,
    InstanceSource,
    InstanceStore,
    StorageStatus,
    StoreOutcome,
    expected_instances,
)
from sct_node.node.tls import server_context

if TYPE_CHECKING:
    from sct_node.node.commitment import CommitmentRegistry
    from sct_node.node.metrics import NodeMetrics

__all__ = ["ACCEPTED_SOP_CLASSES", "ACCEPTED_TRANSFER_SYNTAXES", "StorageSCP", "StorageStatus", "acknowledge_at_once",
           "expected_instances", "set_tcp_nodelay"]

logger = logging.getLogger(__name__)


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    Without it every small PDU exchange on loopback can wait for a delayed TCP
    acknowledgement (about 40 ms on Linux), which caps throughput at ~25
    instances per second against dcmtk peers.
    """
    try:
        transport = event.assoc.dul.socket
        if transport is None or transport.socket is None:  # socket already gone: nothing to tune
            return
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as error:
        logger.debug("could not set TCP_NODELAY: %s", error)


def acknowledge_at_once(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler of an association the node requests: TCP_QUICKACK before every read.

    A peer that leaves Nagle's algorithm on (dcmtk's and Orthanc's default) holds its C-STORE response
    until its previous segment is acknowledged, and Linux delays that acknowledgement (about 40 ms) when
    the node has nothing to send back yet: one delay per instance. TCP_QUICKACK acknowledges at once, but
    the kernel clears it again, so it is set before each read of this association's socket (the Storage
    SCP's reader does the same, sct_node.node.netguard.PduReader). Measured delivering a 105-object bundle
    to a default ``storescp``: 4.7 s without, 0.4 s with (benchmarks/latency.py). No effect without
    TCP_QUICKACK (not Linux) or under TLS (the TLS layer reads on its own).
    """
    transport = event.assoc.dul.socket
    raw = transport.socket if transport is not None else None
    if transport is None or raw is None or not hasattr(socket, "TCP_QUICKACK") or isinstance(raw, ssl.SSLSocket):
        return
    read = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:  # the socket is closing: the read itself will say so
            pass
        return read(nr_bytes)

    transport.recv = recv  # type: ignore[method-assign]  # this association's socket only


class StorageSCP:
    """The node's Storage SCP.

    Parameters
    ----------
    network : NetworkConfig
        AE title, address, allowed callers, TLS, connection and association limits, timeouts.
    storage : StorageConfig
        Free-space reserve and largest data set.
    state : StateStore
        Where stored instances are recorded.
    spool : Spool
        Where they are written (the one place spool paths are made).
    on_stored : callable or None
        Called after each newly stored instance (e.g. to wake the router).
    on_released : callable or None
        Called when an association that stored something was released normally and its release recorded (the
        association completion rule may fire after its grace).
    metrics : NodeMetrics or None
        Counts stored, duplicate and refused instances.
    commitments : CommitmentRegistry or None
        Pending storage commitments of deliveries: the SCP then also accepts their N-EVENT-REPORTs, on the
        associations destinations open to report (:meth:`CommitmentRegistry.serve_reports`).
    """

    def __init__(self, network: NetworkConfig, storage: StorageConfig, state: StateStore, spool: Spool,
                 on_stored: Callable[[], None] | None = None,
                 on_released: Callable[[], None] | None = None, metrics: NodeMetrics | None = None,
                 commitments: CommitmentRegistry | None = None) -> None:
        self.commitments = commitments
        self.network, self.storage, self.state, self.spool = network, storage, state, spool
        self.on_stored, self.on_released, self.metrics = on_stored, on_released, metrics
        self._server: GuardedServer | None = None
        #: The one storage path, shared with the other ways in (STOW-RS, C-GET).
        self.store = InstanceStore(storage, state, spool, on_stored=on_stored, metrics=metrics, warn=self._warn)
        spool.make_folders()
        # Temporary files of instances never acknowledged (a crash while writing): the sender will resend them.
        for stale in spool.incoming_dir.glob("*.part"):
            stale.unlink(missing_ok=True)

    def start(self) -> None:
        """Start listening (non-blocking)."""
        ae = AE(ae_title=self.network.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        # pynetdicom counts every connection, even one that never asked for an association, against
        # maximum_associations; the guard counts connections and established associations itself.
        ae.maximum_associations = self.network.max_connections
        ae.network_timeout = self.network.network_timeout_s
        ae.acse_timeout = self.network.network_timeout_s
        ae.dimse_timeout = self.network.network_timeout_s
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        allowed: dict[str, set[str | None]] = {}
        for caller in self.network.allowed_callers or ():
            allowed.setdefault(caller.ae_title, set()).add(caller.host)
        limits = GuardLimits(
            max_connections=self.network.max_connections,
            max_connections_per_host=self.network.max_connections_per_host,
            max_associations=self.network.max_associations,
            deadline_s=self.network.network_timeout_s,
            max_message_bytes=int(self.storage.max_instance_mb * 2**20),
            allowed={title: frozenset(hosts) for title, hosts in allowed.items()} or None,
            tls=server_context(self.network.tls) if self.network.tls else None,
        )
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
        ]
        if self.commitments is not None:  # a destination reports storage commitment on an association of its own
            self.commitments.serve_reports(ae, handlers, warn=self._warn)
        install_noise_filter()
        relax_uid_validation()
        server = ae.make_server((self.network.bind_address, self.network.port), evt_handlers=handlers,
                                server_class=GuardedServer, request_handler=GuardedRequestHandler,
                                limits=limits, on_connection_end=self._connection_ended)
        # What AE.start_server(block=False) does: serve in a daemon thread, and register the server so
        # that server.shutdown() (which removes itself from ae._servers) works.
        thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{datetime.now():%H%M%S}",
                                  daemon=True)
        thread.start()
        ae._servers.append(server)
        assert isinstance(server, GuardedServer)  # made by server_class above
        self._server = server
        logger.info("Storage SCP %s listening on %s:%d%s", self.network.ae_title, self.network.bind_address,
                    self.port, " (TLS)" if limits.tls else "")

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.network.port

    @property
    def server(self) -> GuardedServer | None:
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _connection_ended(self, connection: Connection) -> None:
        """The log line about what the association stored; a normal release may complete its series."""
        _log_stored(connection)
        if connection.released and (connection.stored or connection.duplicates):
            try:
                if self.state.association_released(connection.association_id) and self.on_released is not None:
                    self.on_released()  # the association rule may fire after its grace
            except database_errors() as error:  # the quiet period still completes the series
                logger.error("association from %s: its release could not be recorded: %s", connection.peer, error)

    def _handle_store(self, event: evt.Event) -> int | pydicom.Dataset:
        connection = connection_of(event.assoc)
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            outcome = self._store(event, sop_uid, connection)
        except Exception:  # the handler is where exceptions stop: log, answer with a named status
            shown = sop_uid if uid_problem(sop_uid) is None else "(invalid UID)"
            logger.exception("instance %s: unexpected error while storing; answered Out of Resources", shown)
            outcome = StoreOutcome(StorageStatus.OUT_OF_RESOURCES, "internal error while storing")
            if self.metrics is not None:
                self.metrics.instance_refused(outcome.status)
        if connection is not None:
            if not outcome.stored:
                connection.refused_instances += 1
            elif outcome.new:
                connection.stored += 1
            else:
                connection.duplicates += 1
            if outcome.series_uid and outcome.series_uid not in connection.series:
                connection.series.append(outcome.series_uid)
        return StorageStatus.SUCCESS if outcome.stored else _status(outcome.status, outcome.comment)

    def _warn(self, host: str, message: str, *args: object) -> None:
        """A refusal's WARNING, rate-limited with the peer's other warnings."""
        if self._server is not None:
            self._server.warnings.warning(host, message, *args)
        else:
            logger.warning(message, *args)

    def _store(self, event: evt.Event, sop_uid: str, connection: Connection | None) -> StoreOutcome:
        source = InstanceSource(calling_ae=str(event.assoc.requestor.ae_title).strip(),
                                peer=connection.peer if connection is not None else "a peer",
                                host=connection.host if connection is not None else "",
                                association=connection.association_id if connection is not None else None)
        if uid_problem(sop_uid):  # refused before pynetdicom puts it in a file meta
            return self.store.store(b"", source, sop_uid=sop_uid, sop_class_uid="")
        request = event.request
        if not isinstance(request, C_STORE):  # this is the EVT_C_STORE handler: pynetdicom passes its C-STORE
            raise TypeError(f"C-STORE handler called with {type(request).__name__}")
        raw_length = len(request.DataSet.getvalue()) if request.DataSet is not None else 0
        encoded = event.encoded_dataset(include_meta=True)
        return self.store.store(encoded, source, sop_uid=sop_uid, sop_class_uid=str(request.AffectedSOPClassUID),
                                dataset_offset=len(encoded) - raw_length)


def _log_stored(connection: Connection) -> None:
    """One INFO line per association that stored (or was refused) instances: the first sign of life in set-up."""
    if not (connection.stored or connection.duplicates or connection.refused_instances):
        return
    shown = ", ".join(connection.series[:5]) + (f" and {len(connection.series) - 5} more"
                                                 if len(connection.series) > 5 else "")
    logger.info("association from %s: %d instance(s) stored, %d duplicate(s), %d refused; series %s",
                connection.peer, connection.stored, connection.duplicates, connection.refused_instances,
                shown or "none")


def _status(code: int, comment: str) -> pydicom.Dataset:
    status = pydicom.Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
