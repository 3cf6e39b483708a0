"""Optional MLflow tracking: each fine-tuning job is one MLflow run.

What a run holds: README, "Tracking with MLflow". mlflow is imported only when
TUNEFORGE_MLFLOW_TRACKING_URI is set, and only by the worker training a job. The run's id is
kept on the job row, so an attempt that resumes the job (after a lost worker, a shutdown or a
pause) goes on logging to the same run.

Every MLflow call is made by a thread of the attempt's own: MLflow's client retries an
unreachable server for minutes, and training must not wait on it. The first failure records one
warning event on the job; the job's later figures are dropped.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.db.models import FineTuningJob, ModelVersion
from app.db.session import session_scope
from app.domain.lifecycle import record_event
from app.domain.statuses import JobStatus, StopReason
from app.ml.training import TrainingObserver, TrainingPlan
from app.services.leases import Claim

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# How long the end of an attempt waits for figures still on their way before dropping them.
DRAIN_SECONDS = 10.0
# MLflow refuses longer tag values (8,000 on current servers; less on older ones).
MAX_TAG_CHARS = 5_000
# The run's status once its job has ended; a paused or re-queued job's run stays RUNNING.
RUN_STATUS = {JobStatus.SUCCEEDED: "FINISHED", JobStatus.FAILED: "FAILED",
              JobStatus.CANCELLED: "KILLED"}
INSTALL_HINT = "the mlflow package is not installed (pip install 'tuneforge[mlflow]')"

Send = Callable[["MlflowClient"], None]


class JobTracking:
    """One attempt's link to its job's MLflow run: what it sends goes through a queue."""

    def __init__(self, settings: Settings, claim: Claim, run_id: str | None):
        self.settings = settings
        self.claim = claim
        self.run_id = run_id
        self._queue: queue.Queue[Send | None] = queue.Queue()
        self._warned = False
        self._warning_lock = threading.Lock()
        self._thread = threading.Thread(target=self._send_all, daemon=True,
                                        name=f"mlflow-{claim.job_id}")
        self._thread.start()

    def open_run(self, job: FineTuningJob, plan: TrainingPlan) -> None:
        """Resume the job's run, or start it with the job's settings as params."""
        if self.run_id is not None:
            self._queue.put(lambda client: client.update_run(self._run(), status="RUNNING"))
            return
        params = run_params(job, plan)
        tags = {"tuneforge.project": job.project_id, "tuneforge.job": job.id}

        def start(client: MlflowClient) -> None:
            experiment = _experiment_id(client, self.settings.mlflow_experiment)
            self.run_id = client.create_run(experiment, run_name=job.id, tags=tags).info.run_id
            self._keep_run_id()
            _log_batch(client, self.run_id, params=params)

        self._queue.put(start)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        at = int(time.time() * 1000)
        numbers = _numbers(metrics)
        if numbers:
            self._queue.put(lambda client: _log_batch(client, self._run(), metrics=numbers,
                                                      step=step, at=at))

    def close(self) -> None:
        """Send the job's outcome, if it has one, and wait a little for the rest to go."""
        try:
            self._queue.put(self._outcome())
        except SQLAlchemyError:
            log.warning("could not read the outcome of job %s for MLflow", self.claim.job_id)
        self._queue.put(None)
        self._thread.join(DRAIN_SECONDS)
        if self._thread.is_alive():
            self._warn(f"MLflow did not answer within {DRAIN_SECONDS:.0f} s")

    def _outcome(self) -> Send:
        with session_scope(self.settings) as session:
            job = session.get_one(FineTuningJob, self.claim.job_id)
            status, final = job.status, dict(job.metrics or {})
            step = int((job.progress or {}).get("step") or 0)
            version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
            tags = version_tags(job, version) if version is not None else {}

        def send(client: MlflowClient) -> None:
            if tags:
                _log_batch(client, self._run(), metrics=_numbers(final), step=step, tags=tags)
            if status in RUN_STATUS:
                client.set_terminated(self._run(), status=RUN_STATUS[JobStatus(status)])

        return send

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the job's MLflow run was never started")
        return self.run_id

    def _send_all(self) -> None:
        client: MlflowClient | None = None
        while (send := self._queue.get()) is not None:
            if self._warned:
                continue  # tracking is off for this job: drop the rest
            try:
                client = client or _client(self.settings.mlflow_tracking_uri or "")
                send(client)
            except ImportError:
                self._warn(INSTALL_HINT)
            except Exception as exc:  # no MLflow failure may reach the job
                self._warn(f"{type(exc).__name__}: {str(exc)[:300]}")

    def _warn(self, reason: str) -> None:
        with self._warning_lock:
            if self._warned:
                return
            self._warned = True
        log.warning("MLflow tracking off for job %s: %s", self.claim.job_id, reason)
        try:
            with session_scope(self.settings) as session:
                record_event(session, self.claim.job_id, "MLflow tracking is off for the rest "
                             f"of this attempt: {reason}. Training goes on.", level="warn")
        except SQLAlchemyError:
            log.warning("could not record the MLflow warning for job %s", self.claim.job_id)

    def _keep_run_id(self) -> None:
        try:
            with session_scope(self.settings) as session:
                job = session.get(FineTuningJob, self.claim.job_id)
                if job is not None and job.attempt == self.claim.attempt:
                    job.tracking_run_id = self.run_id
        except SQLAlchemyError:
            # A later attempt then starts a run of its own; this one's figures still go here.
            log.warning("could not keep the MLflow run id of job %s", self.claim.job_id)


