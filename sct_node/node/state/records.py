"""What the state database holds, as Python values: the states, and one frozen record per row.

The state machine these name is drawn in :mod:`sct_node.node.state` (the package's docstring).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dosimetry.qa_result import QaResult

__all__ = ["Actor", "AuditEntry", "Delivery", "DeliveryState", "InstanceRecord", "Job", "JobState", "JobTimings",
           "SeriesRecord", "SeriesState", "SeriesStatus", "with_trend_numbers"]


class SeriesState(StrEnum):
    """A series generation's own state (the module docstring draws the transitions)."""

    RECEIVING = "receiving"
    QUEUED = "queued"      # a job was made; from here the job's state says what happened
    UNROUTED = "unrouted"  # no routing rule matched
    PURGED = "purged"      # its instances were forgotten by the cleaner


class JobState(StrEnum):
    """A job's state (the module docstring draws the transitions)."""

    COMPLETE = "complete"      # its series is complete: waiting for a worker
    PROCESSING = "processing"
    DELIVERING = "delivering"
    DONE = "done"              # final
    HELD = "held"              # the sCT is held back after a QA FAIL: release or dismiss
    FAILED = "failed"          # reason kept: retry or dismiss
    DISMISSED = "dismissed"    # final: a person gave up on it, with a comment

    @property
    def at_rest(self) -> bool:
        """Whether the node has stopped working on the job: for good (done, dismissed) or until a person acts."""
        return self in (JobState.DONE, JobState.HELD, JobState.FAILED, JobState.DISMISSED)


