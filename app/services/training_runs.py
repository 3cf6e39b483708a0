"""One attempt at a job, as a worker runs it: claim, train with progress, record the outcome."""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import DatasetFile, FineTuningJob, JobCheckpoint
from app.db.session import retry_on_outage, session_scope
from app.ids import new_id, now
from app.ml.base_models import parameter_count, resolve_base_model
from app.ml.hyperparameters import DataProfile, resolve
from app.ml.precision import use_bf16
from app.ml.tasks.base import Row
from app.ml.tasks.catalog import get_task
from app.ml.training import (
    TrainingPlan,
    TrainingResult,
    fine_tune,
    stratified_split,
    strip_resume_state,
)
from app.services import registry
from app.services.files import load_rows
from app.services.jobs import record_event
from app.services.leases import Claim, Heartbeat, claim_job
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

    def __init__(self, settings: Settings, claim: Claim, heartbeat: Heartbeat, artifact_key: str):
        self.settings = settings
        self.claim = claim
        self.heartbeat = heartbeat
        self.artifact_key = artifact_key

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
            job.progress = {"step": progress["step"], "total_steps": total,
                            "epoch": progress["epoch"],
                            "fraction": round(progress["step"] / total, 4)}
            if progress.get("eta_s") is not None:
                job.estimated_finish = now() + progress["eta_s"]
            record_event(session, job.id, f"Step {progress['step']}/{total}: training loss "
                         f"{progress['train_loss']:.4f}", type="metrics", data=progress)

        self._best_effort(write, "recording progress")

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        def write(session: Session) -> None:
            job = self._job(session)
            if job is None:
                return
            job.metrics = metrics
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch")
            record_event(session, job.id, f"Evaluation at step {step}: {summary}",
                         type="metrics", data={"step": step, **metrics})

        self._best_effort(write, "recording an evaluation")

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        def write(session: Session) -> None:
            if self._job(session) is None:
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

    def stop_requested(self) -> str | None:
        return self.heartbeat.stop_requested()


@dataclass
class _Prepared:
    plan: TrainingPlan
    base_model_ref: str
    artifact_key: str


def _warn_about_overlap(session: Session, job_id: str, train_rows: list[Row],
                        eval_rows: list[Row]) -> None:
    """Rows in both files inflate evaluation; say how many, since small overlaps are common."""
    seen = {json.dumps(row, sort_keys=True) for row in train_rows}
    shared = sum(json.dumps(row, sort_keys=True) in seen for row in eval_rows)
    if shared:
        record_event(session, job_id, f"{shared} of {len(eval_rows)} validation rows also "
                     "appear in the training file; their metrics are optimistic.", level="warn")


def _prepare(session: Session, settings: Settings, store: ArtifactStore,
             job: FineTuningJob) -> _Prepared:
    task = get_task(job.task)
    train_rows = load_rows(store, session.get_one(DatasetFile, job.training_file))
    if job.validation_file:
        eval_rows = load_rows(store, session.get_one(DatasetFile, job.validation_file))
        _warn_about_overlap(session, job.id, train_rows, eval_rows)
    else:
        fraction = min(HELD_OUT_FRACTION, MAX_HELD_OUT_ROWS / len(train_rows))
        train_rows, eval_rows = stratified_split(train_rows, fraction, job.seed,
                                                 key=task.stratify_by)
        how = f", stratified by {task.stratify_by}," if task.stratify_by else ""
        record_event(session, job.id, f"No validation file: holding out {len(eval_rows)} "
                     f"training rows{how} for evaluation.")
    version = registry.find_version(session, job.project_id, job.model)
    source = (str(store.local_path(version.storage_key)) if version else
              resolve_base_model(job.model, settings.resolved_models_dir,
                                 settings.allow_network).source)
    labels = task.labels(train_rows)
    hyperparameters = resolve(job.hyperparameters, DataProfile(
        n_rows=len(train_rows), parameters=parameter_count(source)))
    for reason in hyperparameters.reasons:
        record_event(session, job.id, f"auto: {reason}.")
    plan = TrainingPlan(task=task, base_model=source, train_rows=train_rows,
                        eval_rows=eval_rows, labels=labels,
                        hyperparameters=hyperparameters, seed=job.seed,
                        output_dir=store.local_path(job.artifact_key),
                        mixed_precision=settings.mixed_precision)
    precision = "bf16 mixed precision" if use_bf16(plan.mixed_precision) else "fp32"
    record_event(session, job.id, f"Training in {precision}.")
    return _Prepared(plan, job.model, job.artifact_key)


