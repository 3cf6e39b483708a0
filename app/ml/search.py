"""Hyperparameter search: which settings each trial of a search job trains with.

Optuna proposes each trial's settings (TPE, seeded by the job's seed). The study lives in
memory only: the database holds every trial the job has run, so a resumed job rebuilds the
study from its finished trials (they are never trained again) and re-proposes an interrupted
trial's own settings, so that trial resumes from its last checkpoint.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from app.ml.hyperparameters import MAX_EPOCHS, DataProfile, Hyperparameters, resolve

# A searched learning rate ranges this many times below and above the automatic choice.
LEARNING_RATE_SPREAD = 4.0
DEFAULT_BATCH_SIZES = (16, 32)
SEARCHABLE = ("learning_rate", "n_epochs", "batch_size", "warmup_ratio", "weight_decay")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges are inclusive; the learning rate is searched on a log scale."""

    learning_rate: tuple[float, float] | None = None
    n_epochs: tuple[int, int] | None = None
    batch_size: tuple[int, ...] | None = None
    warmup_ratio: tuple[float, float] | None = None
    weight_decay: tuple[float, float] | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "SearchSpace":
        def pair(key: str) -> Any:
            value = raw.get(key)
            return tuple(sorted(value)) if value is not None else None

        batch = raw.get("batch_size")
        return cls(learning_rate=pair("learning_rate"), n_epochs=pair("n_epochs"),
                   batch_size=tuple(sorted(set(batch))) if batch else None,
                   warmup_ratio=pair("warmup_ratio"), weight_decay=pair("weight_decay"))

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        found: dict[str, optuna.distributions.BaseDistribution] = {}
        if self.learning_rate:
            found["learning_rate"] = optuna.distributions.FloatDistribution(
                *self.learning_rate, log=True)
        if self.n_epochs:
            found["n_epochs"] = optuna.distributions.IntDistribution(*self.n_epochs)
        if self.batch_size:
            found["batch_size"] = optuna.distributions.CategoricalDistribution(self.batch_size)
        for key in ("warmup_ratio", "weight_decay"):
            bounds = getattr(self, key)
            if bounds:
                found[key] = optuna.distributions.FloatDistribution(*bounds)
        return found


@dataclass(frozen=True)
class SearchPlan:
    trials: int
    space: SearchSpace
    # Settings every trial shares: what the caller fixed, "auto" for the rest.
    fixed: dict[str, Any]
    greater_is_better: bool
    seed: int


def search_plan(hyperparameters: Mapping[str, Any], auto: Hyperparameters, seed: int,
                greater_is_better: bool) -> SearchPlan:
    """The search a job asked for. With no space given, the space is the learning rate around
    the automatic choice, epochs from 1 to the automatic count (at least 3), and batch 16
    or 32; a dimension the caller fixed is not searched."""
    search = hyperparameters["search"]
    fixed = {k: v for k, v in hyperparameters.items() if k != "search" and v is not None}
    space = SearchSpace.of(search.get("space") or default_space(auto, fixed))
    return SearchPlan(trials=int(search["trials"]), space=space, fixed=fixed,
                      greater_is_better=greater_is_better, seed=seed)


def default_space(auto: Hyperparameters, fixed: Mapping[str, Any]) -> dict[str, Any]:
    space: dict[str, Any] = {
        "learning_rate": (auto.learning_rate / LEARNING_RATE_SPREAD,
                          auto.learning_rate * LEARNING_RATE_SPREAD),
        "n_epochs": (1, min(MAX_EPOCHS, max(3, auto.n_epochs))),
        "batch_size": DEFAULT_BATCH_SIZES,
    }
    return {k: v for k, v in space.items() if fixed.get(k) in (None, "auto")}


def new_study(plan: SearchPlan) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Half the trials (at most 10) sample at random before TPE models the results.
    sampler = optuna.samplers.TPESampler(
        seed=plan.seed, n_startup_trials=min(10, max(1, plan.trials // 2)))
    return optuna.create_study(direction="maximize" if plan.greater_is_better else "minimize",
                               sampler=sampler)


def replay(study: optuna.Study, plan: SearchPlan, params: dict[str, Any],
           value: float | None) -> None:
    """Tell the study about a trial an earlier attempt finished (value None: it failed)."""
    state = optuna.trial.TrialState.COMPLETE if value is not None \
        else optuna.trial.TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(
        state=state, params=params, distributions=plan.space.distributions(), value=value))


def propose(study: optuna.Study, plan: SearchPlan,
            interrupted: dict[str, Any] | None = None) -> optuna.trial.Trial:
    """The next trial; an interrupted trial gets its own settings again."""
    if interrupted is not None:
        study.enqueue_trial(interrupted)
    return study.ask(plan.space.distributions())


def trial_hyperparameters(plan: SearchPlan, params: Mapping[str, Any],
                          profile: DataProfile) -> Hyperparameters:
    """A trial's settings: its proposal over the shared ones, the rest chosen as usual."""
    return resolve({**plan.fixed, **params}, profile)


def objective(metrics: Mapping[str, float], metric: str) -> float:
    value = float(metrics.get(metric, math.nan))
    if math.isnan(value):
        raise ValueError(f"the trial's evaluation has no {metric}")
    return value
