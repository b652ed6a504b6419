"""Storage Commitment Push Model as SCU: a delivery is done only when the destination commits to keep it.

A destination with ``storage_commitment`` on (:class:`sct_node.config.DestinationConfig`) is asked, after the
C-STOREs of a delivery, to take over responsibility for every instance of the job's bundle; the delivery counts
as done only once it says, for every one of them, that it has. The exchange (PS3.4 J.3):

1. On the delivery's association, right after the C-STOREs, the node sends an N-ACTION (Request Storage
   Commitment, Action Type ID 1) to the well-known SOP Instance, with a new Transaction UID and the Referenced
   SOP Sequence: every instance of the bundle the destination received, the sCT images sent ahead on their own
   association included (:meth:`CommitmentRegistry.prepare` lists them with the same
   :func:`~sct_node.node.dispatch.ordered_outputs` the delivery uses).
2. The destination answers the N-ACTION at once: it has accepted the *request*, nothing more.
3. Later it sends an N-EVENT-REPORT with the same Transaction UID: Event Type ID 1, every instance committed
   (Referenced SOP Sequence), or 2, some failed (Failed SOP Sequence, each with a Failure Reason). It comes
   either on the delivery's association while that is still open, or on a new association that the
   destination opens to the node's Storage SCP, proposing the Storage Commitment Push Model with itself in the
   SCP role (SCP/SCU Role Selection); Orthanc always does the latter, right after its N-ACTION response.

The node keeps the delivery's association open for at most :data:`SAME_ASSOCIATION_WAIT_S` after the N-ACTION
response, for a destination that reports on it, then releases it and waits out the rest of the destination's
``commitment_timeout_s`` for a report on a new association. :class:`CommitmentRegistry` joins the two sides:
the dispatcher registers a transaction before it sends the N-ACTION (the report may overtake the response), the
N-EVENT-REPORT handler — bound on the delivery's association and on the Storage SCP
(:meth:`CommitmentRegistry.serve_reports`) — files the report under its Transaction UID, and the waiting
dispatcher takes it from there. The dispatcher waits in line, so ``commitment_timeout_s`` is bounded (600 s):
a destination that commits only after it has migrated the instances to long-term storage, hours later, is not
one to ask.

Failure is a failed delivery (:class:`CommitmentError`, a :class:`~sct_node.node.dispatch.DeliveryError`),
retried with the dispatcher's backoff: the Storage Commitment context not accepted (checked before anything is
sent), the N-ACTION refused or not answered (Orthanc aborts the association when the node's modality entry does
not allow storage commitment), no report within ``commitment_timeout_s``, or a report that leaves an instance
uncommitted — failed, with its Failure Reason named, or not mentioned at all. The Event Type ID is checked to be
1 or 2, but the sequences decide: a report is a success only when every requested instance, with its SOP Class,
is in its Referenced SOP Sequence and its Failed SOP Sequence is empty.

A report the handler cannot use is refused with a named status and one WARNING naming the peer: a Transaction UID
that is unknown — never requested, or given up after its timeout (the log says it came late) — gets Invalid
Argument Value (a repeat of a report already filed is answered Success again and changes nothing); one for a
transaction of another destination, by AE title, gets Refused: Not Authorised; an Event Type ID other than 1 or
2, No Such Event Type; a SOP Instance other than the well-known one, No Such SOP Instance; an Event Information
that cannot be decoded, Processing Failure. Who may open an association to the Storage SCP at all is decided
before that by ``network.allowed_callers`` (:mod:`sct_node.node.netguard`): a destination that reports on a new
association must be listed there, and :meth:`CommitmentRegistry.for_config` warns at start when it is not.

Restarts: transactions live in memory only, and the delivery is recorded done only after a report committed
everything. A node that stops while waiting leaves the delivery pending; at start it is attempted again — re-sent
(harmless: output UIDs are deterministic) and re-requested under a new Transaction UID; a late report of the old
transaction is refused as unknown. A Transaction UID is therefore never reused (PS3.4 J.3.2.1.1.2 lists a
Duplicate Transaction UID failure): :func:`transaction_uid` derives it from the job, destination and attempt and
128 random bits.

References
----------
DICOM PS3.4 Annex J (Storage Commitment Service Class): J.3.2 (N-ACTION, Request Storage Commitment), J.3.3
(N-EVENT-REPORT, Event Type IDs), Table J.3-2 (Failure Reason values); PS3.7 10.1.1 (N-EVENT-REPORT), 10.1.4
(N-ACTION), Annex C (status codes), D.3.3.4 (SCP/SCU Role Selection); pynetdicom, "Storage Commitment Service
Class" and ``evt.EVT_N_EVENT_REPORT``; Orthanc Book, "DICOM storage commitment".
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STORAGE_COMMITMENT_SERVICE_CLASS_STATUS, code_to_category

from sct_node.config import DestinationConfig, NodeConfig
from sct_node.dicom.uids import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
    derive_uid,
    uid_problem,
)
from sct_node.node.dispatch import DeliveryError, ordered_outputs
from sct_node.node.state import database_errors

if TYPE_CHECKING:
    from sct_node.node.state import StateStore

__all__ = ["SAME_ASSOCIATION_WAIT_S", "Commitment", "CommitmentError", "CommitmentRegistry", "CommitmentReport",
           "EventType", "FailedInstance", "FailureReason", "Instance", "ReportStatus", "describe_reason",
           "transaction_uid"]

logger = logging.getLogger(__name__)

#: How long the delivery's association is kept open after the N-ACTION response for a report on it (s): long
#: enough for a destination that looks its instances up and reports at once on the same association, short
#: enough not to hold one of its associations for nothing. A report on a new association (Orthanc's way) ends
#: the wait as soon as it is in, so this costs only a destination that reports late, and then only once.
SAME_ASSOCIATION_WAIT_S = 5.0
#: Transfer syntaxes offered and accepted for the Storage Commitment context (small data sets: no compression).
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
#: Finished transactions remembered, so that a late report is logged as late and a repeated one answered again.
_ENDED_KEPT = 256


class CommitmentError(DeliveryError):
    """The destination did not commit to keep every instance; the message says which, how many and why."""


class EventType(IntEnum):
    """N-EVENT-REPORT Event Type ID of the Storage Commitment Push Model (PS3.4 J.3.3)."""

    ALL_COMMITTED = 1
    SOME_FAILED = 2


#: N-ACTION Action Type ID: Request Storage Commitment (PS3.4 J.3.2).
REQUEST_STORAGE_COMMITMENT = 1


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) of an item of the Failed SOP Sequence (PS3.4 Table J.3-2)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213


_REASON_NAMES = {
    FailureReason.PROCESSING_FAILURE: "Processing failure",
    FailureReason.NO_SUCH_OBJECT_INSTANCE: "No such object instance",
    FailureReason.CLASS_INSTANCE_CONFLICT: "Class/Instance conflict",
    FailureReason.REFERENCED_SOP_CLASS_NOT_SUPPORTED: "Referenced SOP Class not supported",
    FailureReason.DUPLICATE_TRANSACTION_UID: "Duplicate transaction UID",
    FailureReason.RESOURCE_LIMITATION: "Resource limitation",
}


def describe_reason(code: int | None) -> str:
    """A Failure Reason as its code and name, e.g. ``0x0112 No such object instance``."""
    if code is None:
        return "no Failure Reason"
    try:
        return f"0x{code:04X} {_REASON_NAMES[FailureReason(code)]}"
    except ValueError:
        return f"0x{code:04X} (not a Failure Reason of PS3.4 Table J.3-2)"


class ReportStatus:
    """N-EVENT-REPORT response statuses the handler answers (PS3.7 10.1.1.1.8 and Annex C), by name."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    INVALID_ARGUMENT_VALUE = 0x0115
    NOT_AUTHORISED = 0x0124


