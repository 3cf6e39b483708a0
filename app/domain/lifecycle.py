"""A job's lifecycle: its statuses, why a run stops, and the one way a status changes.

Every status change goes through `transition`: it checks the move against `ALLOWED`, sets
the timestamps, lease and error that go with the new status, and records the event and the
webhook deliveries it owes, in one conditional UPDATE and the caller's transaction. The
condition (the job is still in the status it was read in, and whatever the caller adds,
such as its attempt) makes racing writers safe: the API and a worker may both try to move a
job, and only one of them does.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, update
from sqlalchemy.orm import Session

from app.db.models import FineTuningJob, JobEvent
from app.domain.statuses import TERMINAL, JobStatus
from app.ids import new_id, now
from app.services.webhooks import enqueue_job_event

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    # claimed by a worker; paused or cancelled before it started
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED}),
    # back to the queue (worker shutting down, or its lease expired), paused at a
    # checkpoint, or ended
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.SUCCEEDED,
                                  JobStatus.FAILED, JobStatus.CANCELLED}),
    # resumed, or cancelled while paused
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A programming error: code asked for a move the table does not allow."""


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed, as the job's `error` shows it."""

    code: str
    message: str

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": None}


def record_event(session: Session, job_id: str, message: str, *, level: str = "info",
                 type: str = "message", data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level,
                         type=type, message=message, data=data))


def check_transition(source: str, to: JobStatus) -> None:
    if to not in ALLOWED[JobStatus(source)]:
        raise IllegalTransition(f"a job cannot go from {source} to {to}")


def transition(session: Session, job: FineTuningJob, to: JobStatus, *, message: str,
               error: JobFailure | None = None, level: str | None = None,
               only_if: Iterable[ColumnElement[bool]] = (), **fields: Any) -> bool:
    """Move `job` to `to` and record `message` as its event. False (and nothing written)
    when the job is no longer in the status it was read in, or `only_if` no longer holds.

    `fields` are what the move sets beyond its own bookkeeping (a claim's worker, say).
    """
    check_transition(job.status, to)
    if (to is JobStatus.FAILED) != (error is not None):
        raise IllegalTransition("a job fails with an error, and only a failed job has one")
    values = {**_bookkeeping(JobStatus(job.status), to), **fields, "status": to}
    if error is not None:
        values["error"] = error.as_error()
    moved = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.status == job.status, *only_if)
        .values(**values)
        .execution_options(synchronize_session="fetch"))
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    record_event(session, job.id, message,
                 level=level or ("error" if to is JobStatus.FAILED else "info"))
    enqueue_job_event(session, job, to)
    return True


def _bookkeeping(source: JobStatus, to: JobStatus) -> dict[str, Any]:
    """What every move from `source` to `to` sets, whoever makes it."""
    moment = now()
    if to is JobStatus.RUNNING:
        return {"started_at": func.coalesce(FineTuningJob.started_at, moment)}
    values: dict[str, Any] = {"lease_expires_at": None}  # off a worker: nobody holds it
    if to is JobStatus.QUEUED:
        values["dispatched_at"] = None  # the outbox sends it (again)
    if JobStatus.PAUSED in (source, to):
        # A pause request is answered by pausing; a resume starts without one. A job
        # handed back to the queue keeps its request, so the next worker pauses it.
        values["pause_requested"] = False
    if to in TERMINAL:
        values["finished_at"] = moment
    return values
