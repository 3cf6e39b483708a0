"""Multi-label text classification: any number of labels per text (none included).

The model scores each label on its own (a sigmoid per label, trained with binary cross
entropy). Each label gets its own decision threshold, tuned on the validation rows at every
evaluation and kept in the checkpoint's config.json, so a version, an export of it and a
reload all decide alike.
"""

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
from app.ml.tasks.base import Features, Row, TaskAdapter, length_sorted_batches, load_pretrained
from app.ml.tasks.classification import PREDICT_BATCH, _string_field

PROBLEM_TYPE = "multi_label_classification"
# The model config's key for the tuned thresholds: {label: threshold}.
THRESHOLDS_KEY = "label_thresholds"
DEFAULT_THRESHOLD = 0.5
# Candidate thresholds: fine steps, low ones included, since a rare label's scores stay low
# for much of a run and 0.5 would never select it.
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)
# F1 rewards marking every row with a label the model cannot yet tell apart (a 5% label
# scores 0.095 that way), so the lowest threshold often wins for such a label, and serving
# would then flag it on nearly every input. A tuned threshold must beat that F1 by this much;
# otherwise the label keeps 0.5.
MIN_GAIN_OVER_ALL_POSITIVE = 0.1


def _label_list(row: Row, line: int) -> list[str]:
    value = row.get("labels")
    if value is None:
        raise DatasetInvalid("is missing", line=line, field="labels")
    if not isinstance(value, list):
        raise DatasetInvalid(f"must be a list of strings, not {type(value).__name__}",
                             line=line, field="labels")
    for label in value:
        if not isinstance(label, str):
            raise DatasetInvalid(f"must hold strings only, not {type(label).__name__}",
                                 line=line, field="labels")
        if not label.strip():
            raise DatasetInvalid("holds an empty label", line=line, field="labels")
    repeated = [label for label, n in Counter(value).items() if n > 1]
    if repeated:
        raise DatasetInvalid(f"names '{repeated[0]}' more than once", line=line, field="labels")
    return list(value)


