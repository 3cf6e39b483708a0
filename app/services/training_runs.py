"""One attempt at a job, as a worker runs it: claim, train with progress, record the outcome."""

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import DatasetFile, FineTuningJob, JobCheckpoint
from app.db.session import after_commit, retry_on_outage, session_scope
from app.domain.lifecycle import JobFailure, record_event, transition
from app.domain.statuses import JobStatus, StopReason
from app.errors import StorageUnavailable, TuneforgeError
from app.ids import new_id, now
from app.ml.distributed import ProcessesUnavailable, check_processes
from app.ml.hyperparameters import DataProfile, Hyperparameters, resolve
from app.ml.precision import use_bf16
from app.ml.tasks.base import Row, TaskAdapter
from app.ml.tasks.catalog import get_task
from app.ml.training import (
    TrainingObserver,
    TrainingPlan,
    TrainingResult,
    data_profile,
    fine_tune,
    stratified_split,
    strip_resume_state,
)
from app.services import registry
from app.services.files import load_rows
from app.services.leases import Claim, Heartbeat, claim_job
from app.services.search_runs import SearchRun, Trial, is_search
from app.services.tracking import JobTracking, start_tracking, tracked
from app.storage.artifacts import ArtifactStore, artifact_store

log = logging.getLogger(__name__)
HELD_OUT_FRACTION = 0.1
# How long a finished attempt waits for the database before giving up its outcome; the
# lease then expires and the job re-runs from its last checkpoint.
OUTCOME_PATIENCE_S = 900.0
MAX_HELD_OUT_ROWS = 2_000


class JobObserver:
    """Writes the loop's progress to the database, each write in its own short session.

    Progress is best-effort (a database blip skips an update); checkpoints are retried
    until the database is back, since resuming depends on them.
    """

    PROGRESS_PATIENCE_S = 5.0
    CHECKPOINT_PATIENCE_S = 600.0

    def __init__(self, settings: Settings, claim: Claim, heartbeat: Heartbeat, artifact_key: str,
                 trial: Trial | None = None, store: ArtifactStore | None = None):
        self.settings = settings
        # Where each checkpoint is published once whole (a bucket: uploaded, manifest last).
        self.store = store
        self.claim = claim
        self.heartbeat = heartbeat
        self.artifact_key = artifact_key
        # A search job's trial: its events say so, and progress counts the whole search.
        self.trial = trial
        self.prefix = f"Trial {trial.number + 1}/{trial.of}: " if trial else ""

    def _job(self, session: Session) -> FineTuningJob | None:
        job = session.get(FineTuningJob, self.claim.job_id)
        return job if job is not None and job.attempt == self.claim.attempt else None

    def _best_effort(self, work: Callable[[Session], None], what: str) -> None:
        try:
            retry_on_outage(self.settings, work, give_up_after=self.PROGRESS_PATIENCE_S,
                            what=what)
        except (OperationalError, InterfaceError):
            log.warning("skipped %s for %s: database unavailable", what, self.claim.job_id)

    def on_progress(self, progress: dict[str, Any]) -> None:
        def write(session: Session) -> None:
            job = self._job(session)
            if job is None:
                return
            total = progress["total_steps"] or 1
            fraction = progress["step"] / total
            if self.trial:
                fraction = (self.trial.number + fraction) / self.trial.of
            job.progress = {"step": progress["step"], "total_steps": total,
                            "epoch": progress["epoch"], "fraction": round(fraction, 4)}
            if progress.get("eta_s") is not None and self.trial is None:
                job.estimated_finish = now() + progress["eta_s"]
            record_event(session, job.id, f"{self.prefix}Step {progress['step']}/{total}: "
                         f"training loss {progress['train_loss']:.4f}", type="metrics",
                         data=self._tagged(progress))

        self._best_effort(write, "recording progress")

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        def write(session: Session) -> None:
            job = self._job(session)
            if job is None:
                return
            job.metrics = metrics
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch")
            record_event(session, job.id, f"{self.prefix}Evaluation at step {step}: {summary}",
                         type="metrics", data=self._tagged({"step": step, **metrics}))

        self._best_effort(write, "recording an evaluation")

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        if self.store is not None:  # published before it is registered: resuming may need it
            self.store.put_checkpoint(directory, f"{self.artifact_key}/{directory.name}")

        def write(session: Session) -> None:
            if self._job(session) is None:
                return
            if self.trial is not None:
                # A trial's checkpoints are its own (search_trials keeps the best one); the
                # job's checkpoint list is the winner's, once the search has one.
                record_event(session, self.claim.job_id,
                             f"{self.prefix}Checkpoint saved at step {step}.",
                             data=self._tagged({"step": step}))
                return
            exists = session.scalar(select(JobCheckpoint.id).where(
                JobCheckpoint.job_id == self.claim.job_id, JobCheckpoint.step_number == step))
            if exists is None:
                session.add(JobCheckpoint(
                    id=new_id("ftckpt"), job_id=self.claim.job_id, step_number=step,
                    epoch=epoch, metrics=metrics, created_at=now(),
                    storage_key=f"{self.artifact_key}/{directory.name}"))
            record_event(session, self.claim.job_id, f"Checkpoint saved at step {step}.")

        retry_on_outage(self.settings, write, give_up_after=self.CHECKPOINT_PATIENCE_S,
                        what="registering a checkpoint")

    def stop_requested(self) -> StopReason | None:
        return self.heartbeat.stop_requested()

    def _tagged(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "trial": self.trial.number} if self.trial else data


