"""Text classification: sentiment, topic and sentence pairs."""

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.errors import DatasetInvalid
from app.ml.tasks.base import (
    Features,
    Row,
    TaskAdapter,
    length_sorted_batches,
    load_pretrained,
)

PREDICT_BATCH = 32


def _string_field(row: Row, field: str, line: int, *, required: bool) -> str | None:
    value = row.get(field)
    if not required and value == "":
        value = None  # a blank optional field (a CSV cell under `text_pair`) is an absent one
    if value is None:
        if required:
            raise DatasetInvalid("is missing", line=line, field=field)
        return None
    if not isinstance(value, str):
        raise DatasetInvalid(f"must be a string, not {type(value).__name__}", line=line,
                             field=field)
    if not value.strip():
        raise DatasetInvalid("is empty", line=line, field=field)
    return value


def macro_f1(predicted: np.ndarray, gold: np.ndarray, n_labels: int) -> float:
    scores = []
    for label in range(n_labels):
        tp = int(np.sum((predicted == label) & (gold == label)))
        fp = int(np.sum((predicted == label) & (gold != label)))
        fn = int(np.sum((predicted != label) & (gold == label)))
        if tp + fp + fn == 0:
            continue  # label absent from both: it says nothing about the model
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def confusion_matrix(predicted: np.ndarray, gold: np.ndarray,
                     labels: list[str]) -> dict[str, Any]:
    """How often each gold label (row) was predicted as each label (column), both in the
    model's label order: which classes the model mixes up, which accuracy cannot say."""
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(counts, (gold, predicted), 1)
    return {"labels": list(labels), "counts": counts.tolist()}


class TextClassification(TaskAdapter):
    name = "text-classification"
    best_metric = "macro_f1"
    stratify_by = "label"

    def matches(self, row: Row) -> bool:
        return "label" in row and "text" in row

    def validate_row(self, row: Row, line: int) -> Row:
        clean: Row = {
            "text": _string_field(row, "text", line, required=True),
            "label": _string_field(row, "label", line, required=True),
        }
        pair = _string_field(row, "text_pair", line, required=False)
        if pair is not None:
            clean["text_pair"] = pair
        return clean

    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        if len({row["label"] for row in rows}) < 2:
            raise DatasetInvalid("needs at least two distinct labels", field="label")
        paired = sum("text_pair" in row for row in rows)
        if 0 < paired < len(rows):
            first = next(i for i, row in enumerate(rows) if "text_pair" not in row)
            raise DatasetInvalid("is missing; some rows are sentence pairs, so all must be",
                                 field="text_pair", line=lines[first])

    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]:
        return dict(sorted(Counter(row["label"] for row in rows).items()))

    def labels(self, rows: Sequence[Row]) -> list[str]:
        return sorted({row["label"] for row in rows})

    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]:
        texts = [row["text"] for row in rows]
        pairs = [row["text_pair"] for row in rows] if rows and "text_pair" in rows[0] else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        features = []
        for i, row in enumerate(rows):
            item = {key: encoded[key][i] for key in encoded}
            # Rows whose label the model does not know (validation only) get no loss.
            item["labels"] = label2id.get(row["label"], -100)
            features.append(item)
        return features

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorWithPadding(tokenizer)

    def row_inputs(self, row: Row) -> tuple[str, str | None] | None:
        return row["text"], row.get("text_pair")

    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        return load_pretrained(AutoModelForSequenceClassification, path, labels)

    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str],
                        rows: Sequence[int] | None = None) -> dict[str, Any]:
        # One feature per row: nothing to regroup.
        logits = np.asarray(logits)
        gold = np.asarray(label_ids)
        known = gold != -100
        predicted = logits.argmax(axis=-1)[known]
        gold = gold[known]
        accuracy = float(np.mean(predicted == gold)) if gold.size else 0.0
        return {"accuracy": accuracy, "macro_f1": macro_f1(predicted, gold, len(labels)),
                "confusion_matrix": confusion_matrix(predicted, gold, labels)}

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        id2label: dict[int, str] = {int(k): v for k, v in (model.config.id2label or {}).items()}
        top_k = parameters.get("top_k") or len(id2label)
        results: list[Any] = [None] * len(inputs)
        for chunk, batch in length_sorted_batches(tokenizer, inputs, max_length, PREDICT_BATCH):
            batch = batch.to(model.device)
            probs = torch.softmax(model(**batch).logits.float(), dim=-1).cpu()
            for row, i in zip(probs, chunk, strict=True):
                scores, idx = row.topk(min(top_k, row.numel()))
                results[i] = [{"label": id2label[int(j)], "score": float(s)}
                              for s, j in zip(scores, idx, strict=True)]
        return results
