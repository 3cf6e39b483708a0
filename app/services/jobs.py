"""Fine-tuning jobs: creation, lookup, cancellation, events, and the worker's lease."""

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob, JobCheckpoint, JobEvent
from app.errors import (
    Conflict,
    IdempotencyMismatch,
    InvalidHeader,
    InvalidRequest,
    JobNotCancellable,
    NotFound,
    RateLimited,
)
from app.ids import new_id, now
from app.ml.base_models import resolve_base_model
from app.ml.tasks.catalog import get_task
from app.services import registry
from app.services.files import get_file
from app.services.pages import newest_first

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
IDEMPOTENCY_HEADER = "Idempotency-Key"
Dispatch = Callable[[str], None]


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def record_event(session: Session, job_id: str, message: str, *, level: str = "info",
                 type: str = "message", data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level,
                         type=type, message=message, data=data))


def _check_base_model(session: Session, settings: Settings, project_id: str, model: str) -> None:
    if registry.find_version(session, project_id, model) is not None:
        return
    resolve_base_model(model, settings.resolved_models_dir, settings.allow_network)


def _check_capacity(session: Session, settings: Settings, project_id: str) -> None:
    active = session.scalar(select(func.count()).select_from(FineTuningJob).where(
        FineTuningJob.project_id == project_id, FineTuningJob.status.in_(ACTIVE))) or 0
    if active >= settings.max_active_jobs_per_project:
        raise RateLimited(f"The project already has {active} queued or running jobs (limit "
                          f"{settings.max_active_jobs_per_project}).", retry_after=60)