@dataclass
class _Prepared:
    plan: TrainingPlan
    base_model_ref: str
    artifact_key: str
    # What the automatic choices were made from (a search's trials choose from it too).
    profile: DataProfile
    # A search job's outcome: how many trials, and which won (recorded with the version).
    search: dict[str, Any] | None = None


def _warn_about_overlap(session: Session, job_id: str, train_rows: list[Row],
                        eval_rows: list[Row]) -> None:
    """Rows in both files inflate evaluation; say how many, since small overlaps are common."""
    seen = {json.dumps(row, sort_keys=True) for row in train_rows}
    shared = sum(json.dumps(row, sort_keys=True) in seen for row in eval_rows)
    if shared:
        record_event(session, job_id, f"{shared} of {len(eval_rows)} validation rows also "
                     "appear in the training file; their metrics are optimistic.", level="warn")


def training_rows(session: Session, store: ArtifactStore, job: FineTuningJob,
                  task: TaskAdapter) -> tuple[list[Row], list[Row]]:
    """The rows to train and to evaluate on: the validation file's, or held out."""
    train_rows = load_rows(store, session.get_one(DatasetFile, job.training_file))
    if job.validation_file:
        eval_rows = load_rows(store, session.get_one(DatasetFile, job.validation_file))
        _warn_about_overlap(session, job.id, train_rows, eval_rows)
        return train_rows, eval_rows
    fraction = min(HELD_OUT_FRACTION, MAX_HELD_OUT_ROWS / len(train_rows))
    train_rows, eval_rows = stratified_split(train_rows, fraction, job.seed,
                                             key=task.stratify_by)
    how = f", stratified by {task.stratify_by}," if task.stratify_by else ""
    record_event(session, job.id, f"No validation file: holding out {len(eval_rows)} "
                 f"training rows{how} for evaluation.")
    return train_rows, eval_rows


def base_model_source(session: Session, settings: Settings, store: ArtifactStore,
                      job: FineTuningJob) -> str:
    """Where the base model's weights are: one of the project's versions, or a base model."""
    return registry.model_source(session, settings, store, job.project_id, job.model)


def chosen_hyperparameters(session: Session, job: FineTuningJob,
                           profile: DataProfile) -> Hyperparameters:
    """The job's hyperparameters, "auto" resolved, each choice recorded with its reason."""
    hyperparameters = resolve(job.hyperparameters, profile)
    for reason in hyperparameters.reasons:
        record_event(session, job.id, f"auto: {reason}.")
    return hyperparameters


def _prepare(session: Session, settings: Settings, store: ArtifactStore,
             job: FineTuningJob) -> _Prepared:
    task = get_task(job.task)
    train_rows, eval_rows = training_rows(session, store, job, task)
    source = base_model_source(session, settings, store, job)
    profile = data_profile(task, train_rows, source)
    plan = TrainingPlan(task=task, base_model=source, train_rows=train_rows,
                        eval_rows=eval_rows, labels=task.labels(train_rows),
                        hyperparameters=chosen_hyperparameters(session, job, profile),
                        seed=job.seed, output_dir=store.work_dir(job.artifact_key),
                        mixed_precision=settings.mixed_precision)
    plan = _across_processes(session, job, plan)
    precision = "bf16 mixed precision" if use_bf16(plan.mixed_precision) else "fp32"
    record_event(session, job.id, f"Training in {precision}.")
    return _Prepared(plan, job.model, job.artifact_key, profile,
                     search={} if is_search(job.hyperparameters) else None)


def _processes(job: FineTuningJob) -> int:
    return int((job.compute or {}).get("processes", 1))


