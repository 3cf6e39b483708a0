"""Resolving hyperparameters: explicit values win, "auto" and absent values get defaults."""

import pytest

from app.ml.hyperparameters import (
    BASE_LEARNING_RATE,
    Hyperparameters,
    auto_batch_size,
    auto_epochs,
    resolve,
)


@pytest.mark.parametrize("n_rows,epochs,batch", [
    (1, 5, 16), (999, 5, 16), (1_000, 3, 32), (49_999, 3, 32), (50_000, 2, 32),
    (2_000_000, 2, 32),
])
def test_auto_values_by_dataset_size(n_rows: int, epochs: int, batch: int) -> None:
    assert auto_epochs(n_rows) == epochs
    assert auto_batch_size(n_rows) == batch
    resolved = resolve({}, n_rows)
    assert (resolved.n_epochs, resolved.batch_size) == (epochs, batch)


def test_empty_request_gets_all_defaults() -> None:
    assert resolve({}, 500) == Hyperparameters(
        n_epochs=5, batch_size=16, learning_rate=BASE_LEARNING_RATE,
        learning_rate_multiplier=1.0, max_length=128, warmup_ratio=0.06, weight_decay=0.01,
        gradient_accumulation_steps=1, eval_steps=None, early_stopping_patience=None)


def test_auto_strings_equal_absent_values() -> None:
    raw = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert resolve(raw, 5_000) == resolve({}, 5_000)
    assert resolve({"n_epochs": None, "batch_size": None}, 5_000) == resolve({}, 5_000)


def test_explicit_values_win() -> None:
    raw = {"n_epochs": 7, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64,
           "warmup_ratio": 0.2, "weight_decay": 0.3, "gradient_accumulation_steps": 2,
           "eval_steps": 10, "early_stopping_patience": 3}
    resolved = resolve(raw, 100_000)
    assert resolved.as_dict() == {**raw, "learning_rate_multiplier": 1.0}


def test_multiplier_scales_base_learning_rate() -> None:
    resolved = resolve({"learning_rate_multiplier": 2.0}, 100)
    assert resolved.learning_rate == pytest.approx(2 * BASE_LEARNING_RATE)
    assert resolved.learning_rate_multiplier == 2.0


def test_explicit_learning_rate_beats_multiplier() -> None:
    resolved = resolve({"learning_rate_multiplier": 2.0, "learning_rate": 3e-4}, 100)
    assert resolved.learning_rate == pytest.approx(3e-4)


def test_zero_is_a_value_not_a_default_for_ratios() -> None:
    resolved = resolve({"warmup_ratio": 0, "weight_decay": 0.0}, 100)
    assert resolved.warmup_ratio == 0.0
    assert resolved.weight_decay == 0.0


def test_as_dict_is_json_ready() -> None:
    data = resolve({"n_epochs": 2}, 10).as_dict()
    assert set(data) == {"n_epochs", "batch_size", "learning_rate", "learning_rate_multiplier",
                         "max_length", "warmup_ratio", "weight_decay",
                         "gradient_accumulation_steps", "eval_steps", "early_stopping_patience"}
    assert isinstance(data["n_epochs"], int) and isinstance(data["learning_rate"], float)