def f1_scores(predicted: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label precision, recall and F1 over (rows, labels) booleans; trailing axes (the
    threshold grid) are kept. A label neither predicted nor gold scores 0."""
    tp = np.sum(predicted & gold, axis=0)
    fp = np.sum(predicted & ~gold, axis=0)
    fn = np.sum(~predicted & gold, axis=0)
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / np.maximum(tp + fp, 1), "recall": tp / np.maximum(tp + fn, 1),
            "f1": 2 * tp / np.maximum(2 * tp + fp + fn, 1)}


def tune_thresholds(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Each label's threshold: the grid value with the best F1 on these rows (ties go to the
    value nearest 0.5); 0.5 for a label with no positive row, where F1 says nothing, and for
    one whose best F1 is barely that of marking every row (MIN_GAIN_OVER_ALL_POSITIVE)."""
    predicted = probs[:, :, None] >= THRESHOLD_GRID[None, None, :]
    f1 = f1_scores(predicted, gold[:, :, None])["f1"]  # (labels, grid)
    nearest_half_first = np.argsort(np.abs(THRESHOLD_GRID - DEFAULT_THRESHOLD), kind="stable")
    best = nearest_half_first[np.argmax(f1[:, nearest_half_first], axis=1)]
    thresholds = THRESHOLD_GRID[best].astype(float)
    positives = gold.sum(axis=0)
    all_positive_f1 = 2 * positives / (positives + len(gold)) if len(gold) else positives
    uninformed = f1.max(axis=1) < all_positive_f1 + MIN_GAIN_OVER_ALL_POSITIVE
    thresholds[(positives == 0) | uninformed] = DEFAULT_THRESHOLD
    return thresholds


def multi_label_metrics(probs: np.ndarray, gold: np.ndarray, thresholds: np.ndarray,
                        labels: list[str]) -> dict[str, Any]:
    """Micro and macro F1 at the given thresholds, and a per-label table."""
    predicted = probs >= thresholds[None, :]
    scores = f1_scores(predicted, gold)
    tp, fp, fn = (int(scores[k].sum()) for k in ("tp", "fp", "fn"))
    # Macro F1 over the labels that occur on either side, as text classification counts it.
    present = (scores["tp"] + scores["fp"] + scores["fn"]) > 0
    return {
        "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "macro_f1": float(np.mean(scores["f1"][present])) if present.any() else 0.0,
        "per_label": {
            "labels": list(labels),
            "precision": [round(float(x), 4) for x in scores["precision"]],
            "recall": [round(float(x), 4) for x in scores["recall"]],
            "f1": [round(float(x), 4) for x in scores["f1"]],
            "support": [int(x) for x in gold.sum(axis=0)],
            "threshold": [float(x) for x in thresholds],
        },
    }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class MultiLabelClassification(TaskAdapter):
    name = "multi-label-classification"
    best_metric = "micro_f1"
    # A row has a set of labels, not one: the automatic held-out split is a plain random one.
    stratify_by = None

    def matches(self, row: Row) -> bool:
        return "text" in row and "labels" in row and "label" not in row

    def validate_row(self, row: Row, line: int) -> Row:
        return {"text": _string_field(row, "text", line, required=True),
                "labels": _label_list(row, line)}

    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        if len(self.labels(rows)) < 2:
            raise DatasetInvalid("needs at least two distinct labels across the rows",
                                 field="labels")

    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]:
        return dict(sorted(Counter(label for row in rows for label in row["labels"]).items()))

    def labels(self, rows: Sequence[Row]) -> list[str]:
        return sorted({label for row in rows for label in row["labels"]})

    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]:
        encoded = tokenizer([row["text"] for row in rows], truncation=True,
                            max_length=max_length)
        features = []
        for i, row in enumerate(rows):
            item = {key: encoded[key][i] for key in encoded}
            # Float multi-hot: BCE needs floats. A validation label the model was not
            # trained on cannot be scored, so it is left out.
            hot = [0.0] * len(label2id)
            for label in row["labels"]:
                if label in label2id:
                    hot[label2id[label]] = 1.0
            item["labels"] = hot
            features.append(item)
        return features

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorWithPadding(tokenizer)

    def row_inputs(self, row: Row) -> tuple[str, str | None] | None:
        return row["text"], None

    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        return load_pretrained(AutoModelForSequenceClassification, path, labels,
                               problem_type=PROBLEM_TYPE)

    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str],
                        rows: Sequence[int] | None = None) -> dict[str, Any]:
        # Scored at the thresholds tuned on these same rows: the decisions the version makes.
        probs = sigmoid(np.asarray(logits, dtype=np.float64))
        gold = np.asarray(label_ids) > 0.5
        return multi_label_metrics(probs, gold, tune_thresholds(probs, gold), labels)

    def prepare_head(self, model: Any, train: list[Features]) -> None:
        """A new head starts every label at 0.5, far above a typical label's share of the
        rows; BCE then spends the first hundreds of steps pushing every score down, and a
        short run ends before learning anything else. Starting each label's bias at its
        log-odds in the training rows (smoothed, so no label is certain) skips that phase.
        A head that is not new (continued training) keeps its biases."""
        if not train:
            return
        head = _output_layer(model, len(train[0]["labels"]))
        if head is None or head.bias is None or torch.count_nonzero(head.bias):
            return
        counts = np.sum([feature["labels"] for feature in train], axis=0)
        prior = (counts + 1.0) / (len(train) + 2.0)
        with torch.no_grad():
            head.bias.copy_(torch.as_tensor(np.log(prior / (1.0 - prior)),
                                            dtype=head.bias.dtype))

    def keep_for_serving(self, model: PreTrainedModel, tables: dict[str, Any]) -> None:
        table = tables.get("per_label")
        if table:
            setattr(model.config, THRESHOLDS_KEY,
                    dict(zip(table["labels"], table["threshold"], strict=True)))

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        id2label: dict[int, str] = {int(k): v for k, v in (model.config.id2label or {}).items()}
        tuned: dict[str, float] = getattr(model.config, THRESHOLDS_KEY, None) or {}
        thresholds = [float(tuned.get(id2label[i], DEFAULT_THRESHOLD))
                      for i in range(len(id2label))]
        top_k = parameters.get("top_k") or len(id2label)
        results: list[Any] = [None] * len(inputs)
        for chunk, batch in length_sorted_batches(tokenizer, inputs, max_length, PREDICT_BATCH):
            batch = batch.to(model.device)
            probs = torch.sigmoid(model(**batch).logits.float()).cpu()
            for row, i in zip(probs, chunk, strict=True):
                scores, idx = row.topk(min(top_k, row.numel()))
                results[i] = [_scored_label(id2label[int(j)], float(s), thresholds[int(j)])
                              for s, j in zip(scores, idx, strict=True)]
        return results


def _output_layer(model: torch.nn.Module, n_labels: int) -> torch.nn.Linear | None:
    """The head's last linear layer: the one giving a score per label."""
    found = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == n_labels:
            found = module
    return found


def _scored_label(label: str, score: float, threshold: float) -> dict[str, Any]:
    """The Hugging Face element ({label, score}) with our additions: the label's threshold
    and whether its score reaches it (the label applies)."""
    return {"label": label, "score": score, "threshold": threshold,
            "predicted": score >= threshold}