def _fail(settings: Settings, claim: Claim, code: str, message: str) -> None:
    with session_scope(settings) as session:
        job = session.get(FineTuningJob, claim.job_id)
        if job is None or job.attempt != claim.attempt:
            return
        job.status, job.finished_at, job.lease_expires_at = "failed", now(), None
        job.error = {"code": code, "message": message, "param": None}
        record_event(session, job.id, f"Job failed: {message}", level="error")


def _record_outcome(settings: Settings, store: ArtifactStore, claim: Claim,
                    prepared: _Prepared, result: TrainingResult) -> None:
    def write(session: Session) -> None:
        job = session.get(FineTuningJob, claim.job_id)
        if job is None or job.attempt != claim.attempt or result.stopped == "lost":
            return  # another attempt owns the job now: it records the outcome
        job.lease_expires_at = None
        if result.stopped == "cancel":
            job.status, job.finished_at = "cancelled", now()
            record_event(session, job.id, "Job cancelled.")
        elif result.stopped == "pause":
            job.status, job.pause_requested = "paused", False
            record_event(session, job.id, "Job paused at a checkpoint.")
        elif result.stopped == "timeout":
            job.status, job.finished_at = "failed", now()
            job.error = {"code": "time_limit_exceeded", "param": None,
                         "message": f"Training ran longer than {settings.max_job_seconds} s."}
            record_event(session, job.id, job.error["message"], level="error")
        elif result.stopped == "requeue":
            # The API's sweep sends it again; a worker resumes it from the checkpoint.
            job.status, job.dispatched_at = "queued", None
            record_event(session, job.id, "Worker shutting down: checkpoint saved, job "
                         "re-queued.", level="warn")
        else:
            _register_success(session, store, job, prepared, result)

    retry_on_outage(settings, write, give_up_after=OUTCOME_PATIENCE_S,
                    what="recording the outcome")


def _register_success(session: Session, store: ArtifactStore, job: FineTuningJob,
                      prepared: _Prepared, result: TrainingResult) -> None:
    assert result.best_checkpoint is not None
    strip_resume_state(prepared.plan.output_dir)
    metrics = {**result.best_metrics, "train_runtime_s": round(result.train_runtime_s, 3),
               "evaluate_and_save_s": round(result.evaluate_and_save_s, 3),
               "train_samples_per_s": round(result.train_samples_per_s, 2)}
    # Lineage records the values training used, "auto" resolved.
    job.hyperparameters = prepared.plan.hyperparameters.as_dict()
    version = registry.register_version(session, store, job, result.best_checkpoint,
                                        prepared.plan.labels, metrics, prepared.base_model_ref)
    job.status, job.finished_at, job.fine_tuned_model = "succeeded", now(), version.id
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
    record_event(session, job.id, f"Job succeeded: registered {version.id} "
                 f"({prepared.plan.task.best_metric} "
                 f"{result.best_metrics.get(prepared.plan.task.best_metric, 0):.4f}).")


def _public_message(settings: Settings, exc: Exception) -> str:
    """The failure as users see it: no server paths."""
    message = f"{type(exc).__name__}: {exc}"
    for path in (settings.resolved_artifact_dir, settings.data_dir.resolve()):
        message = message.replace(str(path), "<data>")
    return message[:500]


def run_job(settings: Settings, job_id: str, worker: str) -> None:
    claim = claim_job(settings, job_id, worker)
    if claim is None:
        log.info("job %s is not claimable (finished, cancelled or leased); skipping", job_id)
        return
    store = artifact_store(settings.resolved_artifact_dir)
    try:
        with session_scope(settings) as session:
            job = session.get_one(FineTuningJob, job_id)
            if job.started_at is None:
                job.started_at = now()
            record_event(session, job_id, f"Attempt {claim.attempt} started on {worker}.")
            prepared = _prepare(session, settings, store, job)
        with Heartbeat(settings, claim) as heartbeat:
            observer = JobObserver(settings, claim, heartbeat, prepared.artifact_key)
            result = fine_tune(prepared.plan, observer)
        _record_outcome(settings, store, claim, prepared, result)
    except Exception as exc:  # the job, not the worker, failed: record why and move on
        log.exception("job %s failed", job_id)
        _fail(settings, claim, "training_failed", _public_message(settings, exc))
