"""Resolving hyperparameters: explicit values win; "auto" and absent values are chosen from the
data and the base model, each with the reason the job records."""

import pytest

from app.ml.hyperparameters import (
    MAX_EPOCHS,
    MIN_EPOCHS,
    PATIENCE,
    DataProfile,
    Hyperparameters,
    resolve,
)

MINILM = 22_713_728
BERT_BASE = 109_482_240


def _auto(n_rows: int, parameters: int | None = MINILM, **raw: object) -> Hyperparameters:
    return resolve(dict(raw), DataProfile(n_rows=n_rows, parameters=parameters))


@pytest.mark.parametrize("n_rows,batch,epochs", [
    (100, 16, MAX_EPOCHS), (800, 16, MAX_EPOCHS), (2_000, 16, 5), (4_999, 16, 2),
    (5_000, 32, 4), (50_000, 32, MIN_EPOCHS), (2_000_000, 32, MIN_EPOCHS),
])
def test_batch_and_epochs_aim_at_a_few_hundred_steps(n_rows: int, batch: int,
                                                     epochs: int) -> None:
    resolved = _auto(n_rows)
    assert (resolved.batch_size, resolved.n_epochs) == (batch, epochs)


@pytest.mark.parametrize("parameters,rate", [
    (MINILM, 1e-4), (BERT_BASE, 5e-5), (340_000_000, 2e-5), (None, 5e-5),
])
def test_learning_rate_follows_the_base_model_size(parameters: int | None, rate: float) -> None:
    assert _auto(5_000, parameters).learning_rate == pytest.approx(rate)


def test_a_run_of_few_steps_gets_twice_the_learning_rate() -> None:
    # 800 rows in one epoch at batch 16: 50 updates.
    resolved = _auto(800, n_epochs=1)
    assert resolved.learning_rate == pytest.approx(2e-4)
    assert any("only 50 optimizer steps" in reason for reason in resolved.reasons)


def test_every_automatic_choice_says_why() -> None:
    resolved = _auto(800, n_epochs=1)
    assert "learning_rate 2e-04 because a 23M-parameter model" in " ".join(resolved.reasons)
    assert [reason.split()[0] for reason in resolved.reasons] == [
        "batch_size", "learning_rate", "eval_steps", "early_stopping_patience"]


def test_evaluation_cadence_is_in_steps_and_suits_small_runs() -> None:
    resolved = _auto(2_000)  # 125 steps an epoch, 5 epochs
    assert resolved.eval_steps == 79
    assert resolved.early_stopping_patience == PATIENCE
    tiny = _auto(40)  # 3 steps an epoch: evaluated every epoch, not more often
    assert tiny.eval_steps == 3


def test_zero_patience_turns_early_stopping_off() -> None:
    resolved = _auto(2_000, early_stopping_patience=0)
    assert resolved.early_stopping_patience == 0
    assert not any("early_stopping" in reason for reason in resolved.reasons)


def test_auto_strings_equal_absent_values() -> None:
    raw = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert _auto(5_000, **raw) == _auto(5_000)
    assert _auto(5_000, n_epochs=None, batch_size=None) == _auto(5_000)


def test_explicit_values_win_and_record_no_reasons() -> None:
    raw = {"n_epochs": 7, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64,
           "warmup_ratio": 0.2, "weight_decay": 0.3, "max_grad_norm": 0.0,
           "gradient_accumulation_steps": 2,
           "eval_steps": 10, "early_stopping_patience": 3}
    resolved = _auto(100_000, **raw)
    assert resolved.as_dict() == {**raw, "learning_rate_multiplier": 1.0}
    assert resolved.reasons == ()


def test_multiplier_scales_the_automatic_learning_rate() -> None:
    resolved = _auto(5_000, learning_rate_multiplier=2.0)
    assert resolved.learning_rate == pytest.approx(2e-4)
    assert resolved.learning_rate_multiplier == 2.0


def test_explicit_learning_rate_beats_multiplier() -> None:
    resolved = _auto(100, learning_rate_multiplier=2.0, learning_rate=3e-4)
    assert resolved.learning_rate == pytest.approx(3e-4)


def test_zero_is_a_value_not_a_default_for_ratios() -> None:
    resolved = _auto(100, warmup_ratio=0, weight_decay=0.0)
    assert resolved.warmup_ratio == 0.0
    assert resolved.weight_decay == 0.0


def test_a_row_count_alone_still_resolves() -> None:
    assert resolve({}, 2_000) == resolve({}, DataProfile(n_rows=2_000))


def test_as_dict_is_json_ready() -> None:
    data = _auto(10, n_epochs=2).as_dict()
    assert set(data) == {"n_epochs", "batch_size", "learning_rate", "learning_rate_multiplier",
                         "max_length", "warmup_ratio", "weight_decay", "max_grad_norm",
                         "gradient_accumulation_steps", "eval_steps", "early_stopping_patience"}
    assert isinstance(data["n_epochs"], int) and isinstance(data["learning_rate"], float)


def _lengths(long_row_tokens: int | None, max_positions: int | None = 512,
             **raw: object) -> Hyperparameters:
    return resolve(dict(raw), DataProfile(n_rows=2_000, parameters=MINILM,
                                          long_row_tokens=long_row_tokens,
                                          max_positions=max_positions))


def test_rows_that_fit_keep_the_default_token_limit_and_say_so() -> None:
    resolved = _lengths(97)
    assert resolved.max_length == 128
    assert "max_length 128 because 99% of the training rows are at most 97 tokens" in \
        resolved.reasons


@pytest.mark.parametrize("long_row_tokens,max_positions,limit", [
    (129, 512, 192), (250, 512, 256), (300, 512, 320), (900, 512, 512), (300, 256, 256),
])
def test_long_rows_raise_the_token_limit_up_to_what_the_model_takes(
        long_row_tokens: int, max_positions: int, limit: int) -> None:
    resolved = _lengths(long_row_tokens, max_positions)
    assert resolved.max_length == limit
    reason = next(r for r in resolved.reasons if r.startswith("max_length"))
    assert f"up to {long_row_tokens} tokens" in reason
    assert ("the most the base model takes" in reason) == (limit < long_row_tokens)


def test_an_explicit_token_limit_wins_over_long_rows() -> None:
    resolved = _lengths(400, max_length=64)
    assert resolved.max_length == 64
    assert not any(r.startswith("max_length") for r in resolved.reasons)


def test_unmeasured_rows_get_the_default_token_limit_silently() -> None:
    resolved = _lengths(None)
    assert resolved.max_length == 128
    assert not any(r.startswith("max_length") for r in resolved.reasons)
