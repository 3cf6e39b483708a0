"""A search job, as a worker runs it: trial after trial, each a recorded child run.

Every trial is a row in `search_trials` before it trains and gets its metrics when it ends,
so the database says which trials are done. A later attempt (after a killed worker, a pause
or a shutdown) replays the finished trials into the study without training them again, and
resumes the interrupted trial with its own settings from its last checkpoint.
"""

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob, SearchTrial
from app.db.session import retry_on_outage
from app.domain.lifecycle import record_event
from app.domain.statuses import StopReason
from app.errors import StorageUnavailable
from app.ids import new_id, now
from app.ml.hyperparameters import DataProfile, Hyperparameters
from app.ml.search import (
    SearchPlan,
    new_study,
    objective,
    propose,
    replay,
    search_plan,
    trial_hyperparameters,
)
from app.ml.training import TrainingObserver, TrainingPlan, TrainingResult, fine_tune
from app.services.leases import Claim
from app.storage.artifacts import ArtifactStore

log = logging.getLogger(__name__)
ObserverFor = Callable[["Trial", str], TrainingObserver]
RECORD_PATIENCE_S = 600.0
TRIAL_FOLDER = "trial-{number}"
# A trial in one of these is done: a later attempt replays it and never trains it again. Others
# (running, or interrupted by a pause or a worker's shutdown) resume from their checkpoint.
FINISHED = ("succeeded", "failed", "cancelled")
# How long a trial trained, kept with its metrics (the winner's become the version's).
RUNTIME, SPEED = "train_runtime_s", "train_samples_per_s"


@dataclass(frozen=True)
class Trial:
    """Which trial a run is: `number` counts from 0, of `of` trials."""

    number: int
    of: int


@dataclass(frozen=True)
class TrialRun:
    """Where one trial stands, as the database has it."""

    number: int
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    best_step: int | None
    storage_key: str | None


@dataclass(frozen=True)
class SearchOutcome:
    """The search's result: the winning trial's, or the stop that ended this attempt."""

    result: TrainingResult
    # The winner's plan (its settings and folder); the job's own plan when stopped.
    plan: TrainingPlan
    summary: dict[str, Any]


def is_search(hyperparameters: dict[str, Any]) -> bool:
    return bool(hyperparameters.get("search"))


