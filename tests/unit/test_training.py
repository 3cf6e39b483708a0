"""The training loop on a tiny BERT: progress, checkpoints, best-model choice, cancel, pause."""

import dataclasses
import inspect
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, Trainer

from app.ml.batching import LengthGroupedSampler
from app.ml.hyperparameters import resolve
from app.ml.selection import standard_error
from app.ml.tasks.classification import TextClassification
from app.ml.training import (
    RESUME_ONLY_FILES,
    TrainingPlan,
    TrainingResult,
    _build_run,
    encode,
    fine_tune,
    latest_checkpoint,
    stratified_split,
    strip_resume_state,
)
from tests.unit.tiny_model import sentiment_rows

# --- stratified_split -------------------------------------------------------------------


def labelled(counts: dict[str, int]) -> list[dict[str, Any]]:
    return [{"text": f"{label} {i}", "label": label}
            for label, n in counts.items() for i in range(n)]


def test_stratified_split_keeps_every_label_in_both_parts() -> None:
    rows = labelled({"a": 50, "b": 20, "c": 3, "d": 2})
    train, held = stratified_split(rows, 0.1, seed=1)
    assert Counter(r["label"] for r in held) == {"a": 5, "b": 2, "c": 1, "d": 1}
    assert Counter(r["label"] for r in train) == {"a": 45, "b": 18, "c": 2, "d": 1}
    # A partition: nothing lost, nothing duplicated.
    assert sorted(r["text"] for r in train + held) == sorted(r["text"] for r in rows)


def test_stratified_split_single_row_label_stays_in_training() -> None:
    rows = labelled({"a": 10, "lonely": 1})
    train, held = stratified_split(rows, 0.5, seed=0)
    assert [r["label"] for r in train].count("lonely") == 1
    assert all(r["label"] != "lonely" for r in held)


def test_stratified_split_never_holds_out_a_whole_label() -> None:
    rows = labelled({"a": 4, "b": 4})
    train, held = stratified_split(rows, 0.99, seed=0)
    assert {r["label"] for r in train} == {"a", "b"}
    assert {r["label"] for r in held} == {"a", "b"}


def test_stratified_split_is_seeded() -> None:
    rows = labelled({"a": 40, "b": 40})
    first = stratified_split(rows, 0.25, seed=7)
    assert stratified_split(rows, 0.25, seed=7) == first
    assert stratified_split(rows, 0.25, seed=8) != first
    # The input is not reordered in place.
    assert rows == labelled({"a": 40, "b": 40})


def test_stratified_split_custom_key() -> None:
    rows = [{"text": str(i), "topic": "x" if i % 2 else "y"} for i in range(20)]
    train, held = stratified_split(rows, 0.2, seed=0, key="topic")
    assert Counter(r["topic"] for r in held) == {"x": 2, "y": 2}
    assert len(train) == 16


# --- fine_tune --------------------------------------------------------------------------


@dataclass
class RecordingObserver:
    """Records what the loop reports; asks it to stop after `stop_after` steps."""

    stop_reason: str | None = None
    stop_after: int = 0
    progress: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[tuple[int, float, dict[str, float], Path]] = field(default_factory=list)
    stop_checks: int = 0

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(progress)

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.evaluations.append((step, metrics))

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        self.checkpoints.append((step, epoch, metrics, directory))

    def stop_requested(self) -> str | None:
        self.stop_checks += 1
        if self.stop_reason and self.stop_checks >= self.stop_after:
            return self.stop_reason
        return None


TRAIN_ROWS = sentiment_rows(40)
# Labels flipped: as the model learns the training rows its evaluation F1 tends to drop
# while the loss need not, so the best checkpoint is not simply the last or lowest-loss one.
_FLIP = {"positive": "negative", "negative": "positive"}
EVAL_ROWS = [{"text": r["text"], "label": _FLIP[r["label"]]} for r in sentiment_rows(60)[40:]]


