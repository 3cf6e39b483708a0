"""LoRA jobs through the service on the tiny BERT: each version serves its own answers over
one shared copy of the base, exports merged or as its adapter, and is never a job's base."""

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.config import Settings
from app.ml.inference import ModelCache
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows

JOBS = "/v1/fine_tuning/jobs"
TEXTS = ["good film", "the plot was awful and boring", "a nice and fun story", "it is ok"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@dataclass
class Service:
    client: TestClient
    settings: Settings
    models_dir: Path
    full: str = ""
    adapters: tuple[str, ...] = ()


def train(client: TestClient, settings: Settings, **body: Any) -> dict[str, Any]:
    created = client.post(JOBS, json={"training_file": body.pop("file"), **body})
    assert created.status_code == 201, created.text
    run_job(settings, created.json()["id"], "test-worker")
    job: dict[str, Any] = client.get(f"{JOBS}/{created.json()['id']}").json()
    return job


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    # fp32 serving, so the service's scores and a plain forward pass agree.
    with running_app(tmp_path_factory.mktemp("lora") / "data", models_dir,
                     serve_precision="fp32", version_cache_seconds="0") as (client, settings):
        file_id = upload_rows(client)["id"]
        state = Service(client, settings, models_dir)
        hyper = {"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "lora": LORA}
        state.adapters = tuple(
            train(client, settings, model=BASE_MODEL, file=file_id, suffix="adapted",
                  seed=seed, hyperparameters=hyper)["fine_tuned_model"] for seed in (1, 2))
        state.full = train(client, settings, model=BASE_MODEL, file=file_id, suffix="whole",
                           hyperparameters={"n_epochs": 1, "batch_size": 8})["fine_tuned_model"]
        yield state


def predict(service: Service, model: str) -> list[Any]:
    response = service.client.post(f"/v1/models/{model}/predict", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    assert response.headers["X-Tuneforge-Model-Version"] == model
    answer: list[Any] = response.json()
    return answer


def test_two_adapter_versions_answer_apart_over_one_copy_of_the_base(service: Service) -> None:
    first, second = service.adapters
    assert (first, second) == ("ft:adapted:v1", "ft:adapted:v2")
    answers = [predict(service, version) for version in service.adapters]
    assert answers[0] != answers[1]
    cache: ModelCache = service.client.app.state.model_cache  # type: ignore[attr-defined]
    loaded = [cache.peek(key) for key in cache.keys()]  # noqa: SIM118 - not a mapping
    adapters = [m for m in loaded if m is not None and m.base is not None]
    assert len(adapters) == 2 and adapters[0].base is adapters[1].base
    query = "bert.encoder.layer.1.attention.self.query.base_layer.weight"
    pointers = {m.model.get_parameter(query).data_ptr() for m in adapters}
    assert len(pointers) == 1
    base = adapters[0].base
    assert base is not None
    assert cache.loaded_bytes == base.size_bytes + sum(m.size_bytes for m in adapters)


def archive_folder(service: Service, model: str, into: Path, **params: str) -> Path:
    response = service.client.get(f"/v1/models/{model}/content", params=params)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
        return into / tar.getnames()[0]


def scores(model: Any, folder: Path) -> list[list[float]]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    return [sorted(row.tolist(), reverse=True) for row in logits.softmax(-1)]


def served_scores(service: Service, model: str) -> list[list[float]]:
    return [[entry["score"] for entry in answer] for answer in predict(service, model)]


def test_the_merged_export_loads_with_plain_transformers_and_answers_as_served(
        service: Service, tmp_path: Path) -> None:
    folder = archive_folder(service, service.adapters[0], tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json",
                                                  "labels.json", "README.md"}
    assert not (folder / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert not any("lora_" in name for name, _ in model.named_parameters())
    for local, served in zip(scores(model, folder), served_scores(service, service.adapters[0]),
                             strict=True):
        assert local == pytest.approx(served, abs=1e-5)


def test_the_adapter_export_holds_the_adapter_alone_and_loads_with_peft(
        service: Service, tmp_path: Path) -> None:
    folder = archive_folder(service, service.adapters[1], tmp_path, format="adapter")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json"} <= names
    assert "model.safetensors" not in names
    settings = json.loads((folder / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == BASE_MODEL  # no path of the server's
    assert "peft" in (folder / "README.md").read_text()
    base = AutoModelForSequenceClassification.from_pretrained(
        service.models_dir / BASE_MODEL, num_labels=2)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    for local, served in zip(scores(model, folder), served_scores(service, service.adapters[1]),
                             strict=True):
        assert local == pytest.approx(served, abs=1e-5)


def test_a_full_fine_tune_has_no_adapter_export(service: Service) -> None:
    response = service.client.get(f"/v1/models/{service.full}/content",
                                  params={"format": "adapter"})
    assert_error(response, 422, "not_an_adapter", "format")
    bad = service.client.get(f"/v1/models/{service.full}/content", params={"format": "zip"})
    assert_error(bad, 422, "invalid_request", "format")


def test_an_adapter_is_not_the_base_of_another_job(service: Service) -> None:
    file_id = upload_rows(service.client, filename="more.jsonl")["id"]
    refused = service.client.post(JOBS, json={"model": service.adapters[0],
                                              "training_file": file_id})
    assert_error(refused, 422, "adapter_as_base", "model", "is a LoRA adapter of 'tiny-bert'")


def test_lora_on_a_file_of_plain_text_is_refused_saying_why(service: Service) -> None:
    text = upload_rows(service.client, [{"text": f"plain sentence {i}"} for i in range(20)],
                       filename="text.jsonl")["id"]
    refused = service.client.post(JOBS, json={"model": BASE_MODEL, "training_file": text,
                                              "hyperparameters": {"n_epochs": 1, "lora": LORA}})
    assert_error(refused, 422, "lora_unsupported", "hyperparameters.lora", "masked-lm")


def test_a_version_adapters_serve_over_is_kept_until_they_go(service: Service) -> None:
    file_id = upload_rows(service.client, filename="again.jsonl")["id"]
    job = train(service.client, service.settings, model="whole", file=file_id, suffix="on-whole",
                hyperparameters={"n_epochs": 1, "batch_size": 8, "lora": LORA})
    assert job["status"] == "succeeded", job["error"]
    versions = service.client.get("/v1/registry/on-whole").json()["versions"]
    assert service.client.get(f"/v1/models/{job['fine_tuned_model']}").json()["base_model"] \
        == service.full  # pinned to the version, not to the name that may move
    # The job named "whole"; it was pinned to the version that name meant then.
    assert job["model"] == service.full
    assert versions[0]["lineage"]["base_model"] == service.full
    assert len(predict(service, job["fine_tuned_model"])) == len(TEXTS)
    refused = service.client.delete(f"/v1/models/{service.full}")
    assert_error(refused, 409, "base_of_adapters", "model", job["fine_tuned_model"])
    assert service.client.delete(f"/v1/models/{job['fine_tuned_model']}").status_code == 200
    assert service.client.delete(f"/v1/models/{service.full}").status_code == 200
