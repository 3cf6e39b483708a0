"""A job interrupted at step k and resumed ends where an uninterrupted run ends.

The same check transformers and accelerate make of their own resume: on CPU, same seed,
compare final parameters exactly (to float tolerance).
"""

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.ml.checkpoints import MANIFEST, latest_complete_checkpoint
from app.ml.hyperparameters import resolve
from app.ml.tasks.catalog import get_task
from app.ml.training import TrainingPlan, fine_tune
from tests.unit.tiny_model import build_tiny_bert, sentiment_rows

STEPS_PER_EPOCH = 5  # 40 rows, batch size 8
TOTAL_STEPS = 2 * STEPS_PER_EPOCH


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.steps: list[int] = []
        self.checkpoints: list[int] = []

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.steps.append(progress["step"])

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        self.checkpoints.append(step)

    def stop_requested(self) -> str | None:
        if self.stop_at is not None and self.steps and self.steps[-1] >= self.stop_at:
            return "requeue"
        return None


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def plan(base_model: Path, output_dir: Path) -> TrainingPlan:
    rows = sentiment_rows(40)
    return TrainingPlan(
        task=get_task("text-classification"), base_model=str(base_model),
        train_rows=rows, eval_rows=sentiment_rows(12), labels=["negative", "positive"],
        hyperparameters=resolve({"n_epochs": 2, "batch_size": 8, "eval_steps": 2,
                                 "learning_rate": 1e-3, "early_stopping_patience": 0},
                                len(rows)),
        seed=7, output_dir=output_dir)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / f"checkpoint-{TOTAL_STEPS}" / "model.safetensors")


@pytest.mark.parametrize("stop_at", [3, 5, 7])
def test_interrupted_and_resumed_equals_uninterrupted(base_model: Path, tmp_path: Path,
                                                      stop_at: int) -> None:
    straight = tmp_path / "straight"
    fine_tune(plan(base_model, straight), Recorder())

    interrupted = tmp_path / "interrupted"
    first = Recorder(stop_at=stop_at)
    result = fine_tune(plan(base_model, interrupted), first)
    assert result.stopped == "requeue"
    # Asked after step k was reported, the stop lands at the end of the next step, with a
    # checkpoint there.
    landed = stop_at + 1
    assert first.checkpoints[-1] == landed and max(first.steps) == landed
    second = Recorder()
    resumed = fine_tune(plan(base_model, interrupted), second)
    assert resumed.stopped is None
    assert min(second.steps) == landed + 1  # nothing redone, nothing skipped

    expected, actual = final_weights(straight), final_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_a_torn_checkpoint_is_skipped(base_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    fine_tune(plan(base_model, output), Recorder(stop_at=3))
    whole = latest_complete_checkpoint(output)
    assert whole is not None and whole.name == "checkpoint-4"
    # A later checkpoint killed mid-write: weights half there, no manifest.
    torn = output / "checkpoint-6"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)
    assert latest_complete_checkpoint(output) == whole
    # A checkpoint whose file changed after its manifest was written is not whole either.
    corrupt = output / "checkpoint-4" / "model.safetensors"
    corrupt.write_bytes(corrupt.read_bytes()[:-10])
    assert (output / "checkpoint-4" / MANIFEST).exists()
    assert latest_complete_checkpoint(output) is not None  # checkpoint-2 is still whole
    assert latest_complete_checkpoint(output).name == "checkpoint-2"
    second = Recorder()
    assert fine_tune(plan(base_model, output), second).stopped is None
    assert min(second.steps) == 3  # resumed from step 2, the last whole checkpoint
