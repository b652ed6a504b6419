"""Store one received instance durably: the one path every way in shares (C-STORE, STOW-RS, C-GET).

:meth:`InstanceStore.store` takes the instance as a DICOM Part 10 byte string
(file meta and data set, exactly as received: never decoded and re-encoded),
checks it, writes it to the spool (temporary file, fsync, rename, fsync of the
folder), records it in the state database, and only then says Success. The
caller answers its peer with that outcome: a C-STORE response status, a STOW-RS
Referenced or Failed SOP Sequence item. So an instance is acknowledged only
once it is durable, whichever protocol brought it.

The checks, in order: the SOP Instance UID is a valid UID (nothing else from
the network becomes a path, :class:`sct_node.node.spool.Spool`); the data set's
element lengths stay within the data and the largest accepted size
(:func:`sct_node.dicom.sanity.encoding_problem`); the free space stays above
the reserve; the header parses and its identifying UIDs are valid and agree
with what the protocol said (:func:`header_problem`); an image's pixel data
is as long as its header needs. A refusal is Cannot Understand (0xC000) with
a comment naming the problem; a disk or database failure is Out of Resources
(0xA700), so the sender keeps the instance and sends it again later.

References
----------
DICOM PS3.4 B.2.3 (Storage SOP Class statuses); PS3.18 10.5 (STOW-RS) and
PS3.4 Annex C.4.3 (C-GET), which answer with the same statuses.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID

from models.fileio import fsync_directory, write_atomic
from sct_node.config import StorageConfig
from sct_node.dicom.sanity import encoding_problem
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_ENHANCED_MR_IMAGE_STORAGE,
    MR_SOP_CLASSES,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    uid_problem,
)
from sct_node.node.spool import Spool
from sct_node.node.state import StateStore

if TYPE_CHECKING:
    from sct_node.node.metrics import NodeMetrics

__all__ = ["ACCEPTED_SOP_CLASSES", "ACCEPTED_TRANSFER_SYNTAXES", "InstanceSource", "InstanceStore", "StorageStatus",
           "StoreOutcome", "expected_instances", "header_problem", "part10_parts"]

logger = logging.getLogger(__name__)


class StorageStatus:
    """Storage statuses we use (PS3.4 Table B.2-1), by name rather than bare hex."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    #: STOW-RS (PS3.18 Table 10.5.3-1 via PS3.4): SOP Class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122


#: Images for translation and reference data for dosimetric QA; everything else is refused.
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


@dataclass(frozen=True)
class InstanceSource:
    """Who sent an instance, for the state database and the logs.

    ``calling_ae`` is the sender's AE title for DIMSE, and for STOW-RS the name under which the request was
    authenticated, prefixed ``STOW:``. ``association`` groups the instances of one association or one STOW-RS
    request for the association completion rule (:meth:`StateStore.association_released`). ``peer`` names the
    sender in log lines; ``host`` is its address, the key of the per-peer warning rate limit.
    """

    calling_ae: str
    peer: str
    host: str
    association: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    """What :meth:`InstanceStore.store` did: the status to answer with, why when it is not Success."""

    status: int
    comment: str = ""
    #: Newly stored (False: a duplicate of an instance already stored, which is Success too).
    new: bool = False
    series_uid: str | None = None

    @property
    def stored(self) -> bool:
        return self.status == StorageStatus.SUCCESS


#: Logs a refusal once per peer within its rate limit: (host, message, *args).
WarningSink = Callable[..., None]


