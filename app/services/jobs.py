"""Fine-tuning jobs: creation, lookup, the user's cancel, pause and resume, and their history."""

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import DatasetFile, FineTuningJob, JobCheckpoint, JobEvent, SearchTrial
from app.domain.lifecycle import record_event, transition
from app.domain.statuses import ACTIVE, TERMINAL, JobStatus
from app.errors import (
    Conflict,
    IdempotencyMismatch,
    InvalidHeader,
    InvalidRequest,
    JobNotCancellable,
    JobNotPausable,
    JobNotPaused,
    NotFound,
    RateLimited,
)
from app.ids import new_id, now
from app.ml import lora
from app.ml.base_models import resolve_base_model
from app.ml.tasks.catalog import get_task
from app.schemas.jobs import JobCreate
from app.services import registry
from app.services.files import get_file
from app.services.pages import by_creation, newest_first

IDEMPOTENCY_HEADER = "Idempotency-Key"
# The seed of a job that names none: fixed, so that two such jobs on the same rows train
# the same model.
DEFAULT_SEED = 42
# How often a user's verb is re-decided when a worker moved the job at the same moment.
VERB_TRIES = 3


def _request_hash(request: JobCreate) -> str:
    body = request.model_dump(exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _pinned_model(session: Session, settings: Settings, project_id: str, model: str) -> str:
    """The model the job starts from, as it will stay: one of the project's versions by its
    id (a name or alias sent may name another version by the time the job trains or
    resumes), else a base model's id."""
    version = registry.find_version(session, project_id, model)
    if version is None:
        resolve_base_model(model, settings.resolved_models_dir, settings.allow_network)
        return model
    registry.check_trainable_base(version, model)
    return version.id


def _check_capacity(session: Session, settings: Settings, project_id: str) -> None:
    active = session.scalar(select(func.count()).select_from(FineTuningJob).where(
        FineTuningJob.project_id == project_id, FineTuningJob.status.in_(ACTIVE))) or 0
    if active >= settings.max_active_jobs_per_project:
        raise RateLimited(f"The project already has {active} queued or running jobs (limit "
                          f"{settings.max_active_jobs_per_project}).", retry_after=60)


def create_job(session: Session, settings: Settings, project_id: str, request: JobCreate,
               idempotency_key: str | None) -> tuple[FineTuningJob, bool]:
    """Create a queued job, or return the one this idempotency key made. True if new."""
    _check_idempotency_key(idempotency_key)
    digest = _request_hash(request)
    existing = _replay(session, project_id, idempotency_key, digest)
    if existing is not None:
        return existing, False
    _check_queue(settings, request)
    _check_capacity(session, settings, project_id)
    training, validation = _job_files(session, project_id, request)
    task = _job_task(request, training, validation)
    model = _pinned_model(session, settings, project_id, request.model)
    job = _new_job(project_id, request, task, training, validation)
    job.model = model
    job.idempotency_key, job.request_hash = idempotency_key, digest
    return _insert(session, job)


def _check_queue(settings: Settings, request: JobCreate) -> None:
    """A job may only name a queue this deployment offers: elsewhere no worker would take it."""
    queue = request.compute.queue if request.compute else None
    if queue is not None and queue not in settings.queues:
        raise InvalidRequest(f"No worker queue '{queue}' here; this deployment offers "
                             f"{', '.join(settings.queues)} (TUNEFORGE_QUEUES).",
                             param="compute.queue", code="unknown_queue")


def _job_files(session: Session, project_id: str,
               request: JobCreate) -> tuple[DatasetFile, DatasetFile | None]:
    training = get_file(session, project_id, request.training_file)
    validation = (get_file(session, project_id, request.validation_file)
                  if request.validation_file else None)
    if validation is not None and validation.sha256 == training.sha256:
        raise InvalidRequest("validation_file has the same contents as training_file; "
                             "evaluating on training rows would overstate every metric.",
                             param="validation_file", code="validation_overlaps_training")
    return training, validation


def _job_task(request: JobCreate, training: DatasetFile, validation: DatasetFile | None) -> str:
    """The task the job names, else the one its training rows call for; both files fit it."""
    task = request.task or training.detected_task
    adapter = get_task(task)
    for role, record in (("training_file", training), ("validation_file", validation)):
        if record is not None and not adapter.accepts_rows_of(record.detected_task):
            raise InvalidRequest(f"{role} holds {record.detected_task} rows, not {task}.",
                                 param=role, code="task_mismatch")
    if request.hyperparameters and request.hyperparameters.lora:
        # Named or detected from the rows, the task is known here: refuse now, not in the worker.
        lora.check_task(task)
    return task


def _new_job(project_id: str, request: JobCreate, task: str, training: DatasetFile,
             validation: DatasetFile | None) -> FineTuningJob:
    hyperparameters = (request.hyperparameters.model_dump(exclude_none=True)
                       if request.hyperparameters else {})
    return FineTuningJob(
        id=new_id("ftjob"), project_id=project_id, model=request.model, task=task,
        training_file=training.id, validation_file=validation.id if validation else None,
        hyperparameters=hyperparameters, suffix=request.suffix,
        seed=DEFAULT_SEED if request.seed is None else request.seed,
        metadata_=request.metadata, status=JobStatus.QUEUED, created_at=now(), attempt=0,
        compute=request.compute.model_dump(exclude_none=True) if request.compute else None,
        artifact_key=f"jobs/{uuid.uuid4().hex}", cancel_requested=False,
        pause_requested=False,
    )


def _insert(session: Session, job: FineTuningJob) -> tuple[FineTuningJob, bool]:
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # The same key raced us here; the database's unique constraint picked a winner.
        # The failed insert spoils the transaction (PostgreSQL), and it holds nothing else.
        session.rollback()
        if job.idempotency_key is None:
            raise
        assert job.request_hash is not None
        winner = _replay(session, job.project_id, job.idempotency_key, job.request_hash)
        if winner is None:
            # The winner's row is not visible to us yet: it is still being written.
            raise Conflict("A request with this Idempotency-Key is still being processed; "
                           "retry shortly.", param=IDEMPOTENCY_HEADER,
                           code="idempotency_key_in_use") from None
        return winner, False
    record_event(session, job.id, f"Created fine-tuning job {job.id}.")
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
    return newest_first(session, query, by_creation(FineTuningJob), cursor, limit)


# A user's verb: True once it has done its part, False if a worker moved the job meanwhile.
Verb = Callable[[Session, FineTuningJob], bool]


def _apply(session: Session, job: FineTuningJob, verb: Verb) -> FineTuningJob:
    """Run `verb` on the job, deciding again from its new status if a worker claimed or
    finished it at the same moment."""
    for _ in range(VERB_TRIES):
        if verb(session, job):
            return job
        session.refresh(job)
    raise Conflict(f"Job '{job.id}' is changing state; retry.", param="fine_tuning_job_id")


def _cancel(session: Session, job: FineTuningJob) -> bool:
    if job.status in TERMINAL:
        raise JobNotCancellable(f"Job '{job.id}' is already {job.status}.",
                                param="fine_tuning_job_id")
    if job.status != JobStatus.RUNNING:
        # Nobody is training it: cancel at once. A worker that picks up its message later
        # finds it ended and skips it.
        return transition(session, job, JobStatus.CANCELLED, message="Job cancelled.")
    return _request_stop(session, job, cancel_requested=True,
                         message="Cancellation requested; stopping after this step.")


def _pause(session: Session, job: FineTuningJob) -> bool:
    if job.status not in ACTIVE:
        raise JobNotPausable(f"Job '{job.id}' is {job.status}; only queued or running jobs "
                             "can be paused.", param="fine_tuning_job_id")
    if job.status == JobStatus.QUEUED:
        return transition(session, job, JobStatus.PAUSED,
                          message="Job paused before it started.")
    return _request_stop(session, job, pause_requested=True,
                         message="Pause requested; saving a checkpoint first.")


def _resume(session: Session, job: FineTuningJob) -> bool:
    if job.status != JobStatus.PAUSED:
        raise JobNotPaused(f"Job '{job.id}' is {job.status}, not paused.",
                           param="fine_tuning_job_id")
    return transition(session, job, JobStatus.QUEUED,
                      message="Job resumed; it continues from its last checkpoint.")


def _request_stop(session: Session, job: FineTuningJob, *, message: str, **flag: bool) -> bool:
    """Ask the worker training the job to stop: it reads the flag at its next heartbeat."""
    asked = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.status == JobStatus.RUNNING)
        .values(**flag).execution_options(synchronize_session="fetch"))
    if asked.rowcount != 1:  # type: ignore[attr-defined]
        return False
    record_event(session, job.id, message)
    return True