class SearchRun:
    """One attempt at a search job."""

    def __init__(self, settings: Settings, store: ArtifactStore, claim: Claim,
                 plan: TrainingPlan, artifact_key: str, profile: DataProfile):
        self.settings = settings
        self.store = store
        self.claim = claim
        self.plan = plan
        self.artifact_key = artifact_key
        self.metric = plan.task.best_metric
        self.profile = profile
        self.search = self._write(self._read_plan)

    def run(self, observer_for: ObserverFor) -> SearchOutcome:
        """Train every trial not yet finished; `observer_for(trial, folder_key)` gives the
        observer that records a trial's progress on the job."""
        study = new_study(self.search)
        done = {trial.number: trial for trial in self._write(self._read_trials)}
        if not done:
            self._write(self._announce)
        for number in range(self.search.trials):
            known = done.get(number)
            if known is not None and known.status in FINISHED:
                self._replay(study, known)
                continue
            stopped = self._run_trial(study, number, known, observer_for)
            if stopped is not None:
                return SearchOutcome(stopped, self.plan, {})
        return self._winner()

    # ------------------------------------------------------------ one trial

    def _run_trial(self, study: optuna.Study, number: int, interrupted: TrialRun | None,
                   observer_for: ObserverFor) -> TrainingResult | None:
        """Train one trial; the stop result if the job must stop, else None."""
        proposal = propose(study, self.search, interrupted.params if interrupted else None)
        hyperparameters = trial_hyperparameters(self.search, proposal.params, self.profile)
        plan = self._trial_plan(number, hyperparameters)
        self._write(lambda s: self._start(s, number, proposal.params, hyperparameters,
                                          resumed=interrupted is not None))
        observer = observer_for(Trial(number, self.search.trials), self._folder_key(number))
        try:
            result = fine_tune(plan, observer)
        except StorageUnavailable:
            raise  # an outage, not the trial: the job goes back to the queue and resumes it
        except Exception as exc:  # one trial's failure (say, out of memory) ends that trial only
            log.exception("trial %s of job %s failed", number, self.claim.job_id)
            study.tell(proposal, state=optuna.trial.TrialState.FAIL)
            why = f"{type(exc).__name__}: {exc}"[:500]
            self._write(lambda s: self._fail(s, number, why))
            return None
        if result.stopped:
            if result.stopped != StopReason.LOST:  # a lost attempt writes nothing
                self._write(lambda s: self._stop(s, number, result.stopped))
            return result  # the job stops; a paused or handed-back trial resumes later
        study.tell(proposal, objective(result.best_metrics, self.metric))
        _keep_only(plan.output_dir, result.best_checkpoint)
        self._write(lambda s: self._finish(s, number, result))
        return None

    def _trial_plan(self, number: int, hyperparameters: Hyperparameters) -> TrainingPlan:
        return replace(self.plan, hyperparameters=hyperparameters,
                       output_dir=self._trial_dir(number))

    def _trial_dir(self, number: int) -> Path:
        return self.plan.output_dir / TRIAL_FOLDER.format(number=number)

    def _folder_key(self, number: int) -> str:
        return f"{self.artifact_key}/{TRIAL_FOLDER.format(number=number)}"

    def _replay(self, study: optuna.Study, trial: TrialRun) -> None:
        succeeded = trial.status == "succeeded" and trial.metrics is not None
        replay(study, self.search, trial.params,
               objective(trial.metrics or {}, self.metric) if succeeded else None)

    # ------------------------------------------------------------ the winner

    def _winner(self) -> SearchOutcome:
        trials = [t for t in self._write(self._read_trials) if t.status == "succeeded"]
        if not trials:
            raise RuntimeError(f"all {self.search.trials} trials failed; see the job's events")
        sign = 1.0 if self.search.greater_is_better else -1.0
        best = max(trials, key=lambda t: (sign * objective(t.metrics or {}, self.metric),
                                          -t.number))
        for trial in trials:
            if trial.number != best.number:
                shutil.rmtree(self._trial_dir(trial.number), ignore_errors=True)
        assert best.storage_key is not None
        hyperparameters = trial_hyperparameters(self.search, best.params, self.profile)
        metrics = dict(best.metrics or {})
        result = TrainingResult(stopped=None,
                                best_checkpoint=self.store.local_path(best.storage_key),
                                train_runtime_s=metrics.pop(RUNTIME, 0.0),
                                train_samples_per_s=metrics.pop(SPEED, 0.0),
                                best_metrics=metrics, best_step=best.best_step or 0)
        summary = {"trials": self.search.trials, "succeeded": len(trials),
                   "best_trial": best.number, "best_params": best.params}
        return SearchOutcome(result, self._trial_plan(best.number, hyperparameters), summary)

    # ------------------------------------------------------------ the database

    def _write(self, work: Any) -> Any:
        return retry_on_outage(self.settings, work, give_up_after=RECORD_PATIENCE_S,
                               what="recording a search trial")

    def _read_plan(self, session: Session) -> SearchPlan:
        job = session.get_one(FineTuningJob, self.claim.job_id)
        return search_plan(job.hyperparameters, self.plan.hyperparameters, job.seed,
                           self.plan.task.greater_is_better)

    def _read_trials(self, session: Session) -> list[TrialRun]:
        rows = session.scalars(select(SearchTrial).where(
            SearchTrial.job_id == self.claim.job_id).order_by(SearchTrial.number))
        return [TrialRun(r.number, r.status, dict(r.params), r.metrics, r.best_step,
                         r.storage_key) for r in rows]

    def _trial(self, session: Session, number: int) -> SearchTrial | None:
        return session.scalar(select(SearchTrial).where(
            SearchTrial.job_id == self.claim.job_id, SearchTrial.number == number))

    def _announce(self, session: Session) -> None:
        space = ", ".join(f"{name} {list(bounds)}" for name, bounds in
                          vars(self.search.space).items() if bounds is not None)
        record_event(session, self.claim.job_id,
                     f"Search: {self.search.trials} trials over {space or 'nothing'}, each "
                     f"scored by validation {self.metric}; the best becomes the version.")

    def _start(self, session: Session, number: int, params: dict[str, Any],
               hyperparameters: Hyperparameters, resumed: bool) -> None:
        trial = self._trial(session, number)
        if trial is not None:
            trial.status = "running"
        else:
            session.add(SearchTrial(
                id=new_id("fttrial"), job_id=self.claim.job_id, number=number,
                status="running", params=params, hyperparameters=hyperparameters.as_dict(),
                started_at=now()))
        verb = "resumed" if resumed else "started"
        record_event(session, self.claim.job_id,
                     f"Trial {number + 1} of {self.search.trials} {verb}: "
                     f"{describe(params)}.", data={"trial": number, "params": params})

    def _finish(self, session: Session, number: int, result: TrainingResult) -> None:
        trial = self._trial(session, number)
        if trial is None:
            return
        trial.status, trial.finished_at = "succeeded", now()
        trial.best_step = result.best_step
        trial.metrics = {**result.best_metrics, RUNTIME: round(result.train_runtime_s, 3),
                         SPEED: round(result.train_samples_per_s, 2)}
        assert result.best_checkpoint is not None
        trial.storage_key = f"{self._folder_key(number)}/{result.best_checkpoint.name}"
        value = objective(result.best_metrics, self.metric)
        record_event(session, self.claim.job_id,
                     f"Trial {number + 1} of {self.search.trials} finished: {self.metric} "
                     f"{value:.4f} (best checkpoint at step {result.best_step}).",
                     type="metrics",
                     data={"trial": number, "step": result.best_step, **result.best_metrics})

    def _stop(self, session: Session, number: int, reason: StopReason | None) -> None:
        trial = self._trial(session, number)
        if trial is not None:
            trial.status = "cancelled" if reason == StopReason.CANCEL else "interrupted"

    def _fail(self, session: Session, number: int, why: str) -> None:
        trial = self._trial(session, number)
        if trial is None:
            return
        trial.status, trial.finished_at = "failed", now()
        trial.error = why
        record_event(session, self.claim.job_id,
                     f"Trial {number + 1} of {self.search.trials} failed: {trial.error}",
                     level="warn", data={"trial": number})


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2e}" if isinstance(v, float) and k == "learning_rate"
                     else f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in params.items())


def _keep_only(output_dir: Path, best: Path | None) -> None:
    """A finished trial keeps its best checkpoint (the candidate for the version), weights
    only: the others, and the optimizer state, are no longer needed."""
    for checkpoint in output_dir.glob("checkpoint-*"):
        if best is None or checkpoint.name != best.name:
            shutil.rmtree(checkpoint, ignore_errors=True)
