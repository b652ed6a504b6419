"""The Storage SCP: accept instances from the PACS and acknowledge only what is durably stored.

For each C-STORE the handler writes the received bytes (never decoded and
re-encoded) to a temporary file in the spool, fsyncs it, renames it into
place, fsyncs the folder, records it in the state database, and only then
answers Success. When anything in that chain fails — disk under the reserve,
disk full, I/O error, database error — it answers with an Out of Resources
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

import io
import logging
import shutil
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import from pynetdicom's registry

from models.fileio import fsync_directory, write_atomic
from sct_node.config import NetworkConfig, StorageConfig
from sct_node.dicom.image_writer import IMPLEMENTATION_VERSION_NAME
from sct_node.dicom.sanity import encoding_problem
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    IMPLEMENTATION_CLASS_UID,
    LEGACY_ENHANCED_MR_IMAGE_STORAGE,
    MR_SOP_CLASSES,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    uid_problem,
)
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
from sct_node.node.state import StateStore
from sct_node.node.tls import server_context

if TYPE_CHECKING:
    from sct_node.node.metrics import NodeMetrics

__all__ = ["ACCEPTED_SOP_CLASSES", "ACCEPTED_TRANSFER_SYNTAXES", "StorageSCP", "StorageStatus", "acknowledge_at_once",
           "set_tcp_nodelay"]

logger = logging.getLogger(__name__)


class StorageStatus:
    """C-STORE response statuses we use (PS3.4 Table B.2-1), by name rather than bare hex."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


#: Images for translation and reference data for dosimetric QA; everything else is refused at negotiation.
ACCEPTED_SOP_CLASSES = {str(uid): UID(uid).name for uid in (*MR_SOP_CLASSES, CT_IMAGE_STORAGE, RT_PLAN_STORAGE,
                                                         RT_STRUCTURE_SET_STORAGE, RT_DOSE_STORAGE)}
