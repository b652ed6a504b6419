"""Deliver a job's outputs to each destination by C-STORE (or STOW-RS, :mod:`sct_node.node.stow`), with
exponential backoff.

A delivery attempt opens one association per destination and sends every
output file in a fixed order (images first, then structures, dose, reports),
so a planning system has the images before anything that references them.
It succeeds only when every instance is answered with Success (or a Warning).
A refused association, a failure status or a network error makes the whole
attempt fail; the next attempt waits ``initial_delay_s * 2**(attempt-1)``
(at most ``max_delay_s``), and after ``max_attempts`` the job fails and keeps
its outputs for ``sct-node retry JOB``. Re-sending is harmless: output UIDs
are deterministic, so the receiver replaces rather than duplicates.

Sending ahead: a job with a report has its sCT written, marked with the QA
verdict, before the report is rendered. The processor then sends the sCT
images to each destination (:meth:`Dispatcher.send_ahead`, one association
each) while it renders the report; a destination that accepted all of them
gets only the rest of the bundle from its delivery. Sending ahead is never
retried: when it fails, the delivery sends everything, with the backoff
above. The job is done only when every destination accepted all of it.

Storage commitment: to a destination with ``storage_commitment`` on, an
attempt succeeds only once the destination has also committed to keep every
instance of the bundle, the images sent ahead included
(:mod:`sct_node.node.commitment`); anything less fails the attempt, with the
backoff above, and a retry then sends everything again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from sct_node.config import DestinationConfig, DispatchConfig
from sct_node.dicom.image_writer import IMPLEMENTATION_VERSION_NAME
from sct_node.dicom.uids import IMPLEMENTATION_CLASS_UID
from sct_node.errors import SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.node.receive import acknowledge_at_once, set_tcp_nodelay
from sct_node.node.state import Delivery, StateStore
from sct_node.node.tls import client_context

if TYPE_CHECKING:
    from sct_node.node.commitment import Commitment, CommitmentRegistry
    from sct_node.node.metrics import NodeMetrics

__all__ = ["DeliveryError", "Dispatcher", "deliver_files", "ordered_outputs", "send_files"]

logger = logging.getLogger(__name__)

#: Delivery order by modality: images first, then objects that reference them.
_ORDER = {"CT": 0, "MR": 0, "RTSTRUCT": 1, "RTPLAN": 2, "RTDOSE": 3, "SR": 4, "DOC": 5}
_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class DeliveryError(SctNodeError):
    """A delivery attempt failed; the message says where and why."""


#: Modalities each ``bundle`` setting of a destination receives.
_BUNDLE_MODALITIES = {"images": {"CT", "MR"}, "images-and-rt": {"CT", "MR", "RTSTRUCT", "RTPLAN", "RTDOSE"}}
#: The image modalities: what is sent ahead (``part="images"``) and left out of ``part="rest"``.
_IMAGES = _BUNDLE_MODALITIES["images"]


def ordered_outputs(output_dir: Path, bundle: str = "all", part: str = "all") -> list[Path]:
    """Every DICOM file under a job's output folder, in delivery order, except what is held back (``held/``).

    ``bundle`` (a destination's setting) leaves out the report (``images-and-rt``) or everything but the
    images (``images``). ``part`` is ``all``, ``images`` (what is sent ahead) or ``rest`` (all but the images).
    """
    if part not in ("all", "images", "rest"):
        raise ValueError(f"part must be all, images or rest; found {part!r}")
    wanted = _BUNDLE_MODALITIES.get(bundle)
    files = []
    for path in sorted(Path(output_dir).rglob("*.dcm")):
        if JobFolder.HELD in path.relative_to(output_dir).parts[:1]:
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "InstanceNumber"])
        modality = str(header.get("Modality", ""))
        if wanted is not None and modality not in wanted:
            continue
        if (part == "images" and modality not in _IMAGES) or (part == "rest" and modality in _IMAGES):
            continue
        files.append((_ORDER.get(modality, 9), int(header.get("InstanceNumber", 0) or 0), path))
    return [path for _, _, path in sorted(files)]


def deliver_files(files: list[Path], destination: DestinationConfig, calling_ae: str, timeout_s: float,
                  commitment: Commitment | None = None) -> None:
    """Send files to one destination on one association; with ``commitment``, have it commit to keep them.

    The commitment is requested on the same association after the C-STOREs (``files`` may then be empty: the
    images were sent ahead) and its report awaited after the release (:class:`sct_node.node.commitment.Commitment`).

    Raises
    ------
    DeliveryError
        If the association is refused or aborted, or any instance is not stored (or, with ``commitment``, not
        committed: :class:`sct_node.node.commitment.CommitmentError`).
    """
    if not files and commitment is None:
        raise DeliveryError("no output files to deliver")
    if destination.ae_title is None or destination.host is None or destination.port is None:  # validated config
        raise DeliveryError(f"{destination.name} is not a DIMSE destination (protocol = {destination.protocol})")
    headers = [pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]) for p in files]
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.requested_contexts = [build_context(uid, _TRANSFER_SYNTAXES) for uid in sorted({str(h.SOPClassUID)
                                                                                       for h in headers})]
    if commitment is not None:
        ae.requested_contexts = [*ae.requested_contexts, commitment.presentation_context]
    # (context, None): no server_hostname, as pynetdicom documents; its annotation says str only.
    tls_args = (client_context(destination.tls), None) if destination.tls else None
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    connected: list[bool] = []
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls_args,  # type: ignore[arg-type]
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay),
                                       (evt.EVT_CONN_OPEN, acknowledge_at_once),
                                       (evt.EVT_CONN_OPEN, lambda event: connected.append(True)),
                                       *(commitment.association_handlers if commitment is not None else ())])
    if not assoc.is_established:
        # pynetdicom marks a failed TCP connect as aborted too; only an opened connection can be aborted.
        reason = ("rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted and connected
                  else "could not connect")
        raise DeliveryError(f"association with {where} {reason}")
    accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
    refused = sorted({str(h.SOPClassUID) for h in headers} - accepted)
    if refused:
        assoc.release()
        names = ", ".join(UID(uid).name for uid in refused)
        raise DeliveryError(f"{where} does not accept {names}; nothing was sent. If it cannot store these objects, "
                            "set the destination's bundle = \"images-and-rt\" (no SR/PDF) or \"images\" (node.toml)")
    try:
        if commitment is not None:
            commitment.check_accepted(assoc)
        for index, path in enumerate(files):
            status = assoc.send_c_store(path, msg_id=index % 65535 + 1)
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(f"{where} did not answer for {path.name} (connection lost or timed out)")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # Success or Warning counts as stored
                comment = str(status.get("ErrorComment", "") or "")
                raise DeliveryError(f"{where} answered 0x{code:04X} for {path.name}{': ' + comment if comment else ''}")
        if commitment is not None:
            commitment.request(assoc, msg_id=len(files) % 65535 + 1)
    finally:
        if assoc.is_established:
            assoc.release()
    if commitment is not None:
        commitment.wait()


def send_files(files: list[Path], destination: DestinationConfig, calling_ae: str, timeout_s: float,
               commitment: Commitment | None = None) -> None:
    """Send files to one destination by its protocol: C-STORE (:func:`deliver_files`) or STOW-RS
    (:func:`sct_node.node.stow.deliver_stow`).

    Raises
    ------
    DeliveryError
        If the destination did not store every file.
    """
    if destination.protocol == "stow-rs":
        from sct_node.node.stow import StowDeliveryError, deliver_stow  # requests and dicomweb-client: only here

        try:
            deliver_stow(files, destination, timeout_s)
        except StowDeliveryError as error:
            raise DeliveryError(str(error)) from None
        return
    deliver_files(files, destination, calling_ae, timeout_s, commitment)


class Dispatcher:
    """Runs due deliveries from the state store."""

    def __init__(self, state: StateStore, destinations: dict[str, DestinationConfig], dispatch: DispatchConfig,
                 calling_ae: str, metrics: NodeMetrics | None = None,
                 commitments: CommitmentRegistry | None = None) -> None:
        self.state, self.destinations, self.dispatch, self.calling_ae = state, destinations, dispatch, calling_ae
        self.metrics = metrics
        #: Set by a cluster's dispatcher role: claim each attempt first (:meth:`run_due`).
        self.claim_lease_s: float | None = None
        if commitments is None and any(d.storage_commitment for d in destinations.values()):
            from sct_node.node.commitment import CommitmentRegistry  # here: that module imports this one

            commitments = CommitmentRegistry()  # without the node's Storage SCP: reports on the delivery's association
        #: Pending storage commitments, shared with the Storage SCP that receives their reports.
        self.commitments = commitments

    def run_due(self) -> int:
        """Attempt every due delivery once; returns how many were attempted.

        With ``claim_lease_s`` (a cluster, where several dispatchers may run), each attempt is first claimed in
        the database (:meth:`StateStore.claim_delivery`), so that two dispatchers never send the same delivery
        at once; the single node, whose one dispatcher thread is alone, does not need it.
        """
        due = self.state.due_deliveries()
        attempted = 0
        for delivery in due:
            if self.claim_lease_s is not None and not self.state.claim_delivery(delivery.job_id,
                                                                               delivery.destination,
                                                                               self.claim_lease_s):
                continue  # another dispatcher took it
            self._attempt(delivery)
            attempted += 1
        return attempted

    def _attempt(self, delivery: Delivery) -> None:
        job = self.state.job(delivery.job_id)
        destination = self.destinations.get(delivery.destination)
        attempt = delivery.attempts + 1
        commitment: Commitment | None = None
        try:
            if destination is None:
                raise DeliveryError(f"destination {delivery.destination!r} is no longer configured")
            commitment = (self.commitments.prepare(job.output_dir, destination, job.id, attempt)
                          if destination.storage_commitment and self.commitments is not None else None)
            # After a failed attempt a committing destination gets everything again: what it failed to commit
            # may be an image sent ahead.
            part = "rest" if delivery.images_sent and not (commitment and delivery.attempts) else "all"
            files = ordered_outputs(job.output_dir, destination.bundle, part) if job.output_dir else []
            if not files and delivery.images_sent and commitment is None:
                # Its bundle is the images (bundle = "images"), all accepted while the report was rendered.
                self.state.delivery_succeeded(job.id, delivery.destination, "nothing left: its images were sent ahead")
                logger.info("job %d: %s had everything already (its images were sent ahead)", job.id,
                            delivery.destination)
                return
            if not files and job.held is not None:
                # The sCT is held back after a QA FAIL, and this destination takes nothing else (bundle =
                # "images"), or the report could not be built: nothing may go until release.
                self.state.delivery_succeeded(job.id, delivery.destination, "nothing to send while the sCT is held back")
                logger.warning("job %d: nothing for %s while the sCT is held back (its bundle has nothing else, or "
                               "the report could not be built)", job.id, delivery.destination)
                return
            if not files and job.refused is not None:
                # A refused job has only its notice (SR and PDF), which this destination's bundle leaves out.
                self.state.delivery_succeeded(job.id, delivery.destination, "nothing: bundle leaves the notice out")
                logger.info("job %d: nothing for %s (refused input: its notice is an SR and a PDF, which bundle "
                            "= \"%s\" leaves out)", job.id, delivery.destination, destination.bundle)
                return
            send_files(files, destination, self.calling_ae, self.dispatch.timeout_s, commitment)
        except (DeliveryError, OSError, RuntimeError, ValueError) as error:
            if commitment is not None:
                commitment.record(self.state, job.id)
            if self.metrics is not None:
                self.metrics.delivery(delivery.destination, "failed" if attempt >= self.dispatch.max_attempts
                                      or destination is None else "retry")
            if attempt >= self.dispatch.max_attempts or destination is None:
                self.state.delivery_failed(job.id, delivery.destination, str(error), None)
                logger.error("job %d: delivery to %s failed after %d attempt(s): %s; outputs kept, "
                             "`sct-node retry %d` sends again", job.id, delivery.destination, attempt, error, job.id)
            else:
                delay_s = min(self.dispatch.initial_delay_s * 2 ** (attempt - 1), self.dispatch.max_delay_s)
                self.state.delivery_failed(job.id, delivery.destination, str(error), time.time() + delay_s)
                logger.warning("job %d: delivery to %s failed (attempt %d of %d): %s; next in %.0f s", job.id,
                               delivery.destination, attempt, self.dispatch.max_attempts, error, delay_s)
            return
        if commitment is not None:
            commitment.record(self.state, job.id)
            logger.info("job %d: %s committed all %d instance(s) of the bundle (transaction %s)", job.id,
                        delivery.destination, len(commitment.instances), commitment.transaction_uid)
        self.state.delivery_succeeded(job.id, delivery.destination,
                                      f"{len(files)} instance(s)" + (" (the rest: images sent ahead)"
                                                                     if part == "rest" else ""))
        if self.metrics is not None:
            self.metrics.delivery(delivery.destination, "delivered")
        logger.info("job %d: delivered %d instance(s) to %s%s", job.id, len(files), delivery.destination,
                    " (the rest of the bundle: its images were sent ahead)" if part == "rest" else "")

    def send_ahead(self, job_id: int, output_dir: Path, destinations: tuple[str, ...]) -> tuple[str, ...]:
        """Send a job's sCT images to each destination now, before its report exists; returns those that
        accepted all of them.

        Called by the processor while it renders the report (its own thread). A destination that is not
        configured, refuses or fails is left to the job's delivery, which then sends everything; this is
        logged at INFO, since the delivery's attempts are what count.
        """
        accepted = []
        for name in destinations:
            destination = self.destinations.get(name)
            if destination is None:
                continue
            try:
                files = ordered_outputs(output_dir, destination.bundle, "images")
                send_files(files, destination, self.calling_ae, self.dispatch.timeout_s)
            except (DeliveryError, OSError, RuntimeError, ValueError) as error:
                logger.info("job %d: sending the sCT ahead to %s failed (%s); its delivery sends everything",
                            job_id, name, error)
                self.state.log_delivery(job_id, name, "not sent ahead", str(error))
                continue
            accepted.append(name)
            self.state.log_delivery(job_id, name, "sent ahead", f"{len(files)} sCT image(s) during the report")
            if self.metrics is not None:
                self.metrics.images_sent_ahead(name, len(files))
            logger.info("job %d: sent %d sCT image(s) ahead to %s while the report is rendered", job_id, len(files),
                        name)
        return tuple(accepted)
