"""The checkpoint that becomes the version: the latest within one standard error of the best."""

import pytest

from app.ml.selection import choose_checkpoint, standard_error

# Validation macro-F1 of one SST-2 run (2,000 rows, 3 epochs, lr 5e-5, 200 validation rows).
SST2_RUN = {24: 0.3867, 48: 0.7774, 72: 0.8249, 96: 0.864, 120: 0.8482, 144: 0.8485,
            168: 0.849, 189: 0.849}


def _evals(scores: dict[int, float], metric: str = "macro_f1") -> dict[int, dict[str, float]]:
    return {step: {metric: score, "loss": 1 - score} for step, score in scores.items()}


def test_a_lead_the_validation_set_cannot_resolve_does_not_undo_later_training() -> None:
    assert standard_error(0.864, 200) == pytest.approx(0.0242, abs=1e-4)
    assert choose_checkpoint(_evals(SST2_RUN), "macro_f1", True, n_rows=200) == 189


def test_a_large_validation_set_picks_the_best_score() -> None:
    assert choose_checkpoint(_evals(SST2_RUN), "macro_f1", True, n_rows=100_000) == 96


def test_a_clear_decline_keeps_the_earlier_checkpoint() -> None:
    overfit = {10: 0.70, 20: 0.90, 30: 0.80, 40: 0.78}
    assert choose_checkpoint(_evals(overfit), "macro_f1", True, n_rows=500) == 20


def test_a_loss_picks_the_lowest_and_a_tie_goes_to_the_later_checkpoint() -> None:
    losses = {10: {"loss": 2.0}, 20: {"loss": 1.5}, 30: {"loss": 1.5}, 40: {"loss": 1.7}}
    assert choose_checkpoint(losses, "loss", False, n_rows=50) == 30


def test_no_evaluation_of_the_metric_chooses_nothing() -> None:
    assert choose_checkpoint({10: {"loss": 1.0}}, "accuracy", True, n_rows=50) is None
    assert choose_checkpoint({}, "accuracy", True, n_rows=50) is None
