"""Fine-tuning jobs over HTTP, short of training: creation, idempotency, listing, control."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import BASE_MODEL
from tests.integration.helpers import assert_error, upload_rows
from tests.unit.tiny_model import sentiment_rows

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def training_file(client: TestClient) -> str:
    file_id: str = upload_rows(client)["id"]
    return file_id


def create(client: TestClient, file_id: str, **fields: Any) -> dict[str, Any]:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_job(client: TestClient, training_file: str) -> None:
    job = create(client, training_file, suffix="my-model", seed=7, metadata={"team": "nlp"},
                 hyperparameters={"n_epochs": 3, "batch_size": "auto"})
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["model"] == BASE_MODEL
    assert job["training_file"] == training_file
    assert job["validation_file"] is None
    assert job["task"] == "text-classification"
    assert job["seed"] == 7
    assert job["metadata"] == {"team": "nlp"}
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": "auto"}
    assert job["fine_tuned_model"] is None
    assert job["finished_at"] is None
    assert job["error"] is None
    assert job["progress"] == {"step": 0, "total_steps": 0, "epoch": 0.0, "fraction": 0.0}
    assert client.get(f"{JOBS}/{job['id']}").json() == job


def test_create_job_defaults_seed(client: TestClient, training_file: str) -> None:
    job = create(client, training_file)
    assert job["seed"] == 42
    assert job["hyperparameters"] == {}


def test_create_job_with_validation_file(client: TestClient, training_file: str) -> None:
    # Rows the training file does not have: an identical file is refused (422).
    validation = upload_rows(client, sentiment_rows(60)[40:], filename="dev.jsonl")["id"]
    job = create(client, training_file, validation_file=validation)
    assert job["validation_file"] == validation


def test_idempotency_key(client: TestClient, training_file: str) -> None:
    body = {"model": BASE_MODEL, "training_file": training_file, "suffix": "idem"}
    headers = {"Idempotency-Key": "key-123"}
    first = client.post(JOBS, json=body, headers=headers)
    assert first.status_code == 201
    again = client.post(JOBS, json=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    changed = client.post(JOBS, json={**body, "suffix": "other"}, headers=headers)
    assert_error(changed, 422, "idempotency_key_reused", "Idempotency-Key")
    # Another key is another job.
    other = client.post(JOBS, json=body, headers={"Idempotency-Key": "key-456"})
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]
    ids = [j["id"] for j in client.get(JOBS).json()["data"]]
    assert sorted(ids) == sorted([first.json()["id"], other.json()["id"]])


def test_unknown_training_file(client: TestClient) -> None:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": "file-nope"})
    assert_error(response, 404, "not_found", None, "file-nope")


def test_unknown_validation_file(client: TestClient, training_file: str) -> None:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": training_file,
                                       "validation_file": "file-nope"})
    assert_error(response, 404, "not_found", None, "file-nope")


@pytest.mark.parametrize("model", ["no-such-model", "../tiny-bert", "org/hub-model",
                                   "ft:missing:v1"])
def test_unknown_base_model(client: TestClient, training_file: str, model: str) -> None:
    response = client.post(JOBS, json={"model": model, "training_file": training_file})
    assert_error(response, 422, "model_not_found", "model")


def test_bundled_base_model_is_accepted(client: TestClient, training_file: str) -> None:
    job = client.post(JOBS, json={"model": "minilm-l6", "training_file": training_file})
    assert job.status_code == 201, job.text


@pytest.mark.parametrize("hyperparameters,param", [
    ({"n_epochs": 0}, "hyperparameters.n_epochs"),
    ({"n_epochs": 51}, "hyperparameters.n_epochs"),
    ({"n_epochs": "many"}, "hyperparameters.n_epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"learning_rate": 0}, "hyperparameters.learning_rate"),
    ({"learning_rate": 2}, "hyperparameters.learning_rate"),
    ({"learning_rate_multiplier": -1}, "hyperparameters.learning_rate_multiplier"),
    ({"max_length": 4}, "hyperparameters.max_length"),
    ({"max_length": 100000}, "hyperparameters.max_length"),
    ({"warmup_ratio": 0.9}, "hyperparameters.warmup_ratio"),
    ({"gradient_accumulation_steps": 0}, "hyperparameters.gradient_accumulation_steps"),
    ({"bogus": 1}, "hyperparameters.bogus"),
    ({"n_epochs": True}, "hyperparameters.n_epochs"),
    ({"learning_rate": "0.001"}, "hyperparameters.learning_rate"),
])
def test_bad_hyperparameters(client: TestClient, training_file: str,
                             hyperparameters: dict[str, Any], param: str) -> None:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": training_file,
                                       "hyperparameters": hyperparameters})
    assert_error(response, 422, "invalid_request", param, param)
    assert client.get(JOBS).json()["data"] == []


@pytest.mark.parametrize("field,value", [("suffix", "bad suffix!"), ("seed", -1),
                                         ("task", "summarization"), ("extra", 1),
                                         ("metadata", {"k": "v" * 600})])
def test_bad_top_level_fields(client: TestClient, training_file: str, field: str,
                              value: Any) -> None:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": training_file,
                                       field: value})
    error = assert_error(response, 422, "invalid_request")
    assert error["param"].split(".")[0] == field


def test_missing_required_fields(client: TestClient) -> None:
    assert_error(client.post(JOBS, json={"model": BASE_MODEL}), 422, "invalid_request",
                 "training_file")
    assert_error(client.post(JOBS, content=b"not json",
                             headers={"Content-Type": "application/json"}), 422)


def test_list_pagination_and_status_filter(client: TestClient, training_file: str) -> None:
    created = [create(client, training_file, suffix=f"m{i}")["id"] for i in range(5)]
    newest_first = created[::-1]

    page = client.get(JOBS, params={"limit": 2}).json()
    assert page["object"] == "list"
    assert [j["id"] for j in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    assert page["first_id"] == newest_first[0] and page["last_id"] == newest_first[1]
    page2 = client.get(JOBS, params={"limit": 2, "after": page["last_id"]}).json()
    assert [j["id"] for j in page2["data"]] == newest_first[2:4]
    assert page2["has_more"] is True
    page3 = client.get(JOBS, params={"limit": 2, "after": page2["last_id"]}).json()
    assert [j["id"] for j in page3["data"]] == newest_first[4:]
    assert page3["has_more"] is False
    everything = client.get(JOBS, params={"limit": 5}).json()
    assert [j["id"] for j in everything["data"]] == newest_first
    assert everything["has_more"] is False

    for job_id in created[:2]:
        assert client.post(f"{JOBS}/{job_id}/cancel").status_code == 200
    cancelled = client.get(JOBS, params={"status": "cancelled"}).json()["data"]
    assert sorted(j["id"] for j in cancelled) == sorted(created[:2])
    queued = client.get(JOBS, params={"status": "queued"}).json()["data"]
    assert [j["id"] for j in queued] == newest_first[:3]
    assert client.get(JOBS, params={"status": "succeeded"}).json()["data"] == []


@pytest.mark.parametrize("params,param", [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                          ({"status": "done"}, "status")])
def test_list_bad_query(client: TestClient, params: dict[str, Any], param: str) -> None:
    assert_error(client.get(JOBS, params=params), 422, "invalid_request", param)


def test_list_after_unknown_job(client: TestClient) -> None:
    assert_error(client.get(JOBS, params={"after": "ftjob-nope"}), 404, "not_found")


def test_unknown_job(client: TestClient) -> None:
    for path in ("", "/cancel", "/pause", "/resume", "/events", "/checkpoints"):
        method = client.post if path in ("/cancel", "/pause", "/resume") else client.get
        assert_error(method(f"{JOBS}/ftjob-nope{path}"), 404, "not_found")


def test_cancel_queued_job(client: TestClient, training_file: str) -> None:
    job = create(client, training_file)
    cancelled = client.post(f"{JOBS}/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert client.get(f"{JOBS}/{job['id']}").json()["status"] == "cancelled"
    assert_error(client.post(f"{JOBS}/{job['id']}/cancel"), 409, "job_not_cancellable")
    assert_error(client.post(f"{JOBS}/{job['id']}/pause"), 409, "job_not_pausable")
    assert_error(client.post(f"{JOBS}/{job['id']}/resume"), 409, "job_not_paused")


def test_pause_and_resume_queued_job(client: TestClient, training_file: str) -> None:
    job = create(client, training_file)
    paused = client.post(f"{JOBS}/{job['id']}/pause")
    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    assert_error(client.post(f"{JOBS}/{job['id']}/pause"), 409, "job_not_pausable")
    resumed = client.post(f"{JOBS}/{job['id']}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "queued"
    assert_error(client.post(f"{JOBS}/{job['id']}/resume"), 409, "job_not_paused")
    # A paused job can be cancelled outright.
    client.post(f"{JOBS}/{job['id']}/pause")
    assert client.post(f"{JOBS}/{job['id']}/cancel").json()["status"] == "cancelled"


def test_events_record_each_transition(client: TestClient, training_file: str) -> None:
    job = create(client, training_file)
    client.post(f"{JOBS}/{job['id']}/pause")
    client.post(f"{JOBS}/{job['id']}/resume")
    client.post(f"{JOBS}/{job['id']}/cancel")
    events = client.get(f"{JOBS}/{job['id']}/events").json()
    assert events["object"] == "list"
    assert events["has_more"] is False
    messages = [e["message"] for e in events["data"]]
    assert len(messages) == 4
    # Newest first.
    assert messages[0] == "Job cancelled."
    assert "resumed" in messages[1]
    assert "paused" in messages[2]
    assert messages[3].startswith(f"Created fine-tuning job {job['id']}")
    for event in events["data"]:
        assert event["id"].startswith("ftevent-")
        assert event["object"] == "fine_tuning.job.event"
        assert event["level"] == "info"
        assert event["type"] == "message"

    first = client.get(f"{JOBS}/{job['id']}/events", params={"limit": 1}).json()
    assert [e["message"] for e in first["data"]] == messages[:1]
    assert first["has_more"] is True
    rest = client.get(f"{JOBS}/{job['id']}/events",
                      params={"limit": 10, "after": first["data"][0]["id"]}).json()
    assert [e["message"] for e in rest["data"]] == messages[1:]
    assert_error(client.get(f"{JOBS}/{job['id']}/events", params={"after": "ftevent-nope"}),
                 404, "not_found", "after")


def test_queued_job_has_no_checkpoints(client: TestClient, training_file: str) -> None:
    job = create(client, training_file)
    page = client.get(f"{JOBS}/{job['id']}/checkpoints").json()
    assert page == {"object": "list", "data": [], "has_more": False, "first_id": None,
                    "last_id": None}


def test_lora_is_stored_with_its_defaults_and_in_the_spec(client: TestClient,
                                                          training_file: str) -> None:
    assert "LoraIn" in client.get("/openapi.json").json()["components"]["schemas"]
    job = create(client, training_file, hyperparameters={"lora": {"r": 4}})
    assert job["hyperparameters"] == {"lora": {"r": 4, "alpha": 16, "dropout": 0.1}}
    assert create(client, training_file, hyperparameters={"lora": {}})["hyperparameters"] == \
        {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}}


@pytest.mark.parametrize("lora,param", [
    ({"r": 0}, "hyperparameters.lora.r"), ({"r": 257}, "hyperparameters.lora.r"),
    ({"dropout": 1.0}, "hyperparameters.lora.dropout"), ({"r": "8"}, "hyperparameters.lora.r"),
    ({"rank": 8}, "hyperparameters.lora.rank"), (True, "hyperparameters.lora"),
])
def test_lora_out_of_range_is_refused(client: TestClient, training_file: str,
                                      lora: Any, param: str) -> None:
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": training_file,
                                       "hyperparameters": {"lora": lora}})
    assert_error(response, 422, "invalid_request", param)


@pytest.mark.parametrize("named", [{"task": "masked-lm"}, {}], ids=["named", "detected"])
def test_lora_for_continued_pretraining_is_refused(client: TestClient,
                                                   named: dict[str, str]) -> None:
    # Whether the job names the task or its plain-text rows call for it, the refusal comes
    # at creation, not from the worker.
    text = upload_rows(client, [{"text": f"plain sentence {i}"} for i in range(20)],
                       filename="text.jsonl")["id"]
    response = client.post(JOBS, json={"model": BASE_MODEL, "training_file": text, **named,
                                       "hyperparameters": {"lora": {}}})
    assert_error(response, 422, "lora_unsupported", "hyperparameters.lora", "masked-lm")
