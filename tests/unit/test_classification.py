"""The text-classification adapter: row validation, encoding, metrics and prediction."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.errors import DatasetInvalid, InvalidRequest
from app.ml.tasks.catalog import detect_task, get_task
from app.ml.tasks.classification import PREDICT_BATCH, TextClassification, macro_f1

# --- validate_row -----------------------------------------------------------------------


def test_validate_row_returns_canonical_row(task: TextClassification) -> None:
    row = {"text": "good film", "label": "pos", "id": 7, "source": "web"}
    assert task.validate_row(row, 1) == {"text": "good film", "label": "pos"}
    pair = {"text": "a", "text_pair": "b", "label": "entail"}
    assert task.validate_row(pair, 1) == {"text": "a", "label": "entail", "text_pair": "b"}


@pytest.mark.parametrize("row,field,message", [
    ({"label": "pos"}, "text", "is missing"),
    ({"text": None, "label": "pos"}, "text", "is missing"),
    ({"text": "a"}, "label", "is missing"),
    ({"text": 3, "label": "pos"}, "text", "must be a string, not int"),
    ({"text": "a", "label": 1}, "label", "must be a string, not int"),
    ({"text": "a", "label": True}, "label", "must be a string, not bool"),
    ({"text": "a", "label": ["pos"]}, "label", "must be a string, not list"),
    ({"text": "", "label": "pos"}, "text", "is empty"),
    ({"text": " \t\n", "label": "pos"}, "text", "is empty"),
    ({"text": "a", "label": "  "}, "label", "is empty"),
    ({"text": "a", "label": "pos", "text_pair": 5}, "text_pair", "must be a string, not int"),
    ({"text": "a", "label": "pos", "text_pair": "  "}, "text_pair", "is empty"),
])
def test_validate_row_errors_name_line_and_field(task: TextClassification, row: dict,
                                                 field: str, message: str) -> None:
    with pytest.raises(DatasetInvalid) as info:
        task.validate_row(row, 17)
    assert info.value.line == 17
    assert info.value.field == field
    assert info.value.message == f"line 17, field '{field}': {message}"
    assert info.value.param == "file"


# --- validate_dataset -------------------------------------------------------------------


def test_validate_dataset_needs_two_labels(task: TextClassification) -> None:
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(20)]
    with pytest.raises(DatasetInvalid) as info:
        task.validate_dataset(rows, list(range(1, 21)))
    assert info.value.field == "label"
    assert "at least two distinct labels" in info.value.message


def test_validate_dataset_accepts_two_labels(task: TextClassification) -> None:
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    task.validate_dataset(rows, [1, 2])  # no error


def test_validate_dataset_all_or_no_rows_are_pairs(task: TextClassification) -> None:
    rows = [{"text": "a", "text_pair": "b", "label": "x"},
            {"text": "c", "text_pair": "d", "label": "y"},
            {"text": "e", "label": "x"},
            {"text": "f", "text_pair": "g", "label": "y"}]
    # Blank lines in the file: row i is not on line i + 1.
    with pytest.raises(DatasetInvalid) as info:
        task.validate_dataset(rows, [1, 3, 6, 8])
    assert info.value.line == 6
    assert info.value.field == "text_pair"
    assert info.value.message.startswith("line 6, field 'text_pair': is missing")


def test_validate_dataset_all_pairs_ok(task: TextClassification) -> None:
    rows = [{"text": "a", "text_pair": "b", "label": "x"},
            {"text": "c", "text_pair": "d", "label": "y"}]
    task.validate_dataset(rows, [1, 2])


def test_label_counts_and_labels_are_sorted(task: TextClassification) -> None:
    rows = [{"text": "a", "label": "zeta"}, {"text": "b", "label": "alpha"},
            {"text": "c", "label": "zeta"}, {"text": "d", "label": "mid"}]
    assert list(task.label_counts(rows).items()) == [("alpha", 1), ("mid", 1), ("zeta", 2)]
    assert task.labels(rows) == ["alpha", "mid", "zeta"]


# --- task detection ---------------------------------------------------------------------


def test_detect_task_classification() -> None:
    assert detect_task({"text": "a", "label": "b"}, 1).name == "text-classification"


def test_detect_task_multi_label_shape() -> None:
    assert detect_task({"text": "a", "labels": ["x", "y"]}, 4).name == \
        "multi-label-classification"


def test_detect_task_unknown_shape_names_line() -> None:
    with pytest.raises(DatasetInvalid) as info:
        detect_task({"sentence": "a", "sentiment": "pos"}, 9)
    assert info.value.code == "invalid_dataset"
    assert info.value.message.startswith("line 9: ")
    assert "'text' and 'label'" in info.value.message


def test_get_task_unknown() -> None:
    assert isinstance(get_task("text-classification"), TextClassification)
    with pytest.raises(InvalidRequest) as info:
        get_task("summarization")
    assert info.value.code == "unsupported_task"
    assert info.value.param == "task"


# --- encode -----------------------------------------------------------------------------


def test_encode_single_texts(task: TextClassification,
                             tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad", "label": "neg"},
            {"text": "the plot", "label": "unseen"}]
    features = task.encode(rows, tiny_tokenizer, {"neg": 0, "pos": 1}, 64)
    assert [f["labels"] for f in features] == [1, 0, -100]
    vocab = tiny_tokenizer.get_vocab()
    assert features[0]["input_ids"] == [vocab["[CLS]"], vocab["good"], vocab["film"],
                                        vocab["[SEP]"]]
    assert features[1]["attention_mask"] == [1, 1, 1]
    assert all(set(f) >= {"input_ids", "attention_mask", "labels"} for f in features)


def test_encode_pairs_and_truncation(task: TextClassification,
                                     tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": "good film", "text_pair": "bad plot", "label": "x"}]
    (pair,) = task.encode(rows, tiny_tokenizer, {"x": 0}, 64)
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    long_row = [{"text": " ".join(["good"] * 100), "label": "x"}]
    (truncated,) = task.encode(long_row, tiny_tokenizer, {"x": 0}, 16)
    assert len(truncated["input_ids"]) == 16


# --- metrics ----------------------------------------------------------------------------


def test_macro_f1_hand_computed() -> None:
    predicted = np.array([0, 0, 1, 1, 2])
    gold = np.array([0, 1, 1, 1, 2])
    # label 0: tp 1 fp 1 fn 0 -> 2/3; label 1: tp 2 fp 0 fn 1 -> 4/5; label 2: tp 1 -> 1.
    expected = (2 / 3 + 4 / 5 + 1) / 3
    assert macro_f1(predicted, gold, 3) == pytest.approx(expected)
    # A label absent from predictions and gold says nothing and is skipped.
    assert macro_f1(predicted, gold, 5) == pytest.approx(expected)


def test_macro_f1_label_predicted_but_never_gold_counts_as_zero() -> None:
    predicted = np.array([0, 1, 1])
    gold = np.array([0, 0, 0])
    # label 0: tp 1 fn 2 -> 2/4; label 1: fp 2 -> 0.
    assert macro_f1(predicted, gold, 2) == pytest.approx(0.25)


def test_macro_f1_empty() -> None:
    assert macro_f1(np.array([], dtype=int), np.array([], dtype=int), 2) == 0.0


def test_compute_metrics_ignores_unlabelled_rows(task: TextClassification) -> None:
    logits = np.array([[2.0, 1.0], [0.1, 0.9], [0.3, 0.2], [5.0, -5.0], [0.0, 1.0]])
    label_ids = np.array([0, 1, 1, -100, 0])
    # Predicted [0, 1, 0, (ignored), 1] vs gold [0, 1, 1, 0]: accuracy 2/4.
    # label 0: tp 1 fp 1 fn 1 -> 2/4; label 1: tp 1 fp 1 fn 1 -> 2/4.
    metrics = task.compute_metrics(logits, label_ids, ["neg", "pos"])
    # Rows gold, columns predicted: gold neg [neg, pos], gold pos [pos, neg].
    assert metrics == {"accuracy": pytest.approx(0.5), "macro_f1": pytest.approx(0.5),
                       "confusion_matrix": {"labels": ["neg", "pos"],
                                            "counts": [[1, 1], [1, 1]]}}
    perfect = task.compute_metrics(logits[:2], label_ids[:2], ["neg", "pos"])
    assert perfect == {"accuracy": 1.0, "macro_f1": 1.0,
                       "confusion_matrix": {"labels": ["neg", "pos"],
                                            "counts": [[1, 0], [0, 1]]}}


def test_confusion_matrix_rows_are_gold_columns_predicted(task: TextClassification) -> None:
    # Three labels: every gold "b" predicted "c", so the mix-up shows in row b, column c.
    logits = np.eye(3)[[0, 2, 2, 2]]
    metrics = task.compute_metrics(logits, np.array([0, 1, 1, 2]), ["a", "b", "c"])
    assert metrics["confusion_matrix"]["counts"] == [[1, 0, 0], [0, 0, 2], [0, 0, 1]]


def test_compute_metrics_all_unlabelled(task: TextClassification) -> None:
    metrics = task.compute_metrics(np.zeros((2, 2)), np.array([-100, -100]), ["a", "b"])
    assert metrics == {"accuracy": 0.0, "macro_f1": 0.0,
                       "confusion_matrix": {"labels": ["a", "b"], "counts": [[0, 0], [0, 0]]}}


# --- load_model and predict -------------------------------------------------------------


@pytest.fixture(scope="module")
def three_label_model(tiny_model_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = TextClassification().load_model(tiny_model_dir, ["neg", "neutral", "pos"])
    model.eval()
    return model


def by_label(candidates: list[dict[str, Any]]) -> dict[str, float]:
    return {candidate["label"]: candidate["score"] for candidate in candidates}


def test_load_model_sets_new_head(three_label_model: torch.nn.Module) -> None:
    config = three_label_model.config
    assert config.num_labels == 3
    assert config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert config.label2id == {"neg": 0, "neutral": 1, "pos": 2}


def test_predict_shape_order_and_scores(task: TextClassification,
                                        three_label_model: torch.nn.Module,
                                        tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    inputs = ["good", "the movie was really very bad and boring", "fine film", "sad"]
    outputs = task.predict(three_label_model, tiny_tokenizer, inputs, {}, 64)
    assert len(outputs) == len(inputs)
    for per_input in outputs:
        assert [set(item) for item in per_input] == [{"label", "score"}] * 3
        assert {item["label"] for item in per_input} == {"neg", "neutral", "pos"}
        scores = [item["score"] for item in per_input]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    # Batching sorts by length internally; each answer must still belong to its own input.
    # Padding changes the arithmetic slightly, so labels are matched by name, not by rank:
    # two labels a hair apart may swap places.
    for text, batched in zip(inputs, outputs, strict=True):
        (alone,) = task.predict(three_label_model, tiny_tokenizer, [text], {}, 64)
        assert by_label(batched) == pytest.approx(by_label(alone), abs=1e-5)


def test_predict_top_k(task: TextClassification, three_label_model: torch.nn.Module,
                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    full = task.predict(three_label_model, tiny_tokenizer, ["good film"], {}, 64)[0]
    top1 = task.predict(three_label_model, tiny_tokenizer, ["good film"], {"top_k": 1}, 64)[0]
    assert len(top1) == 1
    assert top1[0]["label"] == full[0]["label"]
    assert top1[0]["score"] == pytest.approx(full[0]["score"], abs=1e-6)
    top2 = task.predict(three_label_model, tiny_tokenizer, ["good film"], {"top_k": 2}, 64)[0]
    assert [i["label"] for i in top2] == [i["label"] for i in full[:2]]
    # top_k above the number of labels returns every label.
    many = task.predict(three_label_model, tiny_tokenizer, ["good film"], {"top_k": 50}, 64)[0]
    assert len(many) == 3


def test_predict_more_inputs_than_one_batch(task: TextClassification,
                                            three_label_model: torch.nn.Module,
                                            tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    words = ["good", "bad", "film", "plot", "sad", "fun"]
    inputs = [" ".join(words[: 1 + i % len(words)]) + (" very" * (i % 7))
              for i in range(PREDICT_BATCH * 2 + 5)]
    outputs = task.predict(three_label_model, tiny_tokenizer, inputs, {"top_k": 1}, 64)
    assert len(outputs) == len(inputs)
    for index in (0, PREDICT_BATCH, len(inputs) - 1):
        (alone,) = task.predict(three_label_model, tiny_tokenizer, [inputs[index]], {}, 64)
        [batched] = outputs[index]
        # The batch's top label is the one this input gets alone, or ties with it.
        assert by_label(alone)[batched["label"]] == pytest.approx(batched["score"], abs=1e-5)
        assert batched["score"] == pytest.approx(alone[0]["score"], abs=1e-5)


def test_predict_truncates_long_inputs(task: TextClassification,
                                       three_label_model: torch.nn.Module,
                                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    # Longer than the model's 64 positions: must be truncated to max_length, not crash.
    text = " ".join(["good"] * 500)
    (out,) = task.predict(three_label_model, tiny_tokenizer, [text], {}, 32)
    assert len(out) == 3


def test_a_blank_text_pair_is_no_pair(task: TextClassification) -> None:
    # A CSV with a text_pair column leaves the cell blank for single sentences.
    assert task.validate_row({"text": "a", "label": "pos", "text_pair": ""}, 3) == \
        {"text": "a", "label": "pos"}