def make_plan(model_dir: Path, output_dir: Path, *, batch_size: int = 8, n_epochs: int = 2,
              learning_rate: float = 3e-3, seed: int = 0, **more: Any) -> TrainingPlan:
    task = TextClassification()
    hyperparameters = resolve({"n_epochs": n_epochs, "batch_size": batch_size,
                               "learning_rate": learning_rate, "max_length": 32, **more},
                              len(TRAIN_ROWS))
    return TrainingPlan(task=task, base_model=str(model_dir), train_rows=TRAIN_ROWS,
                        eval_rows=EVAL_ROWS, labels=task.labels(TRAIN_ROWS),
                        hyperparameters=hyperparameters, seed=seed, output_dir=output_dir)


@dataclass
class Run:
    plan: TrainingPlan
    observer: RecordingObserver
    result: TrainingResult


@pytest.fixture(scope="module")
def full_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    plan = make_plan(tiny_model_dir, tmp_path_factory.mktemp("run") / "job")
    observer = RecordingObserver()
    # Whatever earlier tests left in torch's RNG must not matter (see the seed test below).
    torch.manual_seed(1234)
    return Run(plan, observer, fine_tune(plan, observer))


STEPS_PER_EPOCH = math.ceil(40 / 8)


def test_progress_events(full_run: Run) -> None:
    progress = full_run.observer.progress
    total = STEPS_PER_EPOCH * 2
    assert [p["step"] for p in progress] == list(range(1, total + 1))  # logging_steps is 1 here
    for event in progress:
        assert set(event) >= {"step", "total_steps", "epoch", "train_loss", "learning_rate",
                              "samples_per_s", "eta_s"}
        assert event["total_steps"] == total
        assert math.isfinite(event["train_loss"]) and event["train_loss"] > 0
        assert event["learning_rate"] is not None and 0 <= event["learning_rate"] <= 3e-3
        assert event["samples_per_s"] > 0
    assert progress[-1]["epoch"] == pytest.approx(2.0)
    assert progress[STEPS_PER_EPOCH - 1]["epoch"] == pytest.approx(1.0)
    assert progress[-1]["eta_s"] == 0


def test_evaluation_once_per_epoch(full_run: Run) -> None:
    steps = [step for step, _ in full_run.observer.evaluations]
    assert steps == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for _, metrics in full_run.observer.evaluations:
        assert {"loss", "accuracy", "macro_f1"} <= set(metrics)
        assert not any(key.startswith("eval_") or key.endswith("_per_second") for key in metrics)
        assert 0.0 <= metrics["macro_f1"] <= 1.0