class InstanceStore:
    """Checks, writes and records received instances (see the module docstring).

    Parameters
    ----------
    storage : StorageConfig
        Free-space reserve and largest data set.
    state : StateStore
        Where stored instances are recorded.
    spool : Spool
        Where they are written (the one place spool paths are made).
    on_stored : callable or None
        Called after each newly stored instance (e.g. to wake the router).
    metrics : NodeMetrics or None
        Counts stored, duplicate and refused instances.
    warn : callable or None
        ``warn(host, message, *args)``: logs a refusal as a WARNING, rate-limited per peer (the Storage SCP's
        netguard limiter); default: logged every time.
    """

    def __init__(self, storage: StorageConfig, state: StateStore, spool: Spool,
                 on_stored: Callable[[], None] | None = None, metrics: NodeMetrics | None = None,
                 warn: WarningSink | None = None) -> None:
        self.storage, self.state, self.spool = storage, state, spool
        self.on_stored, self.metrics, self.warn = on_stored, metrics, warn

    @property
    def max_instance_bytes(self) -> int:
        return int(self.storage.max_instance_mb * 2**20)

    def store(self, encoded: bytes, source: InstanceSource, *, sop_uid: str | None = None,
              sop_class_uid: str | None = None, dataset_offset: int | None = None,
              expected_study: str | None = None) -> StoreOutcome:
        """Store one Part 10 instance; never raises (an unexpected error is logged and is Out of Resources).

        ``sop_uid`` and ``sop_class_uid`` are what the protocol said (a C-STORE request's Affected SOP
        Instance and Class UIDs); the data set must agree. Without them (STOW-RS), the file meta's Media
        Storage SOP Instance and Class UIDs are what the data set must agree with, and the SOP class and
        transfer syntax must be ones the node accepts (C-STORE settles both at association negotiation).
        ``dataset_offset`` is where the data set starts after the file meta, when the caller knows it.
        ``expected_study``: the study the request named (STOW-RS ``POST /studies/{study}``); an instance of
        another study is refused.
        """
        shown = sop_uid if sop_uid and uid_problem(sop_uid) is None else "(not yet known)"
        try:
            outcome = self._store(encoded, source, sop_uid, sop_class_uid, dataset_offset, expected_study)
        except Exception:  # the one place exceptions of storing stop: log, answer with a named status
            logger.exception("instance %s: unexpected error while storing; answered Out of Resources", shown)
            outcome = StoreOutcome(StorageStatus.OUT_OF_RESOURCES, "internal error while storing")
        if not outcome.stored and self.metrics is not None:
            self.metrics.instance_refused(outcome.status)
        return outcome

    def _refuse(self, source: InstanceSource, sop_uid: str, problem: str,
                status: int = StorageStatus.CANNOT_UNDERSTAND) -> StoreOutcome:
        """A refusal with the problem as its comment and one WARNING naming the peer."""
        shown = sop_uid if uid_problem(sop_uid) is None else "with an invalid SOP Instance UID"
        message, args = "refused instance %s from %s: %s", (shown, source.peer, problem)
        if self.warn is not None:
            self.warn(source.host, message, *args)
        else:
            logger.warning(message, *args)
        return StoreOutcome(status, problem)

    def _store(self, encoded: bytes, source: InstanceSource, sop_uid: str | None, sop_class_uid: str | None,
               dataset_offset: int | None, expected_study: str | None) -> StoreOutcome:
        protocol_said = sop_uid is not None
        if protocol_said and (problem := uid_problem(sop_uid, "Affected SOP Instance UID")):
            return self._refuse(source, sop_uid or "", problem)
        try:
            meta, offset = _file_meta(encoded)
        except ValueError as error:
            return self._refuse(source, sop_uid or "", str(error))
        if dataset_offset is not None:
            offset = dataset_offset
        if not protocol_said:
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
            sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
        assert sop_uid is not None and sop_class_uid is not None
        problem = uid_problem(sop_uid, "SOP Instance UID" if not protocol_said else "Affected SOP Instance UID")
        if problem:
            return self._refuse(source, sop_uid, problem)
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if not protocol_said:
            if sop_class_uid not in ACCEPTED_SOP_CLASSES:
                return self._refuse(source, sop_uid, f"SOP class {_named(sop_class_uid)} is not accepted (the node "
                                    "takes MR images and CT, RT Plan, RT Structure Set and RT Dose as reference "
                                    "data)", StorageStatus.SOP_CLASS_NOT_SUPPORTED)
            if syntax not in ACCEPTED_TRANSFER_SYNTAXES:
                return self._refuse(source, sop_uid, f"transfer syntax {_named(syntax)} is not accepted")
        problem = encoding_problem(encoded[offset:], syntax, self.max_instance_bytes)
        if problem:
            return self._refuse(source, sop_uid, problem)
        reserve_bytes = self.storage.min_free_space_mb * 1024 * 1024
        free_bytes = shutil.disk_usage(self.spool.instances_dir).free
        if free_bytes - len(encoded) < reserve_bytes:
            logger.error("instance %s refused: %.0f MB free, reserve is %.0f MB", sop_uid, free_bytes / 2**20,
                         self.storage.min_free_space_mb)
            return StoreOutcome(StorageStatus.OUT_OF_RESOURCES, "storage reserve reached")
        try:
            header = pydicom.dcmread(io.BytesIO(encoded))
            problem = header_problem(header, sop_uid, sop_class_uid,
                                     "the C-STORE request" if protocol_said else "its file meta information")
        except Exception as error:  # noqa: BLE001  pydicom raises many types on malformed data
            problem = f"data set cannot be parsed ({type(error).__name__})"
        if not problem and expected_study is not None and str(header.StudyInstanceUID) != expected_study:
            problem = "Study Instance UID differs from the study the request names"
        if problem:
            return self._refuse(source, sop_uid, problem)

        series_uid = str(header.SeriesInstanceUID)
        final = self.spool.instance_path(series_uid, sop_uid)  # both UIDs were validated above
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # Temporary files live in incoming/, so those of a crash are found and removed at start.
            write_atomic(final, lambda stream: stream.write(encoded), self.spool.incoming_dir, ".part")
            fsync_directory(final.parent)
        except OSError as error:
            logger.error("instance %s not stored: %s; answered Out of Resources", sop_uid, error.strerror or error)
            return StoreOutcome(StorageStatus.OUT_OF_RESOURCES, "instance could not be written")
        image_type = header.get("ImageType", None)
        new = self.state.record_instance(
            sop_instance_uid=sop_uid, series_uid=series_uid, sop_class_uid=str(header.SOPClassUID), path=final,
            calling_ae=source.calling_ae,
            study_uid=str(header.get("StudyInstanceUID", "")) or None,
            modality=str(header.get("Modality", "")) or None,
            description=str(header.get("SeriesDescription", "")) or None,
            image_type="\\".join(image_type) if isinstance(image_type, list | pydicom.multival.MultiValue)
            else (str(image_type) if image_type else None),
            body_part=str(header.get("BodyPartExamined", "")) or None,
            frame_of_reference_uid=_frame_of_reference(header),
            association=source.association,
            expected_instances=expected_instances(header),
            acquisition=str(header.get("AcquisitionNumber", "") or "") or None,
        )
        logger.debug("stored instance %s of series %s%s", sop_uid, series_uid, "" if new else " (duplicate)")
        if self.metrics is not None:
            self.metrics.instance_stored(new)
        if self.on_stored is not None:
            self.on_stored()
        return StoreOutcome(StorageStatus.SUCCESS, new=new, series_uid=series_uid)


