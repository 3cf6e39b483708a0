"""Hyperparameter search: the space a job searches, the settings each trial trains with, and a
study rebuilt from recorded trials that proposes an interrupted trial's own settings again."""

import pytest
from pydantic import ValidationError

from app.ml.hyperparameters import DataProfile, resolve
from app.ml.search import (
    LEARNING_RATE_SPREAD,
    SearchSpace,
    new_study,
    objective,
    propose,
    replay,
    search_plan,
    trial_hyperparameters,
)
from app.schemas.jobs import HyperparametersIn

MINILM = 22_713_728
PROFILE = DataProfile(n_rows=2_000, parameters=MINILM)


def _plan(hyperparameters: dict[str, object], seed: int = 7):
    return search_plan(hyperparameters, resolve(hyperparameters, PROFILE), seed,
                       greater_is_better=True)


def test_the_default_space_centres_the_learning_rate_on_the_automatic_choice() -> None:
    auto = resolve({}, PROFILE)
    plan = _plan({"search": {"trials": 4}})
    low, high = plan.space.learning_rate or (0, 0)
    assert low == pytest.approx(auto.learning_rate / LEARNING_RATE_SPREAD)
    assert high == pytest.approx(auto.learning_rate * LEARNING_RATE_SPREAD)
    assert plan.space.n_epochs == (1, max(3, auto.n_epochs))
    assert plan.space.batch_size == (16, 32)


def test_a_fixed_setting_is_shared_by_every_trial_and_not_searched() -> None:
    plan = _plan({"search": {"trials": 3}, "batch_size": 8, "early_stopping_patience": 0})
    assert plan.space.batch_size is None
    study = new_study(plan)
    for _ in range(3):
        trial = propose(study, plan)
        resolved = trial_hyperparameters(plan, trial.params, PROFILE)
        assert resolved.batch_size == 8 and resolved.early_stopping_patience == 0
        assert resolved.learning_rate == trial.params["learning_rate"]
        assert resolved.n_epochs == trial.params["n_epochs"]
        study.tell(trial, 0.5)


def test_ranges_may_come_in_either_order() -> None:
    space = SearchSpace.of({"learning_rate": [3e-4, 1e-5], "n_epochs": [4, 1],
                            "batch_size": [32, 16, 32]})
    assert space.learning_rate == (1e-5, 3e-4)
    assert space.n_epochs == (1, 4)
    assert space.batch_size == (16, 32)


def test_the_same_seed_proposes_the_same_trials() -> None:
    def proposals(seed: int) -> list[dict[str, object]]:
        plan = _plan({"search": {"trials": 4}}, seed)
        study = new_study(plan)
        out = []
        for value in (0.1, 0.4, 0.3, 0.2):
            trial = propose(study, plan)
            out.append(trial.params)
            study.tell(trial, value)
        return out

    assert proposals(3) == proposals(3)
    assert proposals(3) != proposals(4)


def test_a_rebuilt_study_keeps_finished_trials_and_reruns_the_interrupted_one() -> None:
    plan = _plan({"search": {"trials": 4}})
    first = new_study(plan)
    finished = []
    for value in (0.7, 0.9):
        trial = propose(first, plan)
        first.tell(trial, value)
        finished.append((trial.params, value))
    interrupted = propose(first, plan).params

    rebuilt = new_study(plan)
    for params, value in finished:
        replay(rebuilt, plan, params, value)
    assert rebuilt.best_value == 0.9 and len(rebuilt.trials) == 2
    assert propose(rebuilt, plan, interrupted).params == interrupted


def test_the_objective_is_the_tasks_own_metric() -> None:
    assert objective({"accuracy": 0.8, "loss": 0.4}, "accuracy") == 0.8
    with pytest.raises(ValueError, match="entity_f1"):
        objective({"loss": 0.4}, "entity_f1")


def test_a_setting_both_fixed_and_searched_is_refused() -> None:
    with pytest.raises(ValidationError, match="learning_rate is both fixed and in search.space"):
        HyperparametersIn.model_validate({"learning_rate": 1e-4, "search": {
            "trials": 2, "space": {"learning_rate": [1e-5, 1e-4]}}})
    # "auto" is not a fixed value
    HyperparametersIn.model_validate({"n_epochs": "auto", "search": {
        "trials": 2, "space": {"n_epochs": [1, 3]}}})


@pytest.mark.parametrize("search", [
    {"trials": 0}, {"trials": 51}, {"trials": 2, "space": {"learning_rate": [0, 1e-4]}},
    {"trials": 2, "space": {"batch_size": []}}, {"trials": 2, "space": {"depth": [1, 2]}},
    {"trials": 2, "space": {"n_epochs": [1, 2, 3]}},
])
def test_a_malformed_search_is_refused(search: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HyperparametersIn.model_validate({"search": search})