def create_job(session: Session, settings: Settings, project_id: str, body: dict[str, Any],
               idempotency_key: str | None) -> tuple[FineTuningJob, bool]:
    """Create a queued job, or return the one this idempotency key made. True if new."""
    _check_idempotency_key(idempotency_key)
    digest = _request_hash(body)
    existing = _replay(session, project_id, idempotency_key, digest)
    if existing is not None:
        return existing, False
    _check_capacity(session, settings, project_id)
    training = get_file(session, project_id, body["training_file"])
    validation = (get_file(session, project_id, body["validation_file"])
                  if body.get("validation_file") else None)
    if validation is not None and validation.sha256 == training.sha256:
        raise InvalidRequest("validation_file has the same contents as training_file; "
                             "evaluating on training rows would overstate every metric.",
                             param="validation_file", code="validation_overlaps_training")
    task = body.get("task") or training.detected_task
    adapter = get_task(task)
    for role, record in (("training_file", training), ("validation_file", validation)):
        if record is not None and not adapter.accepts_rows_of(record.detected_task):
            raise InvalidRequest(f"{role} holds {record.detected_task} rows, not {task}.",
                                 param=role, code="task_mismatch")
    _check_base_model(session, settings, project_id, body["model"])
    job = FineTuningJob(
        id=new_id("ftjob"), project_id=project_id, model=body["model"], task=task,
        training_file=training.id, validation_file=validation.id if validation else None,
        hyperparameters=body.get("hyperparameters") or {}, suffix=body.get("suffix"),
        seed=body["seed"] if body.get("seed") is not None else 42,
        metadata_=body.get("metadata"), status="queued", created_at=now(), attempt=0,
        idempotency_key=idempotency_key, request_hash=digest,
        artifact_key=f"jobs/{uuid.uuid4().hex}",
        cancel_requested=False, pause_requested=False,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # The same key raced us here; the database's unique constraint picked a winner.
        session.rollback()
        if idempotency_key is None:
            raise
        winner = _replay(session, project_id, idempotency_key, digest)
        if winner is None:
            # The winner's row is not visible to us yet: it is still being written.
            raise Conflict("A request with this Idempotency-Key is still being processed; "
                           "retry shortly.", param=IDEMPOTENCY_HEADER,
                           code="idempotency_key_in_use") from None
        return winner, False
    record_event(session, job.id, f"Created fine-tuning job {job.id}.")
    session.commit()
    return job, True


def _check_idempotency_key(idempotency_key: str | None) -> None:
    """A key is absent (None) or means something: an empty or blank one is refused, never
    stored as a key nor taken for no key."""
    if idempotency_key is not None and not idempotency_key.strip():
        raise InvalidHeader(f"{IDEMPOTENCY_HEADER} must not be empty or blank; omit the "
                            "header to create a job without one.", param=IDEMPOTENCY_HEADER)


def _replay(session: Session, project_id: str, idempotency_key: str | None,
            digest: str) -> FineTuningJob | None:
    """The job an earlier request with this Idempotency-Key made, if its body matches."""
    if idempotency_key is None:
        return None
    existing = session.scalar(select(FineTuningJob).where(
        FineTuningJob.project_id == project_id,
        FineTuningJob.idempotency_key == idempotency_key))
    if existing is not None and existing.request_hash != digest:
        raise IdempotencyMismatch("This Idempotency-Key was used with a different request "
                                  "body.", param=IDEMPOTENCY_HEADER)
    return existing


def get_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    job = session.scalar(select(FineTuningJob).where(
        FineTuningJob.id == job_id, FineTuningJob.project_id == project_id))
    if job is None:
        raise NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
    return job


def list_jobs(session: Session, project_id: str, after: str | None, limit: int,
              status: str | None) -> tuple[Sequence[FineTuningJob], bool]:
    query = select(FineTuningJob).where(FineTuningJob.project_id == project_id)
    if status:
        query = query.where(FineTuningJob.status == status)
    cursor = get_job(session, project_id, after) if after else None
    return newest_first(session, query, FineTuningJob, cursor, limit)


def cancel_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    job = get_job(session, project_id, job_id)
    if job.status in TERMINAL:
        raise JobNotCancellable(f"Job '{job_id}' is already {job.status}.",
                                param="fine_tuning_job_id")
    if job.status in ("queued", "paused"):
        # Nobody is training it: cancel at once. A worker that picks up its message later
        # finds it terminal and skips it.
        job.status, job.finished_at = "cancelled", now()
        record_event(session, job.id, "Job cancelled.")
    else:
        job.cancel_requested = True
        record_event(session, job.id, "Cancellation requested; stopping after this step.")
    session.commit()
    return job


def pause_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    job = get_job(session, project_id, job_id)
    if job.status not in ACTIVE:
        raise JobNotCancellable(f"Job '{job_id}' is {job.status}; only queued or running jobs "
                                "can be paused.", param="fine_tuning_job_id",
                                code="job_not_pausable")
    if job.status == "queued":
        job.status = "paused"
        record_event(session, job.id, "Job paused before it started.")
    else:
        job.pause_requested = True
        record_event(session, job.id, "Pause requested; saving a checkpoint first.")
    session.commit()
    return job


def resume_job(session: Session, settings: Settings, project_id: str,
               job_id: str) -> FineTuningJob:
    job = get_job(session, project_id, job_id)
    if job.status != "paused":
        raise JobNotCancellable(f"Job '{job_id}' is {job.status}, not paused.",
                                param="fine_tuning_job_id", code="job_not_paused")
    _check_capacity(session, settings, project_id)
    job.status, job.pause_requested, job.dispatched_at = "queued", False, None
    record_event(session, job.id, "Job resumed; it continues from its last checkpoint.")
    session.commit()
    return job


def list_events(session: Session, project_id: str, job_id: str, after: str | None,
                limit: int) -> tuple[Sequence[JobEvent], bool]:
    get_job(session, project_id, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        cursor = session.scalar(select(JobEvent.seq).where(JobEvent.id == after,
                                                           JobEvent.job_id == job_id))
        if cursor is None:
            raise NotFound(f"No event with id '{after}'.", param="after")
        query = query.where(JobEvent.seq < cursor)
    rows = session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def list_checkpoints(session: Session, project_id: str, job_id: str, after: str | None,
                     limit: int) -> tuple[Sequence[JobCheckpoint], bool]:
    get_job(session, project_id, job_id)
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    if after:
        cursor = session.scalar(select(JobCheckpoint.step_number).where(
            JobCheckpoint.id == after, JobCheckpoint.job_id == job_id))
        if cursor is None:
            raise NotFound(f"No checkpoint with id '{after}'.", param="after")
        query = query.where(JobCheckpoint.step_number < cursor)
    rows = session.scalars(query.order_by(JobCheckpoint.step_number.desc())
                           .limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def mark_dispatched(session: Session, job_id: str) -> None:
    session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id)
                    .values(dispatched_at=now()))


def jobs_to_dispatch(session: Session, settings: Settings) -> list[str]:
    """Queued jobs whose message never reached the broker (the outbox), or may have been
    lost by it since, oldest first."""
    moment = now()
    never_sent = (FineTuningJob.dispatched_at.is_(None)
                  & (FineTuningJob.created_at < moment - settings.dispatch_retry_seconds))
    long_unclaimed = FineTuningJob.dispatched_at < moment - settings.redispatch_seconds
    return list(session.scalars(select(FineTuningJob.id).where(
        FineTuningJob.status == "queued", never_sent | long_unclaimed,
    ).order_by(FineTuningJob.created_at)))