#: Every transfer syntax the reader can decode (docs/dicom.md). JPEG Lossless (Process 14, and its Selection
#: Value 1 form, the one PACS archives hold MR in) is decoded by python-gdcm (BSD).
ACCEPTED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old scanners)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, Selection Value 1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
]
_IMAGE_SOP_CLASSES = {str(uid) for uid in (*MR_SOP_CLASSES, CT_IMAGE_STORAGE)}
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


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
    """

    def __init__(self, network: NetworkConfig, storage: StorageConfig, state: StateStore, spool: Spool,
                 on_stored: Callable[[], None] | None = None,
                 on_released: Callable[[], None] | None = None, metrics: NodeMetrics | None = None) -> None:
        self.network, self.storage, self.state, self.spool = network, storage, state, spool
        self.on_stored, self.on_released, self.metrics = on_stored, on_released, metrics
        self._server: GuardedServer | None = None
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
            except sqlite3.Error as error:  # the quiet period still completes the series
                logger.error("association from %s: its release could not be recorded: %s", connection.peer, error)

    def _handle_store(self, event: evt.Event) -> int | pydicom.Dataset:
        connection = connection_of(event.assoc)
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            status = self._store(event, sop_uid, connection)
        except Exception:  # the handler is where exceptions stop: log, answer with a named status
            shown = sop_uid if uid_problem(sop_uid) is None else "(invalid UID)"
            logger.exception("instance %s: unexpected error while storing; answered Out of Resources", shown)
            status = _status(StorageStatus.OUT_OF_RESOURCES, "internal error while storing")
        if not isinstance(status, int) and status.Status != StorageStatus.SUCCESS:
            if connection is not None:
                connection.refused_instances += 1
            if self.metrics is not None:
                self.metrics.instance_refused(int(status.Status))
        return status

    def _refuse(self, connection: Connection | None, sop_uid: str, problem: str) -> pydicom.Dataset:
        """Cannot Understand, with the problem as Error Comment and one WARNING naming the peer."""
        shown = sop_uid if uid_problem(sop_uid) is None else "with an invalid SOP Instance UID"
        message, args = "refused instance %s from %s: %s", (shown, connection.peer if connection else "a peer", problem)
        if self._server is not None and connection is not None:  # rate-limited with the peer's other warnings
            self._server.warnings.warning(connection.host, message, *args)
        else:
            logger.warning(message, *args)
        return _status(StorageStatus.CANNOT_UNDERSTAND, problem)

    def _store(self, event: evt.Event, sop_uid: str, connection: Connection | None) -> int | pydicom.Dataset:
        problem = uid_problem(sop_uid, "Affected SOP Instance UID")
        if problem:
            return self._refuse(connection, sop_uid, problem)
        request = event.request
        if not isinstance(request, C_STORE):  # this is the EVT_C_STORE handler: pynetdicom passes its C-STORE
            raise TypeError(f"C-STORE handler called with {type(request).__name__}")
        raw = request.DataSet.getvalue() if request.DataSet is not None else b""
        problem = encoding_problem(raw, str(event.context.transfer_syntax),
                                   int(self.storage.max_instance_mb * 2**20))
        if problem:
            return self._refuse(connection, sop_uid, problem)
        encoded = event.encoded_dataset(include_meta=True)
        reserve_bytes = self.storage.min_free_space_mb * 1024 * 1024
        free_bytes = shutil.disk_usage(self.spool.instances_dir).free
        if free_bytes - len(encoded) < reserve_bytes:
            logger.error("instance %s refused: %.0f MB free, reserve is %.0f MB", sop_uid, free_bytes / 2**20,
                         self.storage.min_free_space_mb)
            return _status(StorageStatus.OUT_OF_RESOURCES, "storage reserve reached")
        try:
            header = pydicom.dcmread(io.BytesIO(encoded))
            problem = _header_problem(header, sop_uid, str(request.AffectedSOPClassUID))
        except Exception as error:  # noqa: BLE001  pydicom raises many types on malformed data
            problem = f"data set cannot be parsed ({type(error).__name__})"
        if problem:
            return self._refuse(connection, sop_uid, problem)

        series_uid = str(header.SeriesInstanceUID)
        final = self.spool.instance_path(series_uid, sop_uid)  # both UIDs were validated above
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # Temporary files live in incoming/, so those of a crash are found and removed at start.
            write_atomic(final, lambda stream: stream.write(encoded), self.spool.incoming_dir, ".part")
            fsync_directory(final.parent)
        except OSError as error:
            logger.error("instance %s not stored: %s; answered Out of Resources", sop_uid, error.strerror or error)
            return _status(StorageStatus.OUT_OF_RESOURCES, "instance could not be written")
        image_type = header.get("ImageType", None)
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        new = self.state.record_instance(
            sop_instance_uid=sop_uid, series_uid=series_uid, sop_class_uid=str(header.SOPClassUID), path=final,
            calling_ae=calling_ae,
            study_uid=str(header.get("StudyInstanceUID", "")) or None,
            modality=str(header.get("Modality", "")) or None,
            description=str(header.get("SeriesDescription", "")) or None,
            image_type="\\".join(image_type) if isinstance(image_type, list | pydicom.multival.MultiValue)
            else (str(image_type) if image_type else None),
            body_part=str(header.get("BodyPartExamined", "")) or None,
            frame_of_reference_uid=_frame_of_reference(header),
            association=connection.association_id if connection is not None else None,
            expected_instances=expected_instances(header),
            acquisition=str(header.get("AcquisitionNumber", "") or "") or None,
        )
        if connection is not None:
            if new:
                connection.stored += 1
            else:
                connection.duplicates += 1
            if series_uid not in connection.series:
                connection.series.append(series_uid)
        logger.debug("stored instance %s of series %s%s", sop_uid, series_uid, "" if new else " (duplicate)")
        if self.metrics is not None:
            self.metrics.instance_stored(new)
        if self.on_stored is not None:
            self.on_stored()
        return StorageStatus.SUCCESS


def expected_instances(header: pydicom.Dataset) -> int | None:
    """How many instances the series of this instance says it holds, or None when the data do not say.

    An Enhanced (or Legacy Converted Enhanced) MR instance holds a whole acquisition in its frames: the series
    has one instance, or the In-Concatenation Total Number (0020,9162) of a concatenation. A classic MR image
    says it with Images in Acquisition (0020,1002), which counts dynamic series' temporal positions too. What
    an instance says only counts when every instance of the series says the same (StateStore.record_instance).
    """
    if str(header.get("SOPClassUID", "")) in (ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE):
        if "ConcatenationUID" in header:
            return _positive_int(header.get("InConcatenationTotalNumber"))
        return 1
    return _positive_int(header.get("ImagesInAcquisition"))


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _log_stored(connection: Connection) -> None:
    """One INFO line per association that stored (or was refused) instances: the first sign of life in set-up."""
    if not (connection.stored or connection.duplicates or connection.refused_instances):
        return
    shown = ", ".join(connection.series[:5]) + (f" and {len(connection.series) - 5} more"
                                                 if len(connection.series) > 5 else "")
    logger.info("association from %s: %d instance(s) stored, %d duplicate(s), %d refused; series %s",
                connection.peer, connection.stored, connection.duplicates, connection.refused_instances,
                shown or "none")


_IDENTIFYING_UIDS = (("SOPInstanceUID", "SOP Instance UID"), ("SOPClassUID", "SOP Class UID"),
                     ("SeriesInstanceUID", "Series Instance UID"), ("StudyInstanceUID", "Study Instance UID"))


def _header_problem(header: pydicom.Dataset, sop_uid: str, sop_class_uid: str) -> str | None:
    """Why an instance cannot be processed, or None."""
    for keyword, name in _IDENTIFYING_UIDS:
        if not header.get(keyword, None):
            return f"{keyword} is missing"
        problem = uid_problem(header.get(keyword), name)
        if problem:
            return problem
    for keyword, name in (("FrameOfReferenceUID", "Frame of Reference UID"),
                          ("TransferSyntaxUID", "Transfer Syntax UID")):
        value = header.get(keyword, None) if keyword != "TransferSyntaxUID" else header.file_meta.get(keyword)
        if value and (problem := uid_problem(value, name)):
            return problem
    if str(header.SOPInstanceUID) != sop_uid:
        return "SOP Instance UID in the data set differs from the C-STORE request"
    if str(header.SOPClassUID) != sop_class_uid:
        return "SOP Class UID in the data set differs from the C-STORE request"
    if sop_class_uid in _IMAGE_SOP_CLASSES:
        if "PixelData" not in header:
            return "image without Pixel Data"
        syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
        if syntax in _NATIVE_SYNTAXES:
            rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
            frames = int(header.get("NumberOfFrames", 1) or 1)
            bits, samples = int(header.get("BitsAllocated", 0) or 0), int(header.get("SamplesPerPixel", 1) or 1)
            expected = rows * columns * frames * samples * bits // 8
            actual = len(header.PixelData)
            if expected == 0 or actual < expected:
                return f"pixel data is {actual} bytes, the header needs {expected} (truncated instance)"
    return None


def _frame_of_reference(header: pydicom.Dataset) -> str | None:
    """The instance's frame of reference; for an RT Structure Set, the one its contours are in."""
    frame = header.get("FrameOfReferenceUID", None)
    if not frame:
        referenced = header.get("ReferencedFrameOfReferenceSequence", None)
        frame = referenced[0].get("FrameOfReferenceUID", None) if referenced else None
    return str(frame) if frame else None


def _status(code: int, comment: str) -> pydicom.Dataset:
    status = pydicom.Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
