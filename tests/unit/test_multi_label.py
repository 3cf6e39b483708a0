"""The multi-label adapter: rows (JSON lines and CSV), thresholds, metrics, training on a tiny
BERT, and the predict answer."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.errors import DatasetInvalid
from app.ml.hyperparameters import resolve
from app.ml.tasks.catalog import detect_task
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.multi_label import (
    THRESHOLDS_KEY,
    MultiLabelClassification,
    multi_label_metrics,
    tune_thresholds,
)
from app.ml.training import TrainingPlan, TrainingResult, fine_tune
from app.services.files import ACCEPTED, parse_dataset
from tests.unit.test_training import RecordingObserver
from tests.unit.tiny_model import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

TASK = MultiLabelClassification()


def mood_rows(n: int) -> list[dict[str, Any]]:
    """Rows of four words cycling through the four label sets: pos, neg, both, none. A
    label's word, or a neutral one in its place, sits at the same spot in every row."""
    rows = []
    for i in range(n):
        kind = i % 4
        pos = POSITIVE_WORDS[i % 8] if kind in (0, 2) else NEUTRAL_WORDS[(i + 3) % 16]
        neg = NEGATIVE_WORDS[(i // 4) % 8] if kind in (1, 2) else NEUTRAL_WORDS[(i + 7) % 16]
        labels = [name for name, on in (("pos", kind in (0, 2)), ("neg", kind in (1, 2))) if on]
        rows.append({"text": f"{NEUTRAL_WORDS[i % 16]} {pos} {neg} {NEUTRAL_WORDS[i // 16]}",
                     "labels": labels})
    return rows


# --- rows -------------------------------------------------------------------------------


def test_validate_row_keeps_text_and_labels_in_order() -> None:
    row = {"text": "good and bad", "labels": ["pos", "neg"], "id": 3}
    assert TASK.validate_row(row, 1) == {"text": "good and bad", "labels": ["pos", "neg"]}
    assert TASK.validate_row({"text": "so so", "labels": []}, 2)["labels"] == []


@pytest.mark.parametrize("row,field,message", [
    ({"labels": ["a"]}, "text", "is missing"),
    ({"text": "x", "labels": None}, "labels", "is missing"),
    ({"text": "x", "labels": "a|b"}, "labels", "must be a list of strings, not str"),
    ({"text": "x", "labels": ["a", 3]}, "labels", "must hold strings only, not int"),
    ({"text": "x", "labels": ["a", " "]}, "labels", "holds an empty label"),
    ({"text": "x", "labels": ["a", "b", "a"]}, "labels", "names 'a' more than once"),
])
def test_validate_row_errors_name_line_and_field(row: dict[str, Any], field: str,
                                                 message: str) -> None:
    with pytest.raises(DatasetInvalid) as info:
        TASK.validate_row(row, 7)
    assert info.value.message == f"line 7, field '{field}': {message}"


def test_detection_tells_multi_label_rows_from_single_label_ones() -> None:
    assert detect_task({"text": "a", "labels": ["x"]}, 1).name == TASK.name
    assert detect_task({"text": "a", "labels": []}, 1).name == TASK.name
    assert detect_task({"text": "a", "label": "x"}, 1).name == "text-classification"


def test_dataset_needs_two_labels_and_counts_rows_per_label() -> None:
    rows = mood_rows(8)
    assert TASK.labels(rows) == ["neg", "pos"]
    assert TASK.label_counts(rows) == {"neg": 4, "pos": 4}
    TASK.validate_dataset(rows, range(1, 9))
    with pytest.raises(DatasetInvalid, match="field 'labels'.*two distinct labels"):
        TASK.validate_dataset([{"text": "a", "labels": ["x"]}, {"text": "b", "labels": []}],
                              [1, 2])


def test_csv_labels_are_pipe_separated_and_a_blank_cell_is_none(tmp_path: Path) -> None:
    path = tmp_path / "moods.csv"
    body = ['text,labels', '"good, bad",pos|neg', 'fine,', 'so so,  ', 'great, pos | neg ']
    body += [f"row {i},{'pos' if i % 2 else 'neg'}" for i in range(8)]
    path.write_text("\n".join(body) + "\n")
    parsed = parse_dataset(path, "moods.csv", ACCEPTED)
    assert parsed.task == TASK.name
    assert parsed.rows[:4] == [{"text": "good, bad", "labels": ["pos", "neg"]},
                               {"text": "fine", "labels": []},
                               {"text": "so so", "labels": []},
                               {"text": "great", "labels": ["pos", "neg"]}]


def test_csv_empty_label_between_separators_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "moods.csv"
    path.write_text("text,labels\ngood,pos\nbad,neg\nmixed,pos||neg\n")
    with pytest.raises(DatasetInvalid) as info:
        parse_dataset(path, "moods.csv", ACCEPTED)
    assert info.value.message == "line 4, field 'labels': holds an empty label"


# --- thresholds and metrics -------------------------------------------------------------


def test_thresholds_maximise_each_labels_f1_and_fall_back_to_half() -> None:
    probs = np.array([[0.30, 0.9, 0.1], [0.35, 0.2, 0.2], [0.10, 0.8, 0.3], [0.20, 0.1, 0.4]])
    gold = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    thresholds = tune_thresholds(probs, gold)
    # Label 0: anything in (0.20, 0.30] separates it; of those, the value nearest 0.5.
    assert thresholds[0] == pytest.approx(0.30)
    # Label 1: (0.2, 0.8] separates it; 0.5 is among them.
    assert thresholds[1] == pytest.approx(0.5)
    # Label 2 has no positive row: F1 cannot choose.
    assert thresholds[2] == 0.5


def test_a_label_the_model_cannot_tell_apart_keeps_half() -> None:
    # One positive in ten, scored like the rest: only marking every row finds it (F1 2/11).
    probs = np.array([[0.05], [0.06], [0.04], [0.07], [0.05], [0.06], [0.03], [0.05],
                      [0.04], [0.06]])
    gold = np.zeros((10, 1), dtype=bool)
    gold[2] = True
    assert tune_thresholds(probs, gold)[0] == 0.5
    # Scored apart from the rest, the same positive gets its own threshold.
    probs[2] = 0.2
    assert tune_thresholds(probs, gold)[0] == pytest.approx(0.2)


def test_metrics_micro_macro_and_per_label_table() -> None:
    probs = np.array([[0.9, 0.6], [0.1, 0.7], [0.8, 0.2], [0.2, 0.1]])
    gold = np.array([[1, 1], [0, 0], [0, 1], [0, 0]], dtype=bool)
    metrics = multi_label_metrics(probs, gold, np.array([0.5, 0.5]), ["a", "b"])
    # a: tp 2? no: predicted rows 0 and 2, gold row 0 -> tp 1, fp 1, fn 0 -> F1 2/3.
    # b: predicted rows 0 and 1, gold rows 0 and 2 -> tp 1, fp 1, fn 1 -> F1 1/2.
    assert metrics["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    table = metrics["per_label"]
    assert table["labels"] == ["a", "b"] and table["support"] == [1, 2]
    assert table["precision"] == [0.5, 0.5] and table["recall"] == [1.0, 0.5]
    assert table["threshold"] == [0.5, 0.5]


# --- encoding, the head, training ------------------------------------------------------


def test_encode_gives_float_multi_hot_labels(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": "good bad", "labels": ["neg", "pos"]}, {"text": "ok", "labels": []},
            {"text": "sad", "labels": ["neg", "unseen"]}]
    features = TASK.encode(rows, tiny_tokenizer, {"neg": 0, "pos": 1}, 16)
    assert [f["labels"] for f in features] == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]


def test_a_single_label_version_as_base_gets_a_multi_label_head(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    single = TextClassification().load_model(tiny_model_dir, ["a", "b", "c"])
    single.config.problem_type = "single_label_classification"  # as a trained one saves it
    single.save_pretrained(tmp_path)
    model = TASK.load_model(tmp_path, ["neg", "pos"])
    assert model.config.problem_type == "multi_label_classification"
    out = model(input_ids=torch.tensor([[2, 5, 3]]), labels=torch.tensor([[1.0, 0.0]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits, torch.tensor([[1.0, 0.0]]))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_new_head_starts_each_label_at_its_share_of_the_rows(tiny_model_dir: Path) -> None:
    model = TASK.load_model(tiny_model_dir, ["neg", "pos"])
    features = [{"labels": [1.0, 0.0]}] + [{"labels": [0.0, 0.0]}] * 6 + [{"labels": [1.0, 1.0]}]
    TASK.prepare_head(model, features)
    # Smoothed shares: neg (2 + 1) / (8 + 2), pos (1 + 1) / (8 + 2).
    assert torch.sigmoid(model.classifier.bias).tolist() == pytest.approx([0.3, 0.2])
    # A head that is not new (continued training) keeps its biases.
    model.classifier.bias.data = torch.tensor([0.7, -0.4])
    TASK.prepare_head(model, features)
    assert model.classifier.bias.tolist() == pytest.approx([0.7, -0.4])


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[RecordingObserver, TrainingResult]:
    rows = mood_rows(48)
    hyperparameters = resolve({"n_epochs": 3, "batch_size": 8, "learning_rate": 3e-3,
                               "max_length": 16, "eval_steps": 6}, 40)
    plan = TrainingPlan(task=TASK, base_model=str(tiny_model_dir), train_rows=rows[:40],
                        eval_rows=rows[40:], labels=TASK.labels(rows), seed=0,
                        hyperparameters=hyperparameters,
                        output_dir=tmp_path_factory.mktemp("multi-label") / "job")
    observer = RecordingObserver()
    torch.manual_seed(0)
    return observer, fine_tune(plan, observer)


def test_training_reports_flat_figures_and_keeps_the_table(
        trained: tuple[RecordingObserver, TrainingResult]) -> None:
    observer, result = trained
    for _, metrics in observer.evaluations:
        assert {"micro_f1", "macro_f1", "loss"} <= set(metrics)
        assert all(isinstance(value, float | int) for value in metrics.values())
    table = result.best_tables["per_label"]
    assert table["labels"] == ["neg", "pos"] and table["support"] == [4, 4]
    assert result.best_metrics["micro_f1"] > 0


def test_the_version_folder_carries_the_tuned_thresholds(
        trained: tuple[RecordingObserver, TrainingResult]) -> None:
    _, result = trained
    assert result.best_checkpoint is not None
    config = json.loads((result.best_checkpoint / "config.json").read_text())
    table = result.best_tables["per_label"]
    assert config[THRESHOLDS_KEY] == dict(zip(table["labels"], table["threshold"], strict=True))
    assert config["problem_type"] == "multi_label_classification"


def test_the_thresholds_survive_saving_and_loading_again(
        trained: tuple[RecordingObserver, TrainingResult], tmp_path: Path) -> None:
    # What an export or a reload does: from_pretrained, then save_pretrained elsewhere.
    _, result = trained
    assert result.best_checkpoint is not None
    model = TASK.load_model(result.best_checkpoint)
    model.save_pretrained(tmp_path)
    again = TASK.load_model(tmp_path)
    kept = getattr(again.config, THRESHOLDS_KEY)
    assert kept == getattr(model.config, THRESHOLDS_KEY) and set(kept) == {"neg", "pos"}


def test_predict_scores_every_label_and_marks_those_over_threshold(
        trained: tuple[RecordingObserver, TrainingResult],
        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    _, result = trained
    assert result.best_checkpoint is not None
    model = TASK.load_model(result.best_checkpoint)
    # Thresholds of the reloaded version, not the default: moved so both labels differ.
    setattr(model.config, THRESHOLDS_KEY, {"neg": 0.02, "pos": 0.98})
    outputs = TASK.predict(model, tiny_tokenizer, ["good film", "sad and awful", "ok"], {}, 16)
    for output in outputs:
        assert {item["label"] for item in output} == {"neg", "pos"}
        scores = [item["score"] for item in output]
        assert scores == sorted(scores, reverse=True)
        for item in output:
            assert item["threshold"] == {"neg": 0.02, "pos": 0.98}[item["label"]]
            assert item["predicted"] is (item["score"] >= item["threshold"])
    (top,) = TASK.predict(model, tiny_tokenizer, ["good film"], {"top_k": 1}, 16)
    assert len(top) == 1 and top[0]["label"] == outputs[0][0]["label"]
    assert top[0]["score"] == pytest.approx(outputs[0][0]["score"], abs=1e-5)  # less padding
