"""GoEmotions multi-label end to end, over HTTP, against real processes: upload (JSON lines for
training, CSV for validation), fine-tune MiniLM briefly, then predict with
`huggingface_hub.InferenceClient`, unchanged, and score the served decisions.

The slice keeps the comments whose labels all come from six emotions (neutral included),
so one short epoch on a few hundred rows learns something. Measured with these settings on
the 150 scored comments: macro F1 0.38 over the six labels (marking every comment neutral,
the best one-label answer: 0.13), micro F1 0.68, gratitude F1 0.75.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from huggingface_hub import InferenceClient

from tests.live import (
    data_root,
    expect,
    live_service,
    predict_labels,
    read_jsonl,
    upload_jsonl,
    wait_for_job,
)

pytestmark = pytest.mark.e2e

LABELS = ("admiration", "amusement", "anger", "gratitude", "love", "neutral")
TRAIN_ROWS, EVAL_ROWS, SCORED_ROWS = 320, 80, 150
HYPERPARAMETERS = {"n_epochs": 1, "max_length": 48, "learning_rate": 5e-4, "eval_steps": 10}
THANKS = "Thank you so much, this is really helpful!"


def _slice(split: str, n: int) -> list[dict[str, Any]]:
    rows = [row for row in read_jsonl(data_root() / "goemotions" / f"{split}.jsonl")
            if set(row["labels"]) <= set(LABELS)]
    assert len(rows) >= n, f"GoEmotions {split}: only {len(rows)} rows in the slice"
    return rows[:n]


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "labels"])
    writer.writerows([row["text"], "|".join(row["labels"])] for row in rows)
    return out.getvalue().encode()


def _micro_f1(gold: list[set[str]], predicted: list[set[str]]) -> float:
    tp = sum(len(g & p) for g, p in zip(gold, predicted, strict=True))
    fp = sum(len(p - g) for g, p in zip(gold, predicted, strict=True))
    fn = sum(len(g - p) for g, p in zip(gold, predicted, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _f1_of(label: str, gold: list[set[str]], predicted: list[set[str]]) -> float:
    return _micro_f1([g & {label} for g in gold], [p & {label} for p in predicted])


def _macro_f1(gold: list[set[str]], predicted: list[set[str]]) -> float:
    return sum(_f1_of(label, gold, predicted) for label in LABELS) / len(LABELS)


def test_goemotions_multi_label_fine_tune_and_predict(tmp_path: Path) -> None:
    train, dev = _slice("train", TRAIN_ROWS), _slice("dev", EVAL_ROWS + SCORED_ROWS)
    with live_service(tmp_path) as service, service.client() as client:
        training = upload_jsonl(client, "goemotions-train.jsonl", train)
        assert training["detected_task"] == "multi-label-classification"
        assert training["label_counts"]["gratitude"] == sum("gratitude" in r["labels"]
                                                            for r in train)
        validation = expect(client.post("/v1/files", data={"purpose": "fine-tune"}, files={
            "file": ("goemotions-dev.csv", _csv_bytes(dev[:EVAL_ROWS]), "text/csv")}))
        assert validation["detected_task"] == "multi-label-classification"
        assert validation["rows"] == EVAL_ROWS

        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": training["id"],
            "validation_file": validation["id"], "suffix": "emotions",
            "hyperparameters": HYPERPARAMETERS}), 201)
        assert created["task"] == "multi-label-classification"
        job = wait_for_job(service, client, created["id"])
        assert set(job["metrics"]) >= {"micro_f1", "macro_f1", "loss"}, job["metrics"]
        assert all(isinstance(v, int | float) for v in job["metrics"].values()), job["metrics"]

        (version,) = expect(client.get("/v1/registry/emotions"))["versions"]
        table = version["metrics"]["per_label"]
        assert table["labels"] == list(LABELS)
        thresholds = dict(zip(table["labels"], table["threshold"], strict=True))

        hf = InferenceClient(model=f"{service.api_url}/models/{quote(job['fine_tuned_model'])}"
                                   "/predict", token=service.api_key, timeout=120)
        answer = hf.text_classification(THANKS)
        assert {e.label for e in answer} == set(LABELS)
        scores = [e.score for e in answer]
        assert scores == sorted(scores, reverse=True)
        assert all(e.threshold == thresholds[e.label] for e in answer)
        assert all(e.predicted == (e.score >= e.threshold) for e in answer)
        assert "gratitude" in {e.label for e in answer if e.predicted}, answer
        top = hf.text_classification(THANKS, top_k=2)
        assert [e.label for e in top] == [e.label for e in answer[:2]]

        scored = dev[EVAL_ROWS:]
        served = predict_labels(client, job["fine_tuned_model"], [r["text"] for r in scored])
        gold = [set(r["labels"]) for r in scored]
        predicted = [{e["label"] for e in output if e["predicted"]} for output in served]
        all_neutral = _macro_f1(gold, [{"neutral"}] * len(gold))
        print(f"served: macro F1 {_macro_f1(gold, predicted):.3f} (all neutral "
              f"{all_neutral:.3f}), micro F1 {_micro_f1(gold, predicted):.3f}, gratitude F1 "
              f"{_f1_of('gratitude', gold, predicted):.3f}")
        assert _macro_f1(gold, predicted) > all_neutral + 0.15, (predicted, all_neutral)
        assert _f1_of("gratitude", gold, predicted) > 0.6