def test_checkpoint_once_per_epoch_with_safetensors_and_tokenizer(full_run: Run) -> None:
    checkpoints = full_run.observer.checkpoints
    assert [(step, epoch) for step, epoch, _, _ in checkpoints] == [
        (STEPS_PER_EPOCH, pytest.approx(1.0)), (2 * STEPS_PER_EPOCH, pytest.approx(2.0))]
    evaluations = dict(full_run.observer.evaluations)
    for step, _, metrics, directory in checkpoints:
        assert directory == full_run.plan.output_dir / f"checkpoint-{step}"
        assert metrics == evaluations[step]
        files = {p.name for p in directory.iterdir()}
        assert "model.safetensors" in files
        assert "config.json" in files
        assert "tokenizer_config.json" in files
        assert not any(name.endswith(".bin") and name != "training_args.bin" for name in files)
        config = json.loads((directory / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_the_version_is_the_latest_checkpoint_within_a_standard_error_of_the_best(
        full_run: Run) -> None:
    # The rule itself is tested in test_selection.py; here, that training applies it.
    result = full_run.result
    evaluations = dict(full_run.observer.evaluations)
    best = max(m["macro_f1"] for m in evaluations.values())
    margin = standard_error(best, len(full_run.plan.eval_rows))
    chosen = max(step for step, m in evaluations.items() if best - m["macro_f1"] <= margin)
    assert result.stopped is None
    assert result.best_checkpoint == full_run.plan.output_dir / f"checkpoint-{chosen}"
    assert result.best_step == chosen
    assert result.best_metrics == evaluations[chosen]


def test_the_version_keeps_the_confusion_matrix_and_events_stay_flat(full_run: Run) -> None:
    # Jobs, checkpoints and events read evaluations as flat numbers; the matrix goes to the
    # version alone, counting each evaluation row once.
    for _, metrics in full_run.observer.evaluations:
        assert all(isinstance(value, float | int) for value in metrics.values())
    matrix = full_run.result.best_tables["confusion_matrix"]
    assert matrix["labels"] == full_run.plan.labels
    assert sum(map(sum, matrix["counts"])) == len(EVAL_ROWS)
    correct = sum(matrix["counts"][i][i] for i in range(len(matrix["labels"])))
    assert correct / len(EVAL_ROWS) == pytest.approx(full_run.result.best_metrics["accuracy"])


def test_same_seed_gives_same_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The job's seed alone fixes the run, including the new head's initial weights."""
    losses = []
    for attempt, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # whatever earlier work left the RNG in
        observer = RecordingObserver()
        fine_tune(make_plan(tiny_model_dir, tmp_path / str(attempt), n_epochs=1), observer)
        losses.append([p["train_loss"] for p in observer.progress])
    assert losses[0] == pytest.approx(losses[1])


def test_gradient_clipping_is_the_jobs_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    """max_grad_norm reaches the loop: clipping hard changes the run, and 0 clips nothing."""
    losses = {}
    for norm in (0.0, 1e-3):
        observer = RecordingObserver()
        fine_tune(make_plan(tiny_model_dir, tmp_path / str(norm), n_epochs=1,
                            max_grad_norm=norm), observer)
        losses[norm] = [p["train_loss"] for p in observer.progress]
    assert losses[0.0][0] == pytest.approx(losses[1e-3][0])  # the same first batch
    assert losses[0.0] != pytest.approx(losses[1e-3])


def test_result_statistics(full_run: Run, tiny_tokenizer: Any) -> None:
    result = full_run.result
    tokens = sum(len(tiny_tokenizer(r["text"], truncation=True, max_length=32)["input_ids"])
                 for r in TRAIN_ROWS)
    assert result.trained_tokens == tokens * 2
    assert result.train_runtime_s > 0
    assert result.train_samples_per_s > 0


def test_best_checkpoint_loads_and_predicts(full_run: Run, tiny_tokenizer: Any) -> None:
    assert full_run.result.best_checkpoint is not None
    task = TextClassification()
    model = task.load_model(full_run.result.best_checkpoint)
    (output,) = task.predict(model, tiny_tokenizer, ["good film"], {}, 32)
    assert {item["label"] for item in output} == {"negative", "positive"}


def test_latest_checkpoint(full_run: Run, tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(full_run.plan.output_dir) == str(
        full_run.plan.output_dir / f"checkpoint-{2 * STEPS_PER_EPOCH}")


def test_strip_resume_state_keeps_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(tiny_model_dir, tmp_path / "job", n_epochs=1)
    fine_tune(plan, RecordingObserver())
    (checkpoint,) = plan.output_dir.glob("checkpoint-*")
    before = {p.name for p in checkpoint.iterdir()}
    assert {"optimizer.pt", "scheduler.pt"} <= before
    strip_resume_state(plan.output_dir)
    after = {p.name for p in checkpoint.iterdir()}
    assert not after & set(RESUME_ONLY_FILES)
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= after
    assert after == before - set(RESUME_ONLY_FILES)
    strip_resume_state(plan.output_dir)  # idempotent


def test_cancel_stops_early(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(tiny_model_dir, tmp_path / "job", batch_size=4)  # 10 steps per epoch
    observer = RecordingObserver(stop_reason="cancel", stop_after=3)
    result = fine_tune(plan, observer)
    assert result.stopped == "cancel"
    assert result.best_checkpoint is None
    assert result.best_metrics == {}
    assert max(p["step"] for p in observer.progress) == 3


def test_cancel_writes_no_checkpoint_and_skips_evaluation(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    plan = make_plan(tiny_model_dir, tmp_path / "job", batch_size=4)
    observer = RecordingObserver(stop_reason="cancel", stop_after=3)
    fine_tune(plan, observer)
    assert observer.evaluations == []
    assert observer.checkpoints == []
    assert not list(plan.output_dir.glob("checkpoint-*"))


def test_pause_saves_once_without_evaluating(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(tiny_model_dir, tmp_path / "job", batch_size=4)
    observer = RecordingObserver(stop_reason="pause", stop_after=3)
    fine_tune(plan, observer)
    assert [step for step, *_ in observer.checkpoints] == [3]
    assert observer.evaluations == []


def test_pause_writes_checkpoint_then_resume_continues(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    plan = make_plan(tiny_model_dir, tmp_path / "job", batch_size=4)
    paused = RecordingObserver(stop_reason="pause", stop_after=3)
    result = fine_tune(plan, paused)
    assert result.stopped == "pause"
    assert max(p["step"] for p in paused.progress) == 3
    assert {step for step, *_ in paused.checkpoints} == {3}
    checkpoint = plan.output_dir / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / "optimizer.pt").is_file()
    assert latest_checkpoint(plan.output_dir) == str(checkpoint)

    # A second run on the same folder resumes after step 3 rather than starting over.
    resumed = RecordingObserver()
    final = fine_tune(plan, resumed)
    assert final.stopped is None
    steps = [p["step"] for p in resumed.progress]
    assert steps[0] == 4
    assert steps[-1] == 20
    assert [step for step, *_ in resumed.checkpoints] == [10, 20]
    assert final.best_checkpoint is not None and final.best_checkpoint.is_dir()


def test_early_stopping_ends_a_run_that_stops_improving(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    # A learning rate too small to change any prediction: every evaluation ties the first.
    plan = make_plan(tiny_model_dir, tmp_path / "job", n_epochs=4, learning_rate=1e-12)
    plan = dataclasses.replace(plan, hyperparameters=dataclasses.replace(
        plan.hyperparameters, eval_steps=1, early_stopping_patience=2))
    result = fine_tune(plan, RecordingObserver())
    assert result.stopped is None and result.stopped_early
    # Evaluated at steps 1, 2 and 3: two evaluations without improvement after the first.
    assert (result.final_step, result.total_steps) == (3, 4 * 5)
    # Three equal scores: the latest of them becomes the version (app/ml/selection.py).
    assert result.best_step == 3 and result.best_checkpoint is not None
    assert result.best_checkpoint.name == "checkpoint-3"


def test_a_run_that_keeps_improving_is_not_stopped_early(full_run: Run) -> None:
    assert not full_run.result.stopped_early
    assert full_run.result.final_step == full_run.result.total_steps


def test_evaluation_and_checkpoints_are_timed_apart_from_training(full_run: Run) -> None:
    result = full_run.result
    assert 0 < result.evaluate_and_save_s < result.train_runtime_s


def test_the_time_set_apart_holds_every_evaluation(tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    """Many evaluation rows, so evaluations outweigh checkpoint writes: each evaluation's own
    runtime, as Trainer logged it, must be inside the time not counted as training."""
    plan = dataclasses.replace(make_plan(tiny_model_dir, tmp_path / "job"),
                               eval_rows=sentiment_rows(3000))
    result = fine_tune(plan, RecordingObserver())
    state = json.loads((Path(latest_checkpoint(plan.output_dir) or "")
                        / "trainer_state.json").read_text())
    evaluations = [entry["eval_runtime"] for entry in state["log_history"]
                   if "eval_runtime" in entry]
    assert len(evaluations) >= 2, state["log_history"]
    assert result.evaluate_and_save_s >= sum(evaluations), (result, evaluations)


def test_trainer_draws_training_batches_from_our_sampler(tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    """transformers 5 has no public way to give Trainer a sampler, so _ServiceTrainer
    overrides its private `_get_train_sampler`. If an update renames the hook or stops
    calling it, resumed runs would silently lose their exact data order: this fails first."""
    assert "train_dataset" in inspect.signature(Trainer._get_train_sampler).parameters
    plan = make_plan(tiny_model_dir, tmp_path / "job")
    tokenizer = AutoTokenizer.from_pretrained(plan.base_model)
    run = _build_run(plan, RecordingObserver(), tokenizer, encode(plan, tokenizer))
    loader = run.trainer.get_train_dataloader()
    samplers = {type(getattr(loader, "sampler", None)),
                type(getattr(getattr(loader, "batch_sampler", None), "sampler", None))}
    assert LengthGroupedSampler in samplers, samplers