def _file_meta(encoded: bytes) -> tuple[pydicom.dataset.FileMetaDataset, int]:
    """The file meta information of a Part 10 byte string and where its data set starts.

    Raises
    ------
    ValueError
        If it is not a Part 10 file (no 'DICM' after the 128-byte preamble) or its meta cannot be read.
    """
    if len(encoded) < 132 or encoded[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 instance (no 'DICM' after the 128-byte preamble)")
    stream = io.BytesIO(encoded)
    stream.seek(132)
    try:
        meta = pydicom.filereader._read_file_meta_info(stream)
    except Exception as error:  # pydicom raises many types on malformed data
        raise ValueError(f"file meta information cannot be read ({type(error).__name__})") from error
    if "TransferSyntaxUID" not in meta:
        raise ValueError("file meta information has no Transfer Syntax UID")
    return meta, stream.tell()


def part10_parts(encoded: bytes) -> tuple[str, str, str]:
    """A Part 10 instance's (SOP Instance UID, SOP Class UID, transfer syntax) from its file meta, or ('', '',
    '') when it has none: what a STOW-RS response names a part by."""
    try:
        meta, _ = _file_meta(encoded)
    except ValueError:
        return "", "", ""
    return (str(meta.get("MediaStorageSOPInstanceUID", "") or ""), str(meta.get("MediaStorageSOPClassUID", "") or ""),
            str(meta.get("TransferSyntaxUID", "") or ""))


def _named(uid: str) -> str:
    """A UID for a message: its registered name when pydicom knows it, else the UID (already validated or
    short)."""
    name = UID(uid).name if uid and uid_problem(uid) is None else ""
    return f"{name} ({uid})" if name and name != uid else (uid if uid_problem(uid) is None else "(invalid UID)")


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


_IDENTIFYING_UIDS = (("SOPInstanceUID", "SOP Instance UID"), ("SOPClassUID", "SOP Class UID"),
                     ("SeriesInstanceUID", "Series Instance UID"), ("StudyInstanceUID", "Study Instance UID"))


def header_problem(header: pydicom.Dataset, sop_uid: str, sop_class_uid: str,
                   said_by: str = "the C-STORE request") -> str | None:
    """Why an instance cannot be processed, or None. ``said_by`` names where ``sop_uid`` and ``sop_class_uid``
    came from, for the message when the data set disagrees."""
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
        return f"SOP Instance UID in the data set differs from {said_by}"
    if str(header.SOPClassUID) != sop_class_uid:
        return f"SOP Class UID in the data set differs from {said_by}"
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
