"""Query/Retrieve SCU: fetch the QA's reference data from a PACS when none was routed to the node.

A route with ``fetch_references`` (``ct``, ``plan``, ``structures``) asks for
the real CT, RT Plan and RT Structure Set of the MR's frame of reference. When
a job starts and the node holds none of a requested kind in that frame
(:func:`sct_node.node.qa_stage.prepare_references`, in the background while the
model runs), :class:`ReferenceFetcher` asks the PACS named by ``fetch_from``:

1. **C-FIND** (Study Root, SERIES level) in the MR's study, one query per
   wanted modality (CT, RTPLAN, RTSTRUCT). Only standard series-level keys
   are asked for: the frame of reference is an instance attribute that a
   hierarchical query cannot ask for, so the frame is judged after retrieval.
2. **C-MOVE** (to the node's own AE title: the PACS opens an association to
   the node's Storage SCP) or **C-GET** (the instances come back on the
   node's association, the node in the Storage SCP role), one series at a
   time. Either way every instance goes through
   :class:`sct_node.node.store.InstanceStore`, the same checks and the same
   durable write as a C-STORE, and lands in the state database.
3. The QA then picks its references from the state database as it does for
   routed data (:func:`sct_node.node.qa_stage.reference_data`): only what is in
   the MR's frame of reference (an RT Structure Set by its Referenced Frame of
   Reference), and never a synthetic CT. A CT of the same study in another
   frame is retrieved but never used; it stays an unrouted series and goes at
   ``unrouted_retention_h``, like any series that matches no route.

Retrieved series are CT, RT Plan and RT Structure Set: no route's default
match (modality MR) takes them, and a job of a series without MR images fails
("series holds no MR image instances"), so fetched data never start a job.

Everything is bounded: the query by ``query_timeout_s``, the retrieval by
``retrieve_timeout_s`` (a watchdog aborts the association), the series by
``max_series`` and the instances by ``max_instances``. Nothing here fails a
job: a PACS that is down, refuses or times out gives a :class:`FetchOutcome`
with its error, which the QA records among its reference notes (``qa.json``
context, the PDF report), and the QA falls back as without reference data
(template plan, bulk-density reference). The one log line per fetch names
UIDs, counts and the PACS, never a patient's name or ID.

References
----------
DICOM PS3.4 C.4.1 (C-FIND), C.4.2 (C-MOVE), C.4.3 (C-GET), C.6.2 (Study Root
Information Model); PS3.7 9.1.2-9.1.4 and C.4.2-C.4.3 (statuses); PS3.7 D.3.3.4
(SCP/SCU Role Selection Negotiation); pynetdicom "Query/Retrieve (Get) SCU"
and "Query/Retrieve (Move) SCU" documentation.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import ClassVar

import pydicom
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from sct_node.config import PacsConfig, ReferenceKind
from sct_node.dicom.image_writer import IMPLEMENTATION_VERSION_NAME
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    IMPLEMENTATION_CLASS_UID,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    uid_problem,
)
from sct_node.errors import SctNodeError
from sct_node.node.receive import acknowledge_at_once, set_tcp_nodelay
from sct_node.node.state import StateStore
from sct_node.node.store import ACCEPTED_TRANSFER_SYNTAXES, InstanceSource, InstanceStore, StorageStatus
from sct_node.node.tls import client_context

__all__ = ["FIND_MODEL", "GET_MODEL", "MOVE_MODEL", "REFERENCE_MODALITIES", "FetchOutcome", "FoundSeries",
           "QueryRetrieveScu", "ReferenceFetcher", "RetrieveError", "RetrieveStatus"]

logger = logging.getLogger(__name__)

#: Study Root Query/Retrieve Information Model - FIND, MOVE and GET (PS3.4 C.6.2.1).
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"

#: The modality of each kind of reference data, and its SOP class (what a C-GET must be able to receive).
REFERENCE_MODALITIES: dict[str, str] = {"ct": "CT", "plan": "RTPLAN", "structures": "RTSTRUCT"}
_SOP_CLASSES = {"CT": CT_IMAGE_STORAGE, "RTPLAN": RT_PLAN_STORAGE, "RTSTRUCT": RT_STRUCTURE_SET_STORAGE}
_KIND_OF = {modality: kind for kind, modality in REFERENCE_MODALITIES.items()}
#: How each kind is named in notes and logs, and what the QA does without it.
_NAMES = {"ct": "reference CT", "plan": "RT Plan", "structures": "RT Structure Set"}
_FALLBACKS = {"ct": "the dose reference is the bulk-density sCT and there are no image metrics",
              "plan": "the dose comparison uses the site's template plan",
              "structures": "there is no DVH comparison of clinical structures"}
#: The small RT objects before the CT, so the limits never crowd them out.
_KIND_ORDER = ("plan", "structures", "ct")
#: C-FIND answers read at most per query: a study holds tens of series, not thousands.
_MAX_FIND_ANSWERS = 500


class RetrieveError(SctNodeError):
    """A query or retrieval failed: the PACS is down, refused the association or the request, or timed out."""


class RetrieveStatus:
    """C-FIND, C-MOVE and C-GET response statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4), by name."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
    CANCEL = 0xFE00
    SUB_OPERATIONS_WARNING = 0xB000  # C-MOVE/C-GET: one or more sub-operations failed
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH = 0xA900

    _NAMES: ClassVar[dict[int, str]] = {SUCCESS: "Success", PENDING: "Pending", PENDING_WARNING: "Pending (optional keys not supported)",
              CANCEL: "Cancel", SUB_OPERATIONS_WARNING: "Warning (sub-operations failed)",
              OUT_OF_RESOURCES_MATCHES: "Out of Resources (matches)",
              OUT_OF_RESOURCES_SUB_OPERATIONS: "Out of Resources (sub-operations)",
              MOVE_DESTINATION_UNKNOWN: "Move Destination unknown",
              IDENTIFIER_DOES_NOT_MATCH: "Identifier does not match SOP Class"}

    @classmethod
    def text(cls, status: int) -> str:
        """``0xA801 (Move Destination unknown)``; a status without a name here: its class (PS3.7 C)."""
        name = cls._NAMES.get(status) or ("Unable to process" if 0xC000 <= status <= 0xCFFF else
                                          "Refused" if 0xA000 <= status <= 0xAFFF else "Failure")
        return f"0x{status:04X} ({name})"


