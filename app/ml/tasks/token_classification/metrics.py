"""Evaluation: seqeval entity-level precision / recall / F1 (conlleval rules), overall and per
type, plus token accuracy. The checkpoint with the best `entity_f1` becomes the version."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from seqeval.metrics import classification_report

from app.ml.tasks.token_classification.encoding import IGNORED


def evaluation_metrics(logits: Any, label_ids: Any, labels: list[str],
                       rows: Sequence[int] | None = None) -> dict[str, float]:
    """Entity metrics over the scored sub-tokens (those whose label is not IGNORED), per
    sentence: the windows of one sentence (`rows[i]` names feature i's) are joined first.

    Each word is scored in exactly one window, and a sentence's windows arrive in order
    (encoding emits them in order; evaluation's length sort is stable), so joining their
    scored tags rebuilds the sentence's tag sequence."""
    predicted = np.asarray(logits).argmax(axis=-1)
    gold = np.asarray(label_ids)
    sentence_of = list(rows) if rows is not None else list(range(len(gold)))
    gold_tags: dict[int, list[str]] = {}
    predicted_tags: dict[int, list[str]] = {}
    for sentence, gold_row, predicted_row in zip(sentence_of, gold, predicted, strict=True):
        scored = gold_row != IGNORED
        gold_tags.setdefault(sentence, []).extend(labels[i] for i in gold_row[scored])
        predicted_tags.setdefault(sentence, []).extend(labels[i] for i in predicted_row[scored])
    order = list(gold_tags)
    return entity_metrics([gold_tags[s] for s in order], [predicted_tags[s] for s in order])


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """seqeval (conlleval rules) entity scores, overall and per type, and token accuracy."""
    tokens = sum(len(row) for row in gold)
    correct = sum(g == p for gold_row, predicted_row in zip(gold, predicted, strict=True)
                  for g, p in zip(gold_row, predicted_row, strict=True))
    if not any(tag != "O" for rows in (gold, predicted) for row in rows for tag in row):
        # No entity on either side: seqeval would divide by zero.
        return {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0,
                "token_accuracy": correct / tokens if tokens else 0.0}
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    metrics = {
        "entity_precision": float(report["micro avg"]["precision"]),
        "entity_recall": float(report["micro avg"]["recall"]),
        "entity_f1": float(report["micro avg"]["f1-score"]),
        "token_accuracy": correct / tokens if tokens else 0.0,
    }
    for kind, scores in report.items():
        if kind.endswith(" avg"):
            continue
        metrics[f"{kind}_precision"] = float(scores["precision"])
        metrics[f"{kind}_recall"] = float(scores["recall"])
        metrics[f"{kind}_f1"] = float(scores["f1-score"])
    return metrics

