"""Which checkpoint of a run becomes the version.

The plain "highest validation score" rule has a winner's curse on small validation sets: on
200 SST-2 rows, one evaluation's accuracy has a standard error of about 0.025, so an early
checkpoint that scored a lucky 0.864 beat later ones at 0.849 and became the version, though
on held-out test rows it scored 0.814 against the last checkpoint's 0.826. So the rule is:
the latest checkpoint whose score is within one standard error of the best one. Later
checkpoints have trained on more data at a smaller learning rate; a difference the validation
set cannot resolve should not undo that. With a large validation set the standard error
shrinks and the rule becomes "the best score".
"""

import math
from collections.abc import Mapping


def standard_error(score: float, n_rows: int) -> float:
    """Standard error of a proportion-like score (accuracy, F1) measured on n rows."""
    if n_rows <= 0 or not 0.0 <= score <= 1.0:
        return 0.0
    return math.sqrt(score * (1.0 - score) / n_rows)


def choose_checkpoint(evaluations: Mapping[int, Mapping[str, float]], metric: str,
                      greater_is_better: bool, n_rows: int) -> int | None:
    """The step of the checkpoint to keep, from each evaluated step's metrics; None if no
    evaluation has the metric. Scores that are not bounded in [0, 1] (a loss) pick the best."""
    scored = {step: float(values[metric]) for step, values in evaluations.items()
              if metric in values and not math.isnan(float(values[metric]))}
    if not scored:
        return None
    sign = 1.0 if greater_is_better else -1.0
    best = max(sign * score for score in scored.values()) * sign
    margin = standard_error(best, n_rows) if greater_is_better else 0.0
    return max(step for step, score in scored.items() if sign * (best - score) <= margin)