def cancel_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    return _apply(session, get_job(session, project_id, job_id), _cancel)


def pause_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    return _apply(session, get_job(session, project_id, job_id), _pause)


def resume_job(session: Session, settings: Settings, project_id: str,
               job_id: str) -> FineTuningJob:
    job = get_job(session, project_id, job_id)
    if job.status == JobStatus.PAUSED:
        _check_capacity(session, settings, project_id)
    return _apply(session, job, _resume)


def list_events(session: Session, project_id: str, job_id: str, after: str | None,
                limit: int) -> tuple[Sequence[JobEvent], bool]:
    get_job(session, project_id, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    cursor = _cursor(session, query, JobEvent.id, after, "event")
    return newest_first(session, query, (JobEvent.seq,), cursor, limit)


def list_checkpoints(session: Session, project_id: str, job_id: str, after: str | None,
                     limit: int) -> tuple[Sequence[JobCheckpoint], bool]:
    get_job(session, project_id, job_id)
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    cursor = _cursor(session, query, JobCheckpoint.id, after, "checkpoint")
    return newest_first(session, query, (JobCheckpoint.step_number,), cursor, limit)


def list_trials(session: Session, project_id: str, job_id: str) -> Sequence[SearchTrial]:
    """A search job's trials, in the order they ran (at most the 50 a search may have)."""
    get_job(session, project_id, job_id)
    return session.scalars(select(SearchTrial).where(SearchTrial.job_id == job_id)
                           .order_by(SearchTrial.number)).all()


def _cursor(session: Session, query: Any, id_column: Any, after: str | None,
            what: str) -> Any | None:
    """The row `after` names, among those `query` lists."""
    if not after:
        return None
    row = session.scalar(query.where(id_column == after))
    if row is None:
        raise NotFound(f"No {what} with id '{after}'.", param="after")
    return row


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
        FineTuningJob.status == JobStatus.QUEUED, never_sent | long_unclaimed,
    ).order_by(FineTuningJob.created_at)))