@dataclass(frozen=True)
class Instance:
    """One instance the destination is asked to commit to (its SOP Class and SOP Instance UIDs)."""

    sop_class_uid: str
    sop_instance_uid: str

    def __str__(self) -> str:
        return f"{UID(self.sop_class_uid).name} {self.sop_instance_uid}"


@dataclass(frozen=True)
class FailedInstance:
    """An item of a report's Failed SOP Sequence."""

    instance: Instance
    reason: int | None


@dataclass(frozen=True)
class CommitmentReport:
    """A destination's N-EVENT-REPORT for one transaction, as received."""

    transaction_uid: str
    event_type: int
    committed: frozenset[Instance]
    failed: tuple[FailedInstance, ...]
    #: Where it came: "on the delivery's association" or "on a new association from AE at host".
    via: str


def transaction_uid(job_id: int, destination: str, attempt: int) -> UID:
    """A new Transaction UID for one storage commitment request: never the same twice (see the module docstring)."""
    return derive_uid("storage commitment transaction", job_id, destination, attempt, secrets.token_hex(16))


class Commitment:
    """One request for storage commitment: made by :meth:`CommitmentRegistry.prepare`, used by one delivery.

    :func:`~sct_node.node.dispatch.deliver_files` proposes :attr:`presentation_context` and binds
    :attr:`association_handlers`, calls :meth:`check_accepted` before the C-STOREs, :meth:`request` after them
    (the association still open), and :meth:`wait` after it released the association. The dispatcher records
    the outcome with :meth:`record`.
    """

    def __init__(self, registry: CommitmentRegistry, destination: DestinationConfig, instances: tuple[Instance, ...],
                 transaction: UID) -> None:
        self.registry, self.destination, self.instances, self.transaction_uid = (registry, destination, instances,
                                                                                 transaction)
        self.timeout_s = destination.commitment_timeout_s
        #: The destination's report, once it came (also when it did not commit everything).
        self.report: CommitmentReport | None = None
        self._answered_at: float | None = None  # time.monotonic() of the N-ACTION response

    @property
    def where(self) -> str:
        d = self.destination
        return f"{d.name} ({d.ae_title}@{d.host}:{d.port})"

    @property
    def presentation_context(self) -> PresentationContext:
        """The Storage Commitment Push Model context to propose with the storage contexts (default roles)."""
        return build_context(STORAGE_COMMITMENT_PUSH_MODEL, TRANSFER_SYNTAXES)

    @property
    def association_handlers(self) -> list[EventHandlerType]:
        """Handlers for the delivery's association: a report may come on it."""
        return [(evt.EVT_N_EVENT_REPORT, self.registry.handle_report)]

    def check_accepted(self, assoc: Association) -> None:
        """Raise CommitmentError, before anything is sent, when the destination refused the context."""
        if not any(str(cx.abstract_syntax) == STORAGE_COMMITMENT_PUSH_MODEL for cx in assoc.accepted_contexts):
            raise CommitmentError(f"{self.where} does not accept the Storage Commitment Push Model SOP Class; nothing "
                                  f"was sent. Enable storage commitment for this node there, or set the "
                                  f"destination's storage_commitment = false (node.toml)")

    def request(self, assoc: Association, msg_id: int = 1) -> None:
        """Send the N-ACTION on the delivery's open association; wait a moment there for the report.

        Raises
        ------
        CommitmentError
            If the request is refused or not answered.
        """
        action = pydicom.Dataset()
        action.TransactionUID = self.transaction_uid
        action.ReferencedSOPSequence = [_reference(instance) for instance in self.instances]
        self.registry.register(self)  # before the N-ACTION: the report may overtake its response
        try:
            status, _ = assoc.send_n_action(action, REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_PUSH_MODEL,
                                            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE, msg_id=msg_id)
            code = getattr(status, "Status", None)
            if code is None:
                raise CommitmentError(f"{self.where} did not answer the storage commitment request (association "
                                      f"aborted or timed out); a destination that does not allow this node storage "
                                      f"commitment may abort (Orthanc: \"AllowStorageCommitment\")")
            if code_to_category(code) not in ("Success", "Warning"):
                comment = str(status.get("ErrorComment", "") or "")
                raise CommitmentError(f"{self.where} refused the storage commitment request: {_status_name(code)}"
                                      f"{': ' + comment if comment else ''}")
        except BaseException:
            self.registry.forget(self.transaction_uid, _Ended.NOT_REQUESTED)
            raise
        self._answered_at = time.monotonic()
        self.registry.wait(self.transaction_uid, min(SAME_ASSOCIATION_WAIT_S, self.timeout_s))

    def wait(self) -> CommitmentReport:
        """Wait (after the association was released) for the report; return it when everything was committed.

        Raises
        ------
        CommitmentError
            If no report came within ``commitment_timeout_s`` of the N-ACTION response, or the report leaves an
            instance uncommitted.
        """
        if self._answered_at is None:
            raise RuntimeError("Commitment.wait() before a request was answered")
        remaining_s = self.timeout_s - (time.monotonic() - self._answered_at)
        try:
            self.report = self.registry.wait(self.transaction_uid, max(remaining_s, 0.0))
        finally:
            self.registry.forget(self.transaction_uid, _Ended.GIVEN_UP if self.report is None else _Ended.ANSWERED)
        if self.report is None:
            raise CommitmentError(f"{self.where} accepted the storage commitment request but sent no report within "
                                  f"{self.timeout_s:g} s (transaction {self.transaction_uid}); it must be able to "
                                  f"open an association to this node (its address and AE title in its configuration, "
                                  f"its AE title in network.allowed_callers), or report on the delivery's association")
        problem = self.problem()
        if problem is not None:
            raise CommitmentError(problem)
        return self.report

    def uncommitted(self) -> tuple[list[FailedInstance], list[Instance]]:
        """The requested instances the report lists as failed, and those it does not mention at all."""
        if self.report is None:
            return [], list(self.instances)
        requested = set(self.instances)
        failed: list[FailedInstance] = []
        failed_instances: set[Instance] = set()
        for item in self.report.failed:  # only what was asked for, once (should a report list one twice)
            if item.instance in requested and item.instance not in failed_instances:
                failed.append(item)
                failed_instances.add(item.instance)
        missing = [i for i in self.instances if i not in self.report.committed and i not in failed_instances]
        return failed, missing

    def problem(self) -> str | None:
        """What the report leaves uncommitted, as a delivery error message; None when everything was committed."""
        failed, missing = self.uncommitted()
        if not failed and not missing:
            return None
        by_reason: dict[int | None, list[Instance]] = {}
        for item in failed:
            by_reason.setdefault(item.reason, []).append(item.instance)
        parts = [f"{describe_reason(reason)} for {len(instances)} ({_examples(instances)})"
                 for reason, instances in sorted(by_reason.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
        if missing:
            parts.append(f"not in its report: {len(missing)} ({_examples(missing)})")
        return (f"{self.where} did not commit {len(failed) + len(missing)} of {len(self.instances)} instance(s): "
                f"{'; '.join(parts)} (transaction {self.transaction_uid})")

    def record(self, state: StateStore, job_id: int) -> None:
        """Add the report's outcome to the job's delivery log (shown on the console's job page), if it came."""
        if self.report is None:
            return  # refused, unanswered or timed out: the delivery's own failure line says so
        failed, missing = self.uncommitted()
        committed = len(self.instances) - len(failed) - len(missing)
        outcome = "committed" if not failed and not missing else "not committed"
        detail = (f"{committed} of {len(self.instances)} instance(s) committed, report {self.report.via} "
                  f"(transaction {self.transaction_uid})")
        if outcome == "not committed":
            detail += f"; {self.problem()}"
        try:
            state.log_delivery(job_id, self.destination.name, outcome, detail)
        except database_errors() as error:  # the delivery's own line is recorded next; do not lose the attempt for this
            logger.error("job %d: storage commitment outcome for %s not recorded: %s", job_id, self.destination.name,
                         error)


class _Ended(IntEnum):
    """How a transaction stopped being pending: what a report that comes afterwards is answered."""

    NOT_REQUESTED = 0  # the N-ACTION was refused or not answered: a report is unknown
    ANSWERED = 1       # its report came: a repeat (its response was lost) is answered Success again
    GIVEN_UP = 2       # no report within the timeout: a late one is refused, and logged as late


@dataclass
class _Pending:
    commitment: Commitment
    arrived: threading.Event
    report: CommitmentReport | None = None


class CommitmentRegistry:
    """Pending storage commitment transactions: filled by the N-EVENT-REPORT handler, waited on by the dispatcher.

    Safe to share between the Storage SCP's association threads and the dispatcher's thread.
    """

    def __init__(self) -> None:
        #: How a refused report is logged: the Storage SCP's rate-limited peer warnings once it serves reports.
        self._warn: Callable[..., None] = lambda host, message, *args: logger.warning(message, *args)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        #: Transactions no longer pending: Transaction UID -> (how it ended, time.time() when), the newest last.
        self._ended: OrderedDict[str, tuple[_Ended, float]] = OrderedDict()

    @classmethod
    def for_config(cls, config: NodeConfig) -> CommitmentRegistry | None:
        """A registry when a destination has storage commitment on (else None: the SCP does not offer it).

        Warns about each such destination whose AE title ``network.allowed_callers`` leaves out: its report on a
        new association would be refused, and every delivery to it would time out.
        """
        asking = [d for d in config.destinations if d.storage_commitment]
        if not asking:
            return None
        callers = config.network.allowed_callers
        for destination in asking:
            if callers is not None and destination.ae_title not in {c.ae_title for c in callers}:
                logger.warning("destination %s has storage_commitment on, but its AE title %s is not in "
                               "network.allowed_callers: a report it sends on a new association will be refused, "
                               "and its deliveries will fail when their commitment times out", destination.name,
                               destination.ae_title)
        return cls()

    def serve_reports(self, ae: AE, handlers: list[EventHandlerType],
                      warn: Callable[..., None] | None = None) -> None:
        """Make the Storage SCP accept reports on new associations: the context, with the requestor as SCP.

        The destination proposes the Storage Commitment Push Model with SCP/SCU Role Selection, SCP role
        (PS3.7 D.3.3.4): the node accepts that role and not the SCU role, since it never serves N-ACTION
        requests. A destination that proposes no role selection gets the context with the default roles, and its
        report is still taken (pynetdicom serves it; the standard asks for the selection, not every sender makes
        it). ``warn(host, message, *args)`` logs a refusal (the Storage SCP's rate-limited peer warnings).
        """
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        handlers.append((evt.EVT_N_EVENT_REPORT, self.handle_report))
        if warn is not None:
            self._warn = warn

    def prepare(self, output_dir: Path | None, destination: DestinationConfig, job_id: int,
                attempt: int) -> Commitment | None:
        """A request covering every instance of the job's bundle for this destination; None when there is none.

        Every instance: what the delivery sends and what was sent ahead (``part="all"``), less what is held
        back. Reads the headers of the outputs (their SOP Class and SOP Instance UIDs).
        """
        if output_dir is None:
            return None
        instances = []
        for path in ordered_outputs(output_dir, destination.bundle, "all"):
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            instances.append(Instance(str(header.SOPClassUID), str(header.SOPInstanceUID)))
        if not instances:
            return None
        return Commitment(self, destination, tuple(instances), transaction_uid(job_id, destination.name, attempt))

    def register(self, commitment: Commitment) -> None:
        with self._lock:
            self._pending[commitment.transaction_uid] = _Pending(commitment, threading.Event())

    def forget(self, transaction: str, ended: _Ended) -> None:
        """Stop waiting for a transaction; how it ended decides what a report that comes later is answered."""
        with self._lock:
            self._pending.pop(transaction, None)
            if ended != _Ended.NOT_REQUESTED:
                self._ended[transaction] = (ended, time.time())
                while len(self._ended) > _ENDED_KEPT:
                    self._ended.popitem(last=False)

    def wait(self, transaction: str, timeout_s: float) -> CommitmentReport | None:
        """The report of a registered transaction, waiting at most ``timeout_s``; None if none came."""
        with self._lock:
            pending = self._pending.get(transaction)
        if pending is None:
            return None
        pending.arrived.wait(timeout_s)
        return pending.report

    @property
    def pending(self) -> int:
        """How many transactions are waiting for a report."""
        with self._lock:
            return len(self._pending)

    def handle_report(self, event: evt.Event) -> tuple[int | pydicom.Dataset, pydicom.Dataset | None]:
        """EVT_N_EVENT_REPORT handler (Storage SCP and delivery associations): file a report, answer a status.

        The DICOM event handlers are where exceptions stop: anything unexpected is logged and answered with
        Processing Failure.
        """
        assoc = event.assoc
        on_delivery = assoc.is_requestor  # the node requested this association: a delivery's
        peer = assoc.acceptor if on_delivery else assoc.requestor
        peer_ae = str(peer.ae_title).strip()
        who = f"{peer_ae} at {peer.address}"
        via = "on the delivery's association" if on_delivery else f"on a new association from {who}"
        try:
            return self._file_report(event, str(peer.address), peer_ae, who, via)
        except Exception:  # the handler is where exceptions stop: log, answer with a named status
            logger.exception("storage commitment report from %s: unexpected error; answered Processing Failure", who)
            return _report_status(ReportStatus.PROCESSING_FAILURE, "internal error"), None

    def _file_report(self, event: evt.Event, host: str, peer_ae: str, who: str,
                     via: str) -> tuple[int | pydicom.Dataset, pydicom.Dataset | None]:
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        sop_instance = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        if sop_class != STORAGE_COMMITMENT_PUSH_MODEL or sop_instance != STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE:
            return self._refuse(host, who, None, ReportStatus.NO_SUCH_SOP_INSTANCE,
                                "not the Storage Commitment Push Model SOP Instance")
        event_type = event.event_type
        if event_type not in (EventType.ALL_COMMITTED, EventType.SOME_FAILED):
            return self._refuse(host, who, None, ReportStatus.NO_SUCH_EVENT_TYPE,
                                f"Event Type ID {event_type} (1 or 2)")
        try:
            info = event.event_information
            transaction = str(info.get("TransactionUID", "") or "")
            committed = frozenset(_instance(item) for item in info.get("ReferencedSOPSequence", None) or ())
            failed = tuple(FailedInstance(_instance(item), _optional_int(item.get("FailureReason", None)))
                           for item in info.get("FailedSOPSequence", None) or ())
        except Exception as error:  # noqa: BLE001  pydicom raises many types on malformed data
            return self._refuse(host, who, None, ReportStatus.PROCESSING_FAILURE,
                                f"Event Information cannot be decoded ({type(error).__name__})")
        problem = uid_problem(transaction, "Transaction UID")
        if problem:
            return self._refuse(host, who, None, ReportStatus.INVALID_ARGUMENT_VALUE, problem)
        with self._lock:
            pending = self._pending.get(transaction)
            ended = self._ended.get(transaction)
            expected_ae = pending.commitment.destination.ae_title if pending is not None else None
            if pending is not None and expected_ae == peer_ae and pending.report is None:
                pending.report = CommitmentReport(transaction, int(event_type), committed, failed, via)
                pending.arrived.set()
        if expected_ae is not None and expected_ae != peer_ae:
            return self._refuse(host, who, transaction, ReportStatus.NOT_AUTHORISED,
                                f"a transaction of another destination (AE title {expected_ae})")
        if pending is not None or (ended is not None and ended[0] == _Ended.ANSWERED):
            # A repeat (its response was lost) is answered again and changes nothing: the first report counts.
            logger.debug("storage commitment report for transaction %s %s: %d committed, %d failed", transaction, via,
                         len(committed), len(failed))
            return ReportStatus.SUCCESS, None
        if ended is not None:  # given up
            return self._refuse(host, who, transaction, ReportStatus.INVALID_ARGUMENT_VALUE,
                                f"it came {time.time() - ended[1]:.0f} s after the node gave up waiting "
                                f"(commitment_timeout_s); the delivery is retried under a new transaction")
        return self._refuse(host, who, transaction, ReportStatus.INVALID_ARGUMENT_VALUE, "unknown Transaction UID")

    def _refuse(self, host: str, who: str, transaction: str | None, status: int,
                reason: str) -> tuple[pydicom.Dataset, None]:
        self._warn(host, "refused a storage commitment report from %s%s: %s", who,
                   f" for transaction {transaction}" if transaction else "", reason)
        return _report_status(status, reason), None


def _reference(instance: Instance) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    return item


def _instance(item: pydicom.Dataset) -> Instance:
    return Instance(str(item.get("ReferencedSOPClassUID", "") or ""),
                    str(item.get("ReferencedSOPInstanceUID", "") or ""))


def _optional_int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _examples(instances: list[Instance], shown: int = 2) -> str:
    text = ", ".join(str(i) for i in instances[:shown])
    return text + (f" and {len(instances) - shown} more" if len(instances) > shown else "")


def _status_name(code: int) -> str:
    name = STORAGE_COMMITMENT_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    return f"0x{code:04X} {name}"


def _report_status(code: int, comment: str) -> pydicom.Dataset:
    status = pydicom.Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
