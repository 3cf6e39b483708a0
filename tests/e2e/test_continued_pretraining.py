"""Domain adaptation end to end, over HTTP, against real processes (`tuneforge serve`):
continued masked-LM pretraining of MiniLM on SST-2 sentences without their labels, fill-mask
from the resulting version (also through huggingface_hub's InferenceClient), then a
sentiment classifier fine-tuned from that version rather than from the base model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from huggingface_hub import InferenceClient

from tests.live import expect, live_service, predict_labels, upload_jsonl, wait_for_job

PRETRAIN_ROWS = 400
CLASSIFY_ROWS = 400
MIN_ACCURACY = 0.65


@pytest.mark.e2e
@pytest.mark.rotating
def test_pretrain_on_plain_text_then_classify_from_it(
        tmp_path: Path, sst2_train: list[dict[str, Any]],
        sst2_dev: list[dict[str, Any]]) -> None:
    # Sentences the classifier will not see, as unlabelled in-domain text.
    unlabelled = [{"text": row["text"]} for row in sst2_train[-PRETRAIN_ROWS:]]
    labelled = sst2_train[:CLASSIFY_ROWS]
    with live_service(tmp_path) as service, service.client() as client:
        text_file = upload_jsonl(client, "sst2-text.jsonl", unlabelled)
        assert text_file["detected_task"] == "masked-lm", text_file
        assert text_file["rows"] == PRETRAIN_ROWS and text_file["label_counts"] == {}

        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": text_file["id"], "suffix": "sst2-domain",
            "hyperparameters": {"n_epochs": 1, "learning_rate": 1e-4}}), 201)
        assert created["task"] == "masked-lm", created
        pretrained = wait_for_job(service, client, created["id"])
        metrics = pretrained["metrics"]
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
        version = pretrained["fine_tuned_model"]

        _assert_fill_mask(client, version)
        url = f"{service.api_url}/models/{quote(version, safe='')}/predict"
        hf = InferenceClient(model=url, token=service.api_key, timeout=120)
        filled = hf.fill_mask("the acting was [MASK] .", top_k=3)
        assert len(filled) == 3 and all(f.sequence and f.token_str for f in filled), filled

        training = upload_jsonl(client, "sst2-labelled.jsonl", labelled)
        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": version, "training_file": training["id"], "suffix": "sst2-adapted",
            "hyperparameters": {"n_epochs": 1, "learning_rate": 2e-4}}), 201)
        classifier = wait_for_job(service, client, created["id"])["fine_tuned_model"]
        registry = expect(client.get("/v1/registry/sst2-adapted"))
        assert registry["versions"][0]["lineage"]["base_model"] == version, registry

        outputs = predict_labels(client, classifier, [row["text"] for row in sst2_dev])
        best = [max(scores, key=lambda s: s["score"])["label"] for scores in outputs]
        accuracy = sum(b == row["label"] for b, row in zip(best, sst2_dev, strict=True)) \
            / len(sst2_dev)
        print(f"E2E continued pretraining: perplexity {metrics['perplexity']:.2f}, "
              f"classifier from it: dev accuracy {accuracy:.3f} (bar {MIN_ACCURACY})")
        assert accuracy >= MIN_ACCURACY, accuracy


def _assert_fill_mask(client: Any, version: str) -> None:
    single = expect(client.post(f"/v1/models/{version}/predict",
                                json={"inputs": "the movie was [MASK] ."}))
    assert len(single) == 5, single
    for candidate in single:
        assert set(candidate) == {"score", "token", "token_str", "sequence"}, candidate
        assert candidate["token_str"] in candidate["sequence"], candidate
    batch = expect(client.post(f"/v1/models/{version}/predict", json={
        "inputs": ["a [MASK] film", "the plot is [MASK]"], "parameters": {"top_k": 2}}))
    assert [len(candidates) for candidates in batch] == [2, 2], batch
    missing = client.post(f"/v1/models/{version}/predict", json={"inputs": "no mask"})
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"]["code"] == "invalid_mask", missing.text