class TrackedObserver:
    """A job's observer that also sends its progress and evaluations to the MLflow run."""

    def __init__(self, observer: TrainingObserver, tracking: JobTracking,
                 trial: int | None = None):
        self.observer = observer
        self.tracking = tracking
        # A search's trials each count steps from 0: their figures are kept apart.
        self.prefix = f"trial_{trial}/" if trial is not None else ""

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.observer.on_progress(progress)
        self.tracking.log_metrics(progress["step"], {
            f"{self.prefix}train_loss": progress.get("train_loss"),
            f"{self.prefix}learning_rate": progress.get("learning_rate"),
            f"{self.prefix}samples_per_s": progress.get("samples_per_s"),
            f"{self.prefix}epoch": progress.get("epoch")})

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.observer.on_evaluation(step, metrics)
        self.tracking.log_metrics(step, {f"{self.prefix}eval_{k}": v
                                         for k, v in metrics.items() if k != "epoch"})

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        self.observer.on_checkpoint(step, epoch, metrics, directory)

    def stop_requested(self) -> StopReason | None:
        return self.observer.stop_requested()


def start_tracking(settings: Settings, claim: Claim, job: FineTuningJob,
                   plan: TrainingPlan) -> JobTracking | None:
    """The attempt's tracking, or None when no tracking URI is set."""
    if not settings.mlflow_tracking_uri:
        return None
    tracking = JobTracking(settings, claim, job.tracking_run_id)
    tracking.open_run(job, plan)
    return tracking


def tracked(observer: TrainingObserver, tracking: JobTracking | None,
            trial: int | None = None) -> TrainingObserver:
    return observer if tracking is None else TrackedObserver(observer, tracking, trial)


def run_params(job: FineTuningJob, plan: TrainingPlan) -> dict[str, Any]:
    """What the run was asked to do: the hyperparameters training uses, "auto" resolved.

    A search's trials each choose their own, so its params are what the job asked for; the
    winner's values end up in the lineage tags."""
    asked = dict(job.hyperparameters)
    if "search" in asked:
        hyperparameters = {**asked, "search": json.dumps(asked["search"], sort_keys=True)}
    else:
        hyperparameters = plan.hyperparameters.as_dict()
    params = {**hyperparameters, "base_model": job.model, "task": job.task,
              "training_file": job.training_file, "seed": job.seed}
    if job.validation_file:
        params["validation_file"] = job.validation_file
    return params


def version_tags(job: FineTuningJob, version: ModelVersion) -> dict[str, str]:
    """The registered version and its lineage, as the run's tags."""
    tags = {"tuneforge.fine_tuned_model": job.fine_tuned_model or version.id,
            "tuneforge.version_id": version.id, "tuneforge.version": str(version.version)}
    for key, value in version.lineage.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        tags[f"lineage.{key}"] = text[:MAX_TAG_CHARS]
    return tags


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return client.create_experiment(name)
    except Exception:
        # Another worker may have made it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _log_batch(client: MlflowClient, run_id: str, *, metrics: dict[str, float] | None = None,
               step: int = 0, at: int | None = None, params: dict[str, Any] | None = None,
               tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    at = at or int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, at, step) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()])


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if _is_finite(v)}


def _is_finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