def _across_processes(session: Session, job: FineTuningJob, plan: TrainingPlan) -> TrainingPlan:
    """The plan spread over the job's training processes, each step's batch rounded up to a
    multiple of them so that every process trains on as many rows."""
    processes = _processes(job)
    if processes == 1:
        return plan
    hp = plan.hyperparameters
    batch_size = math.ceil(hp.batch_size / processes) * processes
    if batch_size != hp.batch_size:
        record_event(session, job.id, f"Batch size {hp.batch_size} rounded up to {batch_size} "
                     f"so that {processes} processes share each step evenly.")
    record_event(session, job.id, f"Training across {processes} processes (data parallel), "
                 f"{batch_size // processes} rows each per step.")
    return replace(plan, processes=processes, hyperparameters=replace(hp, batch_size=batch_size))


class Superseded(Exception):
    """Another attempt took the job while this one was recording its outcome."""


def owned_job(session: Session, claim: Claim) -> FineTuningJob | None:
    """The job, if this attempt still owns it: running, and not claimed again since."""
    job = session.get(FineTuningJob, claim.job_id)
    if job is None or job.attempt != claim.attempt or job.status != JobStatus.RUNNING:
        return None
    return job


def finish(session: Session, claim: Claim, job: FineTuningJob, to: JobStatus, *,
           message: str, error: JobFailure | None = None, level: str | None = None,
           **fields: Any) -> bool:
    """End this attempt: move its job to `to`, unless another attempt owns it by now."""
    return transition(session, job, to, message=message, error=error, level=level,
                      only_if=[FineTuningJob.attempt == claim.attempt], **fields)


def requeue(settings: Settings, claim: Claim, message: str) -> None:
    """Give the job back without failing it: an outage, not the job, stopped this attempt.
    The sweep sends it again (at its own pace, so an outage is not retried in a tight loop)."""
    with session_scope(settings) as session:
        job = owned_job(session, claim)
        if job is not None:
            finish(session, claim, job, JobStatus.QUEUED, level="warn", message=message)


def fail(settings: Settings, claim: Claim, failure: JobFailure) -> None:
    with session_scope(settings) as session:
        job = owned_job(session, claim)
        if job is not None:
            finish(session, claim, job, JobStatus.FAILED, error=failure,
                   message=f"Job failed: {failure.message}")


def _record_outcome(settings: Settings, store: ArtifactStore, claim: Claim,
                    prepared: _Prepared, result: TrainingResult) -> None:
    def write(session: Session) -> None:
        job = owned_job(session, claim)
        if job is None or result.stopped == StopReason.LOST:
            return  # another attempt owns the job now: it records the outcome
        if result.stopped is None:
            _register_success(session, store, claim, job, prepared, result)
        else:
            record_stop(session, settings, claim, job, result.stopped)

    try:
        retry_on_outage(settings, write, give_up_after=OUTCOME_PATIENCE_S,
                        what="recording the outcome")
    except Superseded:
        log.info("job %s was taken by another attempt; outcome of %d dropped", claim.job_id,
                 claim.attempt)


def record_stop(session: Session, settings: Settings, claim: Claim, job: FineTuningJob,
                reason: StopReason) -> None:
    """Where a run that stopped early leaves its job."""
    if reason == StopReason.CANCEL:
        finish(session, claim, job, JobStatus.CANCELLED, message="Job cancelled.")
    elif reason == StopReason.PAUSE:
        finish(session, claim, job, JobStatus.PAUSED, message="Job paused at a checkpoint.")
    elif reason == StopReason.TIMEOUT:
        limit = f"Training ran longer than {settings.max_job_seconds} s."
        finish(session, claim, job, JobStatus.FAILED, message=limit,
               error=JobFailure("time_limit_exceeded", limit))
    elif reason == StopReason.REQUEUE:
        # The API's sweep sends it again; a worker resumes it from the checkpoint.
        finish(session, claim, job, JobStatus.QUEUED, level="warn",
               message="Worker shutting down: checkpoint saved, job re-queued.")