@dataclass(frozen=True)
class FoundSeries:
    """A series a C-FIND found in the study: what the node decides its retrieval by."""

    series_uid: str
    modality: str
    #: Number of Series Related Instances, when the PACS says (an optional return key).
    instances: int | None = None
    #: Series Date and Time as sent (DA + TM, ``""`` when absent): the newest series first.
    date_time: str = ""


@dataclass(frozen=True)
class FetchOutcome:
    """What one fetch did: the QA records its :meth:`notes`; the node logs it once.

    ``error`` is None when the query and every retrieval answered Success (or Warning, with what arrived);
    otherwise it says what failed, and what had arrived by then is kept and used.
    """

    source: str
    method: str
    kinds: tuple[str, ...]
    found: tuple[FoundSeries, ...] = ()
    retrieved: tuple[str, ...] = ()
    instances: int = 0
    #: Series not retrieved because the node holds them already.
    already_held: int = 0
    #: Series not retrieved because they would exceed the PACS's max_series or max_instances.
    over_limit: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0

    def notes(self, in_frame: Sequence[str], usable: Sequence[str]) -> tuple[str, ...]:
        """What the QA report says about each kind that was fetched for, and what the QA did instead.

        ``in_frame`` are the kinds the node now holds in the MR's frame of reference, ``usable`` those the QA
        could read and use.
        """
        notes: list[str] = []
        for kind in self.kinds:
            name, fallback = _NAMES[kind], _FALLBACKS[kind]
            if kind in usable:
                notes.append(f"{name} fetched from {self.source} by {self.method}")
            elif kind in in_frame:
                notes.append(f"{name} fetched from {self.source} by {self.method} but not usable (see the node's "
                             f"log): {fallback}")
            elif self.error is not None:
                notes.append(f"{name} could not be fetched from {self.source}: {self.error}: {fallback}")
            else:
                modality = REFERENCE_MODALITIES[kind]
                series = [s for s in self.found if s.modality == modality]
                left = sum(1 for s in series if s.series_uid in self.over_limit)
                if left:
                    notes.append(f"{name} not fetched from {self.source}: {left} {modality} series of the study "
                                 f"not retrieved, beyond the PACS's max_series or max_instances: {fallback}")
                    continue
                where = f" ({len(series)} {modality} series of the study, in another frame or not usable)" \
                    if series else ""
                notes.append(f"no {name} in the MR's frame of reference in its study on {self.source}{where}: "
                             f"{fallback}")
        return tuple(notes)


