"""GET /v1/models/{id}/content: a version downloads as a tar.gz that transformers loads as it
is, predicts what the service predicts, holds nothing of training, and is streamed."""

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.config import Settings
from app.services.export import CHUNK_BYTES, Member, tar_gz
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows

TEXTS = ["good film", "the plot was awful and boring", "a nice and fun story", "ugly",
         "the movie was poor and sad", "it is ok"]
FOLDER = "ft-exported-v1"
EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "labels.json", "README.md"}


@dataclass
class Exported:
    client: TestClient
    settings: Settings
    job: dict[str, Any]
    archive: bytes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Exported]:
    # fp32 serving, so the service's scores and a plain transformers forward pass agree.
    with running_app(tmp_path_factory.mktemp("export") / "data", models_dir,
                     serve_precision="fp32") as (client, settings):
        file_id = upload_rows(client)["id"]
        created = client.post("/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL, "training_file": file_id, "suffix": "exported",
            "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
        assert created.status_code == 201, created.text
        run_job(settings, created.json()["id"], "test-worker")
        job = client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json()
        assert job["status"] == "succeeded", job
        moved = client.put("/v1/registry/exported/aliases/production", json={"version": "1"})
        assert moved.status_code == 200, moved.text
        response = client.get(f"/v1/models/{job['fine_tuned_model']}/content")
        assert response.status_code == 200, response.text
        yield Exported(client, settings, job, response.content)


def unpacked(archive: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into / FOLDER


def test_the_archive_loads_with_from_pretrained_and_predicts_as_the_service(
        exported: Exported, tmp_path: Path) -> None:
    folder = unpacked(exported.archive, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    scores = logits.softmax(-1)
    served = exported.client.post("/v1/models/exported@production/predict",
                                  json={"inputs": TEXTS}).json()
    for text, row, answer in zip(TEXTS, scores, served, strict=True):
        local = {model.config.id2label[i]: float(score) for i, score in enumerate(row)}
        assert answer[0]["label"] == max(local, key=lambda label: local[label]), text
        for entry in answer:
            assert entry["score"] == pytest.approx(local[entry["label"]], abs=1e-5), text


def test_the_archive_holds_the_model_its_labels_and_card_and_nothing_of_training(
        exported: Exported, tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(exported.archive), mode="r:gz") as tar:
        names = tar.getnames()
    assert names[0] == FOLDER
    assert {name.removeprefix(f"{FOLDER}/") for name in names[1:]} == EXPECTED_FILES
    folder = unpacked(exported.archive, tmp_path)
    labels = json.loads((folder / "labels.json").read_text())
    assert labels["labels"] == ["negative", "positive"]
    assert labels["id2label"] == {"0": "negative", "1": "positive"}
    card = (folder / "README.md").read_text()
    version = exported.client.get("/v1/registry/exported").json()["versions"][0]
    for fact in (version["id"], exported.job["id"], version["lineage"]["files"][0]["sha256"],
                 BASE_MODEL, "AutoModelForSequenceClassification", "| macro_f1 |",
                 '"learning_rate"', "pipeline_tag: text-classification"):
        assert fact in card, fact


def test_a_name_and_an_alias_download_the_version_they_name(exported: Exported) -> None:
    for ref in ("exported", "exported@production"):
        response = exported.client.get(f"/v1/models/{ref}/content")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/gzip"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="{FOLDER}.tar.gz"')
        assert response.content == exported.archive


def test_foreign_unknown_and_base_model_ids_are_refused(exported: Exported) -> None:
    client = exported.client
    key = client.post("/v1/admin/keys", json={"project": "elsewhere"}).json()["key"]
    foreign = client.get(f"/v1/models/{exported.job['fine_tuned_model']}/content",
                         headers={"Authorization": f"Bearer {key}"})
    assert_error(foreign, 404, "not_found", "model")
    assert_error(client.get("/v1/models/ft:exported:v9/content"), 404, "not_found", "model")
    assert_error(client.get("/v1/models/no-such-model/content"), 404, "not_found", "model")
    assert_error(client.get(f"/v1/models/{BASE_MODEL}/content"), 409,
                 "base_model_not_exportable", "model")


def test_the_route_is_in_the_spec_with_its_statuses(exported: Exported) -> None:
    operation = exported.client.get("/openapi.json").json()[
        "paths"]["/v1/models/{model_id}/content"]["get"]
    assert {"200", "401", "404", "409", "422", "429", "503"} <= set(operation["responses"])
    assert "application/gzip" in operation["responses"]["200"]["content"]


def test_the_archive_is_written_a_chunk_at_a_time(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.write_bytes(os.urandom(5 * CHUNK_BYTES + 123))
    with weights.open("rb") as handle:
        chunks = list(tar_gz("model", [Member.of_open_file("model.safetensors", handle),
                                       Member.of_text("README.md", "# card\n")]))
    # Random bytes do not compress: each chunk read is about one chunk sent, never the whole.
    assert len(chunks) >= 5
    assert max(len(chunk) for chunk in chunks) < 2 * CHUNK_BYTES
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        assert tar.getnames() == ["model", "model/model.safetensors", "model/README.md"]
        stored = tar.extractfile("model/model.safetensors")
        assert stored is not None and stored.read() == weights.read_bytes()
