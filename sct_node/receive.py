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

The DICOM event handlers are the one place exceptions stop: they are logged
with the SOP Instance UID (never the patient's name or ID) and turned into a
named status.

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
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification

from sct_node.config import NetworkConfig, StorageConfig
from sct_node.dicom.image_writer import IMPLEMENTATION_VERSION_NAME, fsync_directory, write_atomic
from sct_node.dicom.uids import IMPLEMENTATION_CLASS_UID
from sct_node.state import StateStore
from sct_node.tls import server_context

__all__ = ["ACCEPTED_SOP_CLASSES", "ACCEPTED_TRANSFER_SYNTAXES", "StorageStatus", "StorageSCP", "set_tcp_nodelay"]

logger = logging.getLogger(__name__)


class StorageStatus:
    """C-STORE response statuses we use (PS3.4 Table B.2-1), by name rather than bare hex."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


#: Images for translation and reference data for dosimetric QA; everything else is refused at negotiation.
ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
}
#: Every transfer syntax the reader can decode (docs/dicom.md); JPEG Lossless needs an optional plugin, so the
#: sender converts it to one of these instead.
ACCEPTED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old scanners)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
]
_IMAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4",
                      "1.2.840.10008.5.1.4.1.1.2"}
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    Without it every small PDU exchange on loopback can wait for a delayed TCP
    acknowledgement (about 40 ms on Linux), which caps throughput at ~25
    instances per second against dcmtk peers.
    """
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as error:  # socket already gone: nothing to tune
        logger.debug("could not set TCP_NODELAY: %s", error)


def acknowledge_quickly(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for the SCP: answer every received segment with an immediate TCP ACK.

    Our own TCP_NODELAY does not help when the *sender* leaves Nagle's
    algorithm on (dcmtk and Orthanc do by default): it holds the last small
    segment of each C-STORE until our delayed ACK (~40 ms) arrives. Linux
    resets TCP_QUICKACK after a while, so it is set again before every read.
    Measured with a default ``storescu``: 21 -> about 200 instances/s
    (benchmarks/receive_throughput.py). No effect, and no harm, off Linux.
    """
    if not hasattr(socket, "TCP_QUICKACK"):
        return
    try:
        transport = event.assoc.dul.socket
        raw, read = transport.socket, transport.recv
    except AttributeError:
        return

    def recv_with_quickack(nr_bytes: int) -> bytearray:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:  # closed meanwhile: the read below reports it
            pass
        return read(nr_bytes)

    transport.recv = recv_with_quickack


class _CallerCheckingACSE(ACSE):
    """ACSE that also checks the calling host of allowed callers before negotiation.

    pynetdicom checks only the calling AE title (``require_calling_aet``); a
    caller that is allowed from one host only is rejected the same way,
    with A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title
    not recognized), when it comes from another address.
    """

    allowed: dict[str, set[str | None]] = {}

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        title = str(request.calling_ae_title).strip()
        hosts = self.allowed.get(title)
        if self.allowed and (hosts is None or (None not in hosts and self.requestor.address not in hosts)):
            logger.warning("rejected association from AE %s at %s: not an allowed caller", title,
                           self.requestor.address)
            self.send_reject(0x01, 0x01, 0x03)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class StorageSCP:
    """The node's Storage SCP.

    Parameters
    ----------
    network : NetworkConfig
        AE title, address, allowed callers, TLS, association limit.
    storage : StorageConfig
        Spool folder and free-space reserve.
    state : StateStore
        Where stored instances are recorded.
    on_stored : callable or None
        Called after each newly stored instance (e.g. to wake the router).
    """

    def __init__(self, network: NetworkConfig, storage: StorageConfig, state: StateStore,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.network, self.storage, self.state = network, storage, state
        self.instances_dir = Path(storage.spool_dir) / "instances"
        self.incoming_dir = Path(storage.spool_dir) / "incoming"
        self.on_stored = on_stored
        self._server = None
        self._lock = threading.Lock()
        for folder in (self.instances_dir, self.incoming_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Temporary files of instances never acknowledged (a crash while writing): the sender will resend them.
        for stale in self.incoming_dir.glob("*.part"):
            stale.unlink(missing_ok=True)

    def start(self) -> None:
        """Start listening (non-blocking)."""
        ae = AE(ae_title=self.network.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_associations = self.network.max_associations
        ae.network_timeout = self.network.network_timeout_s
        ae.acse_timeout = self.network.network_timeout_s
        ae.dimse_timeout = self.network.network_timeout_s
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        allowed: dict[str, set[str | None]] = {}
        for caller in self.network.allowed_callers or ():
            allowed.setdefault(caller.ae_title, set()).add(caller.host)
        checking_acse = type("_ConfiguredACSE", (_CallerCheckingACSE,), {"allowed": allowed})

        def use_checking_acse(event: evt.Event) -> None:
            set_tcp_nodelay(event)
            acknowledge_quickly(event)
            if event.assoc.is_acceptor:
                event.assoc.acse = checking_acse(event.assoc)

        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_CONN_OPEN, use_checking_acse),
        ]
        ssl_context = server_context(self.network.tls) if self.network.tls else None
        self._server = ae.start_server((self.network.bind_address, self.network.port), block=False,
                                       evt_handlers=handlers, ssl_context=ssl_context)
        logger.info("Storage SCP %s listening on %s:%d%s", self.network.ae_title, self.network.bind_address,
                    self.network.port, " (TLS)" if ssl_context else "")

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.network.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _handle_store(self, event: evt.Event) -> int | pydicom.Dataset:
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            return self._store(event, sop_uid)
        except Exception:  # the handler is where exceptions stop: log, answer with a named status
            logger.exception("instance %s: unexpected error while storing; answered Out of Resources", sop_uid)
            return _status(StorageStatus.OUT_OF_RESOURCES, "internal error while storing")

    def _store(self, event: evt.Event, sop_uid: str) -> int | pydicom.Dataset:
        encoded = event.encoded_dataset(include_meta=True)
        reserve_bytes = self.storage.min_free_space_mb * 1024 * 1024
        free_bytes = shutil.disk_usage(self.instances_dir).free
        if free_bytes - len(encoded) < reserve_bytes:
            logger.error("instance %s refused: %.0f MB free, reserve is %.0f MB", sop_uid, free_bytes / 2**20,
                         self.storage.min_free_space_mb)
            return _status(StorageStatus.OUT_OF_RESOURCES, "storage reserve reached")
        try:
            header = pydicom.dcmread(io.BytesIO(encoded))
            problem = _header_problem(header, sop_uid, str(event.request.AffectedSOPClassUID))
        except Exception as error:  # pydicom raises many types on malformed data
            problem = f"data set cannot be parsed ({type(error).__name__})"
        if problem:
            logger.warning("instance %s refused: %s", sop_uid, problem)
            return _status(StorageStatus.CANNOT_UNDERSTAND, problem)

        series_uid = str(header.SeriesInstanceUID)
        folder = self.instances_dir / series_uid
        final = folder / f"{sop_uid}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Temporary files live in incoming/, so those of a crash are found and removed at start.
            write_atomic(final, lambda stream: stream.write(encoded), self.incoming_dir, ".part")
            fsync_directory(folder)
        except OSError as error:
            logger.error("instance %s not stored: %s; answered Out of Resources", sop_uid, error.strerror or error)
            return _status(StorageStatus.OUT_OF_RESOURCES, "instance could not be written")
        image_type = header.get("ImageType", None)
        new = self.state.record_instance(
            sop_instance_uid=sop_uid, series_uid=series_uid, sop_class_uid=str(header.SOPClassUID), path=final,
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            study_uid=str(header.get("StudyInstanceUID", "")) or None,
            modality=str(header.get("Modality", "")) or None,
            description=str(header.get("SeriesDescription", "")) or None,
            image_type="\\".join(image_type) if isinstance(image_type, list | pydicom.multival.MultiValue)
            else (str(image_type) if image_type else None),
            body_part=str(header.get("BodyPartExamined", "")) or None,
            frame_of_reference_uid=_frame_of_reference(header),
        )
        logger.debug("stored instance %s of series %s%s", sop_uid, series_uid, "" if new else " (duplicate)")
        if self.on_stored is not None:
            self.on_stored()
        return StorageStatus.SUCCESS


def _header_problem(header: pydicom.Dataset, sop_uid: str, sop_class_uid: str) -> str | None:
    """Why an instance cannot be processed, or None."""
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not header.get(keyword, None):
            return f"{keyword} is missing"
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