class DeliveryState(StrEnum):
    """One destination's delivery of a job's outputs."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"          # no attempts left
    CANCELLED = "cancelled"    # its job was dismissed before it was sent



@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str
    received_at: float
    generation: int
    frame_of_reference_uid: str | None = None
    #: The association that brought it (:attr:`sct_node.node.netguard.Connection.association_id`).
    association: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    generation: int
    state: SeriesState
    study_uid: str | None
    modality: str | None
    description: str | None
    image_type: str | None
    body_part: str | None
    calling_ae: str | None
    instances: int
    first_received_at: float
    last_received_at: float
    updated_at: float
    #: The association the generation's first instance came on.
    association: str | None = None
    #: Whether every instance of the generation came on that one association (duplicates included).
    single_association: bool = True
    #: When that association was released normally (None while it is open, or when it was aborted).
    released_at: float | None = None
    #: How many instances the series says it has (Images in Acquisition, or an Enhanced MR concatenation);
    #: None when the data do not say, -1 when its instances disagree (on the count or the acquisition).
    expected_instances: int | None = None
    #: The Acquisition Number of the generation's first instance (None when it has none).
    acquisition: str | None = None


@dataclass(frozen=True)
class SeriesStatus:
    """A series generation as `sct-node status` shows it: with its job, once it has one."""

    series: SeriesRecord
    job_id: int | None
    job_state: JobState | None

    @property
    def state(self) -> SeriesState | JobState:
        """What happened to the generation: its job's state once it has a job, else its own.

        ``queued`` only says that a job was made; after that the job's state (``processing``, ``done``,
        ``failed``, ``held``, ``dismissed``, ...) is what an operator needs. ``receiving``, ``unrouted``
        and ``purged`` are the series' own and are shown as they are.
        """
        if self.series.state == SeriesState.QUEUED and self.job_state is not None:
            return self.job_state
        return self.series.state


@dataclass(frozen=True)
class JobTimings:
    """What a job's processing took, stage by stage (seconds), and what its checks said.

    A stage that did not run (no QA on the route, a series the input guard refused) is None; the database
    keeps the JSON of the stages that ran (:meth:`to_json`), as it did when this was a dict.
    """

    read_s: float | None = None
    guard_s: float | None = None
    #: The input guard's verdict: ok, soft, hard or unjudged (models.envelope).
    guard_verdict: str | None = None
    model_s: float | None = None
    write_s: float | None = None
    qa_s: float | None = None
    #: PASS, WARN or FAIL; ERROR for a QA that could not be made (the sCT is delivered without it).
    qa_verdict: str | None = None
    #: The verdict the report bundle carries; ERROR for a bundle that could not be built.
    report: str | None = None
    report_s: float | None = None
    total_s: float | None = None
    #: What the console's trends follow (trend_numbers): the QA's gamma pass rate (None without dose), the
    #: body's soft-tissue and bone mean HU and bone share, and whether the sCT was held back after a FAIL.
    gamma_pass_percent: float | None = None
    soft_tissue_mean_hu: float | None = None
    bone_mean_hu: float | None = None
    bone_percent: float | None = None
    held_back: bool | None = None

    def to_json(self) -> str:
        return json.dumps({name: value for name, value in asdict(self).items() if value is not None})

    @classmethod
    def from_json(cls, text: str) -> JobTimings:
        """Read what :meth:`to_json` wrote; keys this version does not know (a newer node's) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in json.loads(text).items() if name in known})


def with_trend_numbers(timings: JobTimings, qa: QaResult) -> JobTimings:
    """``timings`` with the numbers of a QA result that the console's trends follow."""
    from dataclasses import replace

    hu = qa.hu
    bone = next((t for t in hu.tissue_fractions if str(t.tissue) == "bone"), None) if hu is not None else None
    return replace(timings, gamma_pass_percent=qa.dose.gamma.pass_rate_percent if qa.dose is not None else None,
                   soft_tissue_mean_hu=hu.soft_tissue_mean_hu if hu is not None else None,
                   bone_mean_hu=hu.bone_mean_hu if hu is not None else None,
                   bone_percent=100.0 * bone.fraction if bone is not None else None)


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    generation: int
    route: str
    model: str
    state: JobState
    reason: str | None
    output_dir: Path | None
    created_at: float
    updated_at: float
    #: What processing took; None until the job was processed.
    timings: JobTimings | None
    #: Why part of the outputs is held back (None when nothing is); the job ends ``held`` instead of ``done``.
    held: str | None = None
    #: Why a person dismissed the job (``sct-node dismiss``), and when (seconds since the epoch).
    dismissed_comment: str | None = None
    dismissed_at: float | None = None
    #: Why the input guard refused the series (no sCT); the job ends ``failed`` with this reason once the
    #: refusal notice (SR and PDF) was delivered, and ``sct-node retry`` processes it again.
    refused: str | None = None
    #: Which completion rule made the series complete (sct_node.node.route: association, expected count,
    #: quiet period), with the numbers that fired it.
    completed_by: str | None = None
    #: How many times a worker claimed the job: the claim's fencing token. A worker's result counts only while
    #: the job is still its claim (:meth:`StateStore.job_processed` with ``claim=``), so a worker that lost the
    #: job to another (its queue message was redelivered) cannot deliver it a second time.
    claims: int = 0
    #: The cluster worker holding the job while it is processing, and until when (seconds since the epoch)
    #: unless it renews; None for the embedded node's workers, whose claims hold until the node restarts.
    claimed_by: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class Actor:
    """Who does something to a job: a console user (``name``, ``role``), or ``cli:<login>`` with role ``cli``."""

    name: str
    role: str


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit trail: who did what, to which job, when, and why."""

    id: int
    at: float
    actor: str
    role: str
    #: release, retry, dismiss (job actions); login, login_refused, logout (the console).
    action: str
    job_id: int | None
    comment: str
    #: What it led to: the job's new state, or why it was refused.
    outcome: str


@dataclass(frozen=True)
class Delivery:
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    #: The destination accepted the sCT images while the report was rendered (sent ahead by the processor):
    #: this delivery sends the rest of the bundle.
    images_sent: bool = False


# --- rows to records (columns in the records' order; booleans come back as 0/1 from SQLite) ----------------


def instance_from_row(row: tuple[Any, ...]) -> InstanceRecord:
    return InstanceRecord(row[0], row[1], row[2], Path(row[3]), *row[4:])


def series_from_row(row: tuple[Any, ...]) -> SeriesRecord:
    values = list(row)
    values[2] = SeriesState(values[2])
    if len(values) > 14:
        values[14] = bool(values[14])  # single_association
    return SeriesRecord(*values)


def job_from_row(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[5] = JobState(values[5])
    values[7] = Path(values[7]) if values[7] else None
    values[10] = JobTimings.from_json(values[10]) if values[10] else None
    return Job(*values)


def delivery_from_row(row: tuple[Any, ...]) -> Delivery:
    return Delivery(row[0], row[1], DeliveryState(row[2]), row[3], row[4], row[5], bool(row[6]))