def _register_success(session: Session, store: ArtifactStore, claim: Claim,
                      job: FineTuningJob, prepared: _Prepared, result: TrainingResult) -> None:
    assert result.best_checkpoint is not None
    strip_resume_state(prepared.plan.output_dir)
    # The bucket's copy keeps what a resume needs until the version is stored for good: if
    # storing it fails, another attempt resumes from there rather than from scratch.
    after_commit(session, lambda: store.drop_resume_state(prepared.artifact_key))
    metrics = {**result.best_metrics, "train_runtime_s": round(result.train_runtime_s, 3),
               "evaluate_and_save_s": round(result.evaluate_and_save_s, 3),
               "train_samples_per_s": round(result.train_samples_per_s, 2)}
    # Lineage records the values training used, "auto" resolved (a search: the winner's,
    # beside what the search was asked for and what it found).
    asked = job.hyperparameters.get("search")
    job.hyperparameters = prepared.plan.hyperparameters.as_dict()
    if prepared.search is not None:
        job.hyperparameters["search"] = {**(asked or {}), **prepared.search}
    version = registry.register_version(session, store, job, result.best_checkpoint,
                                        prepared.plan.labels, {**metrics, **result.best_tables},
                                        prepared.base_model_ref)
    # Progress is written at logging steps; the last step may fall between two of them.
    total = result.total_steps or (job.progress or {}).get("total_steps") or 0
    job.progress = {**(job.progress or {}), "step": result.final_step or total,
                    "total_steps": total, "fraction": 1.0}
    if result.stopped_early:
        record_event(session, job.id, f"Stopped early at step {result.final_step} of {total}: "
                     f"{prepared.plan.hyperparameters.early_stopping_patience} evaluations "
                     f"without improvement. The best checkpoint (step {result.best_step}) "
                     "becomes the version.")
    job.metrics, job.trained_tokens = metrics, result.trained_tokens
    best = prepared.plan.task.best_metric
    if not finish(session, claim, job, JobStatus.SUCCEEDED, fine_tuned_model=version.id,
                  message=f"Job succeeded: registered {version.id} "
                          f"({best} {result.best_metrics.get(best, 0):.4f})."):
        raise Superseded(claim)  # roll the version back: the job is another attempt's now


def _public_message(settings: Settings, exc: Exception) -> str:
    """The failure as users see it: no server paths."""
    message = f"{type(exc).__name__}: {exc}"
    for path in (settings.resolved_artifact_dir, settings.data_dir.resolve()):
        message = message.replace(str(path), "<data>")
    return message[:500]


def _train(settings: Settings, store: ArtifactStore, claim: Claim, heartbeat: Heartbeat,
           prepared: _Prepared,
           tracking: JobTracking | None) -> tuple[_Prepared, TrainingResult]:
    """Train the job: one run, or a search's trials (then the winner's plan comes back)."""
    if prepared.search is None:
        observer = JobObserver(settings, claim, heartbeat, prepared.artifact_key, store=store)
        return prepared, fine_tune(prepared.plan, tracked(observer, tracking))

    def observer_for(trial: Trial, folder_key: str) -> TrainingObserver:
        observer = JobObserver(settings, claim, heartbeat, folder_key, trial=trial, store=store)
        return tracked(observer, tracking, trial.number)

    search = SearchRun(settings, store, claim, prepared.plan, prepared.artifact_key,
                       prepared.profile)
    outcome = search.run(observer_for)
    return replace(prepared, plan=outcome.plan, search=outcome.summary), outcome.result


def run_job(settings: Settings, job_id: str, worker: str) -> None:
    claim = claim_job(settings, job_id, worker)
    if claim is None:
        log.info("job %s is not claimable (finished, cancelled or leased); skipping", job_id)
        return
    store = artifact_store(settings.resolved_artifact_dir, settings.artifact_url)
    tracking: JobTracking | None = None
    try:
        with session_scope(settings) as session:
            job = session.get_one(FineTuningJob, job_id)
            # Before anything is prepared: the job needs a worker with more cores or GPUs.
            check_processes(_processes(job))
            prepared = _prepare(session, settings, store, job)
            tracking = start_tracking(settings, claim, job, prepared.plan)
        with Heartbeat(settings, claim) as heartbeat:
            # Another machine may have trained it so far: its checkpoints come here first.
            store.fetch_checkpoints(prepared.artifact_key)
            prepared, result = _train(settings, store, claim, heartbeat, prepared, tracking)
        _record_outcome(settings, store, claim, prepared, result)
    except ProcessesUnavailable as exc:
        fail(settings, claim, JobFailure(exc.code, str(exc)))
    except StorageUnavailable:
        log.warning("job %s: artifact store unavailable; re-queued", job_id, exc_info=True)
        requeue(settings, claim, "The artifact store is unavailable: job re-queued; it resumes "
                                 "from its last uploaded checkpoint.")
    except TuneforgeError as exc:  # asks for what cannot be trained (LoRA on a masked-LM job)
        fail(settings, claim, JobFailure(exc.code, exc.message))
    except Exception as exc:  # the job, not the worker, failed: record why and move on
        log.exception("job %s failed", job_id)
        fail(settings, claim, JobFailure("training_failed", _public_message(settings, exc)))
    finally:
        if tracking is not None:
            tracking.close()  # after the outcome: the run ends with the job's status
