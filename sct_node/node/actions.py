"""What a person does to a job, the same from the command line and the console: release, retry, dismiss.

Each action checks the job's state, changes it and appends who did it, when and why to the audit trail
(:meth:`StateStore.audit_entries`) in the same transaction, so there is no change without its entry.
"""

from __future__ import annotations

import getpass

from sct_node.errors import SctNodeError
from sct_node.node.qa_stage import release_held
from sct_node.node.state import Actor, Job, JobState, StateStore

__all__ = ["cli_actor", "dismiss", "release", "retry"]


def cli_actor() -> Actor:
    """The person at the command line: ``cli:<login name>``."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database (a bare container)
        login = "unknown"
    return Actor(f"cli:{login}", "cli")


def release(state: StateStore, job_id: int, actor: Actor, comment: str = "") -> tuple[JobState, int]:
    """Deliver the sCT a QA FAIL held back: move its files back among the outputs and hand the job to the
    dispatcher. Returns the new state and the number of files moved.

    Raises
    ------
    SctNodeError
        For an unknown job or one that is not held.
    """
    job = state.job(job_id)
    if job.state != JobState.HELD:
        raise SctNodeError(f"job {job_id} is {job.state}, not held; only held jobs can be released")
    moved = release_held(job.output_dir) if job.output_dir else 0
    return state.release_job(job_id, actor, comment.strip()), moved


def retry(state: StateStore, job_id: int, actor: Actor) -> JobState:
    """Put a failed job back (re-deliver, or process again); returns its new state."""
    return state.retry_job(job_id, actor)


def dismiss(state: StateStore, job_id: int, actor: Actor, comment: str) -> Job:
    """Give up on a failed or held job, saying why; returns the dismissed job."""
    return state.dismiss_job(job_id, comment, actor=actor)