def _describe(pacs: PacsConfig) -> str:
    return f"PACS {pacs.name} ({pacs.ae_title}@{pacs.host}:{pacs.port})"


class QueryRetrieveScu:
    """C-FIND, C-MOVE and C-GET against one PACS, each bounded in time (see the module docstring).

    Parameters
    ----------
    pacs : PacsConfig
        Address, TLS, retrieve method, timeouts and limits.
    calling_ae : str
        The node's AE title: the calling AE of every association, and the Move Destination of a C-MOVE.
    store : InstanceStore or None
        Where the C-STOREs of a C-GET are stored (the Storage SCP's own, so they are checked and counted
        alike). Required for ``retrieve = "get"``.
    """

    def __init__(self, pacs: PacsConfig, calling_ae: str, store: InstanceStore | None = None) -> None:
        if pacs.retrieve == "get" and store is None:
            raise RetrieveError(f"{_describe(pacs)}: C-GET needs the node's instance store")
        self.pacs, self.calling_ae, self.store = pacs, calling_ae, store

    @property
    def where(self) -> str:
        return _describe(self.pacs)

    def find_series(self, study_uid: str, modality: str) -> list[FoundSeries]:
        """The series of one modality in a study (C-FIND, Study Root, SERIES level).

        Answers with an invalid Series Instance UID or another modality (a PACS that ignores the filter) are
        left out. Raises RetrieveError when the PACS cannot be reached, refuses, fails or times out.
        """
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = modality
        query.SeriesDate = ""
        query.SeriesTime = ""
        query.NumberOfSeriesRelatedInstances = ""
        found: list[FoundSeries] = []
        with self._association([FIND_MODEL], self.pacs.query_timeout_s, "C-FIND") as (assoc, expired):
            for status, identifier in assoc.send_c_find(query, FIND_MODEL):
                code = _status_of(status, expired, self.pacs.query_timeout_s, "C-FIND")
                if code in (RetrieveStatus.PENDING, RetrieveStatus.PENDING_WARNING):
                    series = _found(identifier, modality, study_uid)
                    if series is not None:
                        found.append(series)
                    if len(found) > _MAX_FIND_ANSWERS:
                        raise RetrieveError(f"C-FIND of {modality} series answered more than {_MAX_FIND_ANSWERS} "
                                            f"series")
                elif code != RetrieveStatus.SUCCESS:
                    raise RetrieveError(f"C-FIND of {modality} series answered {RetrieveStatus.text(code)}")
        return found

    def retrieve_series(self, study_uid: str, series: Sequence[FoundSeries], max_instances: int,
                        deadline_s: float) -> tuple[list[str], int, str | None]:
        """Retrieve whole series, one C-MOVE or C-GET each, on one association.

        Returns (the series retrieved with at least one instance, instances that arrived, the first error or
        None). A series the PACS fails on is reported and the next one asked for; the retrieval stops when the
        association is lost, after ``deadline_s`` seconds (the association is aborted) or when more than
        ``max_instances`` would arrive. What arrived is stored and kept. Raises RetrieveError when no
        association can be made.
        """
        move = self.pacs.retrieve == "move"
        model = MOVE_MODEL if move else GET_MODEL
        counter = _GetCounter(max_instances)
        roles, handlers = [], []
        contexts = [model]
        if not move:
            classes = sorted({_SOP_CLASSES[s.modality] for s in series})
            contexts += classes
            roles = [build_role(uid, scp_role=True) for uid in classes]
            handlers = [(evt.EVT_C_STORE, self._get_store_handler(counter))]
        retrieved: list[str] = []
        total = 0
        first_error: str | None = None
        with self._association(contexts, deadline_s, "C-MOVE" if move else "C-GET", roles=roles,
                               handlers=handlers) as (assoc, expired):
            for item in series:
                identifier = pydicom.Dataset()
                identifier.QueryRetrieveLevel = "SERIES"
                identifier.StudyInstanceUID = study_uid
                identifier.SeriesInstanceUID = item.series_uid
                counter.start_series(max_instances - total)
                responses = (assoc.send_c_move(identifier, self.calling_ae, model) if move
                             else assoc.send_c_get(identifier, model))
                completed, error, lost = self._follow(assoc, responses, expired, deadline_s, counter,
                                                      max_instances - total, move)
                arrived = completed if move else counter.stored
                total += arrived
                if arrived:
                    retrieved.append(item.series_uid)
                if error is not None:
                    first_error = first_error or f"series {item.series_uid}: {error}"
                    if lost:
                        break  # aborted, timed out or over the limit: the others cannot come either
        return retrieved, total, first_error

    def _follow(self, assoc: Association, responses: Iterator[tuple[pydicom.Dataset, pydicom.Dataset | None]],
                expired: list[bool], deadline_s: float, counter: _GetCounter, budget: int,
                move: bool) -> tuple[int, str | None, bool]:
        """Read one C-MOVE's or C-GET's responses: (instances completed, the error or None, whether the
        association is lost: aborted by either side or timed out, so that no other series can be asked for)."""
        what = "C-MOVE" if move else "C-GET"
        completed = 0
        for status, _ in responses:
            if "Status" not in status:  # pynetdicom's empty status: aborted, timed out or no answer
                return completed, (f"{what} timed out after {deadline_s:g} s" if expired
                                   else f"{what}: the PACS aborted the association or closed the connection"), True
            code = int(status.Status)
            completed = max(completed, int(status.get("NumberOfCompletedSuboperations", 0) or 0)
                            + int(status.get("NumberOfWarningSuboperations", 0) or 0))
            announced = completed + int(status.get("NumberOfRemainingSuboperations", 0) or 0) \
                + int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if (move and announced > budget) or counter.exceeded:
                assoc.abort()
                return completed, f"more than the {budget} instances left of max_instances; retrieval aborted", True
            if code == RetrieveStatus.PENDING:
                continue
            if code == RetrieveStatus.SUCCESS:
                return completed, None, False
            if code == RetrieveStatus.SUB_OPERATIONS_WARNING:
                failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
                logger.warning("%s: %s: %d sub-operation(s) failed; what arrived is used", self.where, what, failed)
                return completed, None, False
            return completed, f"{what} answered {RetrieveStatus.text(code)}", False
        return completed, f"{what}: no final response", True

    def _get_store_handler(self, counter: _GetCounter) -> Callable[[evt.Event], int | pydicom.Dataset]:
        """EVT_C_STORE handler of the C-GET association: store through the node's InstanceStore."""
        store = self.store
        assert store is not None  # checked in __init__ for retrieve = "get"
        source = InstanceSource(calling_ae=self.pacs.ae_title, peer=self.where, host=self.pacs.host,
                                association=f"c-get-{uuid.uuid4().hex}")

        def handle(event: evt.Event) -> int | pydicom.Dataset:
            sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            if not counter.admit():
                return _failure(StorageStatus.OUT_OF_RESOURCES, "max_instances of the retrieval reached")
            try:
                if uid_problem(sop_uid):  # refused before pynetdicom puts it in a file meta
                    outcome = store.store(b"", source, sop_uid=sop_uid, sop_class_uid="")
                else:
                    request = event.request
                    if not isinstance(request, C_STORE):
                        raise TypeError(f"C-STORE handler called with {type(request).__name__}")
                    raw_length = len(request.DataSet.getvalue()) if request.DataSet is not None else 0
                    encoded = event.encoded_dataset(include_meta=True)
                    outcome = store.store(encoded, source, sop_uid=sop_uid,
                                          sop_class_uid=str(request.AffectedSOPClassUID),
                                          dataset_offset=len(encoded) - raw_length)
            except Exception:  # the handler is where exceptions stop: log, answer with a named status
                shown = sop_uid if uid_problem(sop_uid) is None else "(invalid UID)"
                logger.exception("instance %s from C-GET: unexpected error while storing; answered Out of "
                                 "Resources", shown)
                return _failure(StorageStatus.OUT_OF_RESOURCES, "internal error while storing")
            if not outcome.stored:
                return _failure(outcome.status, outcome.comment)
            counter.stored += 1
            return StorageStatus.SUCCESS

        return handle

    @contextmanager
    def _association(self, contexts: Sequence[str], timeout_s: float, what: str,
                     roles: Sequence[object] = (), handlers: Sequence[tuple[object, Callable[..., object]]] = ()
                     ) -> Iterator[tuple[Association, list[bool]]]:
        """An association with the PACS, aborted by a watchdog after ``timeout_s`` and released at the end.

        The watchdog also wakes a reader waiting for a DIMSE message: pynetdicom's reader waits on the DIMSE
        provider's message queue for up to the DIMSE timeout, which the abort alone does not end.
        """
        ae = AE(ae_title=self.calling_ae)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.connection_timeout = min(timeout_s, 30.0)
        for uid in contexts:
            ae.add_requested_context(uid, ACCEPTED_TRANSFER_SYNTAXES if uid in _SOP_CLASSES.values()
                                     else ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        tls_args = (client_context(self.pacs.tls), None) if self.pacs.tls else None
        expired: list[bool] = []
        connected: list[bool] = []
        started = time.monotonic()
        assoc = ae.associate(self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title,
                             tls_args=tls_args,  # type: ignore[arg-type]  # (context, None) as pynetdicom documents
                             ext_neg=list(roles) or None,  # type: ignore[arg-type]
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay),
                                           (evt.EVT_CONN_OPEN, acknowledge_at_once),
                                           (evt.EVT_CONN_OPEN, lambda event: connected.append(True)),
                                           *handlers])  # type: ignore[list-item]
        if not assoc.is_established:
            waited_s = time.monotonic() - started
            reason = ("rejected the association" if assoc.is_rejected
                      else "could not be reached" if not connected
                      else f"did not answer the association request within {timeout_s:g} s"
                      if waited_s >= 0.9 * timeout_s else "aborted the association")
            raise RetrieveError(f"{what}: {_describe(self.pacs)} {reason}")
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        if contexts[0] not in accepted:
            assoc.release()
            raise RetrieveError(f"{what}: {_describe(self.pacs)} does not accept the Study Root "
                                f"{what.removeprefix('C-')} model")

        def expire() -> None:
            expired.append(True)
            assoc.abort()
            assoc.dimse.msg_queue.put((None, None))  # wake the reader: it then sees the abort

        watchdog = threading.Timer(max(0.0, timeout_s - (time.monotonic() - started)), expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            yield assoc, expired
        except BaseException:  # an operation may still be under way: abort, since a release would wait for it
            watchdog.cancel()
            assoc.abort()
            raise
        watchdog.cancel()
        if assoc.is_established:
            assoc.release()


class _GetCounter:
    """Counts the instances a C-GET stored, and refuses those beyond the limit of the retrieval."""

    def __init__(self, max_instances: int) -> None:
        self.budget = max_instances
        self.stored = 0
        self.exceeded = False
        self._admitted = 0
        self._lock = threading.Lock()

    def start_series(self, budget: int) -> None:
        with self._lock:
            self.budget, self.stored, self._admitted, self.exceeded = budget, 0, 0, False

    def admit(self) -> bool:
        with self._lock:
            if self._admitted >= self.budget:
                self.exceeded = True
                return False
            self._admitted += 1
            return True


class ReferenceFetcher:
    """Fetches a job's missing reference data from the PACS its route names (see the module docstring).

    Parameters
    ----------
    state : StateStore
        To tell which series the node already holds.
    pacs : sequence of PacsConfig
        The configured PACSs (``[[pacs]]``).
    calling_ae : str
        The node's AE title (``network.ae_title``): calling AE, and Move Destination of a C-MOVE.
    store : InstanceStore or None
        The Storage SCP's instance store, for C-GET.
    """

    def __init__(self, state: StateStore, pacs: Sequence[PacsConfig], calling_ae: str,
                 store: InstanceStore | None = None) -> None:
        self.state = state
        self.pacs: Mapping[str, PacsConfig] = {p.name: p for p in pacs}
        self.calling_ae, self.store = calling_ae, store

    def fetch(self, study_uid: str, kinds: Sequence[ReferenceKind], source: str,
              mr_series_uid: str = "") -> FetchOutcome:
        """Find and retrieve the series of the wanted kinds in ``study_uid``; never raises.

        The series the node holds already (as many instances as the PACS counts, or some when it does not
        count) are not retrieved again. A failure is the outcome's ``error`` (and a WARNING); a bug is logged
        with its traceback and becomes an error too, so that it cannot cost the job.
        """
        started = time.monotonic()
        pacs = self.pacs.get(source)
        method = "C-MOVE" if pacs is None or pacs.retrieve == "move" else "C-GET"
        where = _describe(pacs) if pacs is not None else f"PACS {source}"
        outcome = FetchOutcome(where, method, tuple(kinds))
        try:
            if pacs is None:
                raise RetrieveError(f"no [[pacs]] entry named {source!r}")
            if uid_problem(study_uid):
                raise RetrieveError("the MR has no valid Study Instance UID to search")
            outcome = self._fetch(pacs, study_uid, kinds, outcome)
        except RetrieveError as error:
            outcome = replace(outcome, error=str(error))
        except Exception as error:  # a bug here must not cost the job: the QA runs with what the node has
            logger.exception("fetching reference data from %s failed with an internal error", where)
            outcome = replace(outcome, error=f"internal error ({type(error).__name__}; see the node's log)")
        outcome = replace(outcome, seconds=time.monotonic() - started)
        _log(outcome, study_uid, mr_series_uid)
        return outcome

    def _fetch(self, pacs: PacsConfig, study_uid: str, kinds: Sequence[ReferenceKind],
               outcome: FetchOutcome) -> FetchOutcome:
        scu = QueryRetrieveScu(pacs, self.calling_ae, self.store)
        deadline = time.monotonic() + pacs.query_timeout_s
        found: list[FoundSeries] = []
        for kind in sorted(kinds, key=_KIND_ORDER.index):
            if time.monotonic() >= deadline:
                raise RetrieveError(f"C-FIND timed out after {pacs.query_timeout_s:g} s")
            newest_first = sorted(scu.find_series(study_uid, REFERENCE_MODALITIES[kind]),
                                  key=lambda s: s.date_time, reverse=True)
            found += newest_first
        outcome = replace(outcome, found=tuple(found))
        wanted: list[FoundSeries] = []
        over: list[str] = []
        held = planned = 0
        for series in found:
            known = self.state.series_instance_count(series.series_uid, 2**62)
            if known and (series.instances is None or known >= series.instances):
                held += 1
                continue
            if len(wanted) >= pacs.max_series or planned + (series.instances or 0) > pacs.max_instances:
                over.append(series.series_uid)
                continue
            wanted.append(series)
            planned += series.instances or 0
        outcome = replace(outcome, already_held=held, over_limit=tuple(over))
        if not wanted:
            return outcome
        # Chosen newest first (the limits keep the newest), retrieved oldest first within each kind: the QA takes
        # the series received last as the newest (qa_stage.reference_data), as it does for routed data.
        order = sorted(wanted, key=lambda s: (_KIND_ORDER.index(_KIND_OF[s.modality]), s.date_time))
        retrieved, instances, error = scu.retrieve_series(study_uid, order, pacs.max_instances,
                                                          pacs.retrieve_timeout_s)
        return replace(outcome, retrieved=tuple(retrieved), instances=instances, error=error)


def _log(outcome: FetchOutcome, study_uid: str, mr_series_uid: str) -> None:
    """The one line per fetch: the PACS, the method, UIDs and counts (never a patient's name or ID)."""
    modalities = {s.series_uid: s.modality for s in outcome.found}
    retrieved = ", ".join(f"{uid} {modalities.get(uid, '')}".strip() for uid in outcome.retrieved[:8]) + (
        f" and {len(outcome.retrieved) - 8} more" if len(outcome.retrieved) > 8 else "")
    counts = ", ".join(f"{m} {sum(1 for s in outcome.found if s.modality == m)}"
                       for m in sorted({s.modality for s in outcome.found})) or "none"
    message = ("reference data for MR series %s: %s from %s by %s in %.1f s: study %s: series found %s; "
               "%d already held, %d over the limits; %d series retrieved (%d instances)%s")
    args = (mr_series_uid or "(unknown)", "asked" if outcome.error else "fetched", outcome.source, outcome.method,
            outcome.seconds, study_uid or "(none)", counts, outcome.already_held, len(outcome.over_limit),
            len(outcome.retrieved), outcome.instances, f": {retrieved}" if retrieved else "")
    if outcome.error is not None:
        logger.warning(message + "; FAILED: %s; the QA uses what the node has", *args, outcome.error)
    else:
        logger.info(message, *args)


def _found(identifier: pydicom.Dataset | None, modality: str, study_uid: str) -> FoundSeries | None:
    """A C-FIND answer as a FoundSeries; None for an answer the node cannot use (logged at DEBUG)."""
    if identifier is None:
        return None
    series_uid = str(identifier.get("SeriesInstanceUID", "") or "")
    answered = str(identifier.get("Modality", "") or "")
    study = str(identifier.get("StudyInstanceUID", "") or "")
    if uid_problem(series_uid) or (answered and answered != modality) or (study and study != study_uid):
        logger.debug("C-FIND answer left out: series %r, modality %r", series_uid[:64], answered[:16])
        return None
    count = identifier.get("NumberOfSeriesRelatedInstances", None)
    try:
        instances = int(str(count)) if count not in (None, "") else None
    except ValueError:
        instances = None
    date_time = f"{identifier.get('SeriesDate', '') or ''}{identifier.get('SeriesTime', '') or ''}"
    return FoundSeries(series_uid, modality, instances if instances is None or instances >= 0 else None,
                       date_time[:32])


def _status_of(status: pydicom.Dataset, expired: list[bool], timeout_s: float, what: str) -> int:
    """A response's status; an empty one (aborted, timed out, no answer) raises RetrieveError."""
    if "Status" in status:
        return int(status.Status)
    if expired:
        raise RetrieveError(f"{what} timed out after {timeout_s:g} s")
    raise RetrieveError(f"{what}: the PACS aborted the association or closed the connection")


def _failure(code: int, comment: str) -> pydicom.Dataset:
    status = pydicom.Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status

