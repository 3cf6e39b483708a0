"""A real training run in-process, then the registry and prediction over HTTP.

Jobs are trained by calling app.services.training_runs.run_job, the function the Celery
task runs, on the tiny BERT base model; no broker or worker process is involved.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, jsonl_bytes, upload, upload_rows
from tests.unit.tiny_model import sentiment_rows

JOBS = "/v1/fine_tuning/jobs"
VERSION_HEADER = "X-Tuneforge-Model-Version"
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "learning_rate": 3e-3}
RESOLVED = {"n_epochs": 2, "batch_size": 8, "learning_rate": 3e-3,
            "learning_rate_multiplier": 1.0, "max_length": 128, "warmup_ratio": 0.06,
            "weight_decay": 0.01, "max_grad_norm": 0.0, "gradient_accumulation_steps": 1,
            # Chosen for the run: at most once an epoch here (5 steps), patience 3.
            "eval_steps": 5, "early_stopping_patience": 3}
TRAIN_CONTENT = jsonl_bytes(sentiment_rows(40))
DEV_CONTENT = jsonl_bytes(sentiment_rows(60)[40:])
# 40 rows, 10% of each label held out: 36 training rows in batches of 8.
STEPS_PER_EPOCH = 5


@dataclass
class Flow:
    client: TestClient
    settings: Settings
    train_file: dict[str, Any]
    dev_file: dict[str, Any]
    job1: dict[str, Any] = field(default_factory=dict)
    job2: dict[str, Any] = field(default_factory=dict)
    before_v2: dict[str, httpx.Response] = field(default_factory=dict)


def create_job(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(JOBS, json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def train(client: TestClient, job_id: str) -> dict[str, Any]:
    run_job(get_settings(), job_id, "test-worker")
    job: dict[str, Any] = client.get(f"{JOBS}/{job_id}").json()
    return job


def predict(client: TestClient, model: str, inputs: Any = "good film",
            **parameters: Any) -> httpx.Response:
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v1/models/{model}/predict", json=body)


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Flow]:
    # References re-read on every request: "sentiment" must name v2 as soon as v2 exists
    # (the in-memory staleness bound has tests of its own, in test_serving.py).
    with running_app(tmp_path_factory.mktemp("flow") / "data", models_dir,
                     version_cache_seconds="0") as (client, s):
        train_file = upload(client, TRAIN_CONTENT, "reviews.jsonl").json()
        dev_file = upload(client, DEV_CONTENT, "dev.jsonl").json()
        state = Flow(client, s, train_file, dev_file)

        # First version: no validation file, so rows are held out of the training file.
        job = create_job(client, model=BASE_MODEL, training_file=train_file["id"],
                         suffix="sentiment", hyperparameters=HYPERPARAMETERS)
        state.job1 = train(client, job["id"])

        # Pin production to v1, then train v2 (with a validation file this time).
        state.before_v2["alias"] = client.put("/v1/registry/sentiment/aliases/production",
                                              json={"version": "1"})
        state.before_v2["by_name"] = predict(client, "sentiment")
        job = create_job(client, model=BASE_MODEL, training_file=train_file["id"],
                         validation_file=dev_file["id"], suffix="sentiment",
                         hyperparameters=HYPERPARAMETERS)
        state.job2 = train(client, job["id"])
        yield state


def test_job_succeeded(flow: Flow) -> None:
    job = flow.job1
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == "ft:sentiment:v1"
    assert job["error"] is None
    assert job["worker"] == "test-worker"
    assert job["attempt"] == 1
    assert job["finished_at"] is not None and job["finished_at"] >= job["created_at"]
    assert job["estimated_finish"] is None
    assert job["trained_tokens"] > 0
    assert job["hyperparameters"] == RESOLVED
    assert {"accuracy", "macro_f1", "loss", "train_runtime_s"} <= set(job["metrics"])
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 2 * STEPS_PER_EPOCH
    assert job["progress"]["fraction"] == 1.0
    assert job["progress"]["epoch"] == pytest.approx(2.0)
    assert flow.job2["status"] == "succeeded", flow.job2["error"]
    assert flow.job2["fine_tuned_model"] == "ft:sentiment:v2"


def test_checkpoints_once_per_epoch(flow: Flow) -> None:
    job_id = flow.job1["id"]
    page = flow.client.get(f"{JOBS}/{job_id}/checkpoints").json()
    assert page["object"] == "list"
    assert page["has_more"] is False
    assert [c["step_number"] for c in page["data"]] == [2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH]
    for checkpoint in page["data"]:
        assert checkpoint["object"] == "fine_tuning.job.checkpoint"
        assert checkpoint["id"].startswith("ftckpt-")
        assert checkpoint["fine_tuning_job_id"] == job_id
        assert checkpoint["fine_tuned_model_checkpoint"] == (
            f"{job_id}:ckpt-step-{checkpoint['step_number']}")
        assert {"accuracy", "macro_f1", "loss"} <= set(checkpoint["metrics"])
    first = flow.client.get(f"{JOBS}/{job_id}/checkpoints", params={"limit": 1}).json()
    assert first["has_more"] is True
    rest = flow.client.get(f"{JOBS}/{job_id}/checkpoints",
                           params={"after": first["data"][0]["id"]}).json()
    assert [c["step_number"] for c in rest["data"]] == [STEPS_PER_EPOCH]


def test_finished_checkpoints_keep_weights_only(flow: Flow) -> None:
    jobs_root = flow.settings.resolved_artifact_dir / "jobs"
    checkpoints = list(jobs_root.glob("*/checkpoint-*"))
    assert len(checkpoints) == 4  # two jobs, two epochs each
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert "model.safetensors" in names
        assert "optimizer.pt" not in names and "rng_state.pth" not in names


def test_events_include_progress_and_evaluation(flow: Flow) -> None:
    job_id = flow.job1["id"]
    page = flow.client.get(f"{JOBS}/{job_id}/events", params={"limit": 100}).json()
    assert page["has_more"] is False
    events = page["data"][::-1]  # oldest first
    assert {e["type"] for e in events} == {"message", "metrics"}
    progress = [e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
    assert [p["step"] for p in progress] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for data in progress:
        assert {"step", "total_steps", "epoch", "train_loss", "learning_rate",
                "samples_per_s"} <= set(data)
    evaluations = [e["data"] for e in events
                   if e["type"] == "metrics" and "macro_f1" in e["data"]]
    assert [e["step"] for e in evaluations] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    messages = [e["message"] for e in events]
    assert messages[0].startswith("Created fine-tuning job")
    assert any(m.startswith("Attempt 1 started on test-worker") for m in messages)
    assert any("holding out 4 training rows" in m for m in messages)
    assert messages[-1].startswith("Job succeeded: registered ft:sentiment:v1")
    assert all(e["level"] == "info" for e in events)
    # With a validation file nothing is held out.
    job2_events = flow.client.get(f"{JOBS}/{flow.job2['id']}/events",
                                  params={"limit": 100}).json()["data"]
    assert not any("holding out" in e["message"] for e in job2_events)


def test_models_list_and_retrieve(flow: Flow) -> None:
    models = {m["id"]: m for m in flow.client.get("/v1/models").json()["data"]}
    assert models[BASE_MODEL]["owned_by"] == "tuneforge"
    assert "minilm-l6" in models
    v1 = models["ft:sentiment:v1"]
    assert v1["object"] == "model"
    assert v1["base_model"] == BASE_MODEL
    assert v1["version"] == 1
    assert v1["task"] == "text-classification"
    assert flow.client.get("/v1/models/ft:sentiment:v2").json()["version"] == 2
    assert flow.client.get(f"/v1/models/{BASE_MODEL}").json()["owned_by"] == "tuneforge"
    assert_error(flow.client.get("/v1/models/nope"), 404, "not_found", "model")


def check_classification(response: httpx.Response, version: str, n_inputs: int = 1,
                         n_labels: int = 2) -> list[list[dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers[VERSION_HEADER] == version
    outputs: list[list[dict[str, Any]]] = response.json()
    assert len(outputs) == n_inputs
    for per_input in outputs:
        assert len(per_input) == n_labels
        assert {item["label"] for item in per_input} <= {"negative", "positive"}
        scores = [item["score"] for item in per_input]
        assert scores == sorted(scores, reverse=True)
        if n_labels == 2:
            assert sum(scores) == pytest.approx(1.0, abs=1e-4)
    return outputs


def test_predict_by_version_name_and_alias(flow: Flow) -> None:
    client = flow.client
    check_classification(predict(client, "ft:sentiment:v1"), "ft:sentiment:v1")
    check_classification(predict(client, "ft:sentiment:v2"), "ft:sentiment:v2")
    # The name alone is the latest version; before v2 existed it was v1.
    check_classification(flow.before_v2["by_name"], "ft:sentiment:v1")
    check_classification(predict(client, "sentiment"), "ft:sentiment:v2")
    # The alias was set before v2 was trained and still points at v1.
    alias = flow.before_v2["alias"]
    assert alias.status_code == 200, alias.text
    assert alias.json() == {"object": "model_alias", "name": "sentiment",
                            "alias": "production", "version": "ft:sentiment:v1"}
    check_classification(predict(client, "sentiment@production"), "ft:sentiment:v1")


def test_predict_is_deterministic_and_batched(flow: Flow) -> None:
    inputs = ["good film", "the plot was awful and boring", "happy", "sad movie"]
    batch = check_classification(predict(flow.client, "ft:sentiment:v1", inputs),
                                 "ft:sentiment:v1", n_inputs=4)
    for text, expected in zip(inputs, batch, strict=True):
        (alone,) = predict(flow.client, "ft:sentiment:v1", [text]).json()
        # Matched by label, not rank: padding may swap two labels a hair apart.
        assert {i["label"]: i["score"] for i in alone} == pytest.approx(
            {i["label"]: i["score"] for i in expected}, abs=1e-4)
    top1 = check_classification(predict(flow.client, "ft:sentiment:v1", inputs, top_k=1),
                                "ft:sentiment:v1", n_inputs=4, n_labels=1)
    assert [o[0]["label"] for o in top1] == [o[0]["label"] for o in batch]


def test_move_alias(flow: Flow) -> None:
    client = flow.client
    moved = client.put("/v1/registry/sentiment/aliases/staging", json={"version": "v2"})
    assert moved.json()["version"] == "ft:sentiment:v2"
    check_classification(predict(client, "sentiment@staging"), "ft:sentiment:v2")
    moved = client.put("/v1/registry/sentiment/aliases/staging",
                       json={"version": "ft:sentiment:v1"})
    assert moved.json()["version"] == "ft:sentiment:v1"
    check_classification(predict(client, "sentiment@staging"), "ft:sentiment:v1")
    assert_error(client.put("/v1/registry/sentiment/aliases/staging", json={"version": "9"}),
                 404, "not_found", "version")
    # Superscript and other non-ASCII digits pass str.isdigit() but are no version number.
    for unicode_digit in ("\u00b9", "v\u00b2", "\u0661"):
        assert_error(client.put("/v1/registry/sentiment/aliases/staging",
                                json={"version": unicode_digit}), 404, "not_found", "version")
    assert_error(client.put("/v1/registry/sentiment/aliases/v3", json={"version": "1"}),
                 422, "invalid_request", "alias")
    assert_error(client.put("/v1/registry/nope/aliases/prod", json={"version": "1"}),
                 404, "not_found", "name")
    assert_error(predict(client, "sentiment@nope"), 404, "not_found", "model")


def test_registry_lineage(flow: Flow) -> None:
    view = flow.client.get("/v1/registry/sentiment").json()
    assert view["object"] == "registered_model"
    assert view["name"] == "sentiment"
    assert [v["id"] for v in view["versions"]] == ["ft:sentiment:v1", "ft:sentiment:v2"]
    assert view["aliases"]["production"] == "ft:sentiment:v1"
    v1, v2 = view["versions"]
    assert v1["labels"] == ["negative", "positive"]
    assert {"accuracy", "macro_f1"} <= set(v1["metrics"])
    lineage = v1["lineage"]
    assert lineage["base_model"] == BASE_MODEL
    assert lineage["job"] == flow.job1["id"]
    assert lineage["seed"] == 42
    assert lineage["hyperparameters"] == RESOLVED
    assert lineage["files"] == [{"id": flow.train_file["id"], "filename": "reviews.jsonl",
                                 "sha256": hashlib.sha256(TRAIN_CONTENT).hexdigest(),
                                 "rows": 40}]
    assert v2["lineage"]["job"] == flow.job2["id"]
    files = {f["id"]: f for f in v2["lineage"]["files"]}
    assert set(files) == {flow.train_file["id"], flow.dev_file["id"]}
    assert files[flow.dev_file["id"]]["sha256"] == hashlib.sha256(DEV_CONTENT).hexdigest()
    assert_error(flow.client.get("/v1/registry/nope"), 404, "not_found", "name")


def test_redelivered_job_is_not_trained_twice(flow: Flow) -> None:
    run_job(get_settings(), flow.job1["id"], "second-worker")
    job = flow.client.get(f"{JOBS}/{flow.job1['id']}").json()
    assert job["worker"] == "test-worker"
    assert job["fine_tuned_model"] == "ft:sentiment:v1"
    versions = flow.client.get("/v1/registry/sentiment").json()["versions"]
    assert len(versions) == 2


def test_cancelled_job_is_not_trained(flow: Flow) -> None:
    job = create_job(flow.client, model=BASE_MODEL, training_file=flow.train_file["id"],
                     suffix="never")
    flow.client.post(f"{JOBS}/{job['id']}/cancel")
    run_job(get_settings(), job["id"], "test-worker")
    after = flow.client.get(f"{JOBS}/{job['id']}").json()
    assert after["status"] == "cancelled"
    assert after["fine_tuned_model"] is None
    assert_error(flow.client.get("/v1/registry/never"), 404, "not_found")


def test_continue_training_from_a_fine_tuned_version(flow: Flow) -> None:
    job = create_job(flow.client, model="ft:sentiment:v2", training_file=flow.train_file["id"],
                     suffix="sentiment-more", hyperparameters={"n_epochs": 1, "batch_size": 16})
    done = train(flow.client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == "ft:sentiment-more:v1"
    version = flow.client.get("/v1/models/ft:sentiment-more:v1").json()
    assert version["base_model"] == "ft:sentiment:v2"
    check_classification(predict(flow.client, "sentiment-more"), "ft:sentiment-more:v1")


def test_a_job_from_a_name_or_alias_starts_from_the_version_it_named(flow: Flow) -> None:
    # Pinned at creation: a version registered, or an alias moved, while the job waits or is
    # paused must not change the weights it trains from, nor its lineage.
    by_alias = create_job(flow.client, model="sentiment@production",
                          training_file=flow.train_file["id"], suffix="pinned")
    by_name = create_job(flow.client, model="sentiment", training_file=flow.train_file["id"],
                         suffix="pinned")
    latest = flow.client.get("/v1/registry/sentiment").json()["versions"][-1]["id"]
    assert by_alias["model"] == "ft:sentiment:v1" and by_name["model"] == latest
    for job in (by_alias, by_name):
        flow.client.post(f"{JOBS}/{job['id']}/cancel")


def test_model_still_training_is_not_ready(flow: Flow) -> None:
    create_job(flow.client, model=BASE_MODEL, training_file=flow.train_file["id"],
               suffix="pending")
    assert_error(predict(flow.client, "pending"), 409, "model_not_ready", "model")
    assert_error(predict(flow.client, "never-trained"), 404, "not_found", "model")


@pytest.mark.parametrize("body,status,code,param", [
    ({"inputs": ""}, 422, "invalid_request", "inputs"),
    ({"inputs": []}, 422, "invalid_request", "inputs"),
    ({"inputs": ["good", ""]}, 422, "invalid_request", None),
    ({"inputs": "   "}, 422, "invalid_request", "inputs"),
    ({"inputs": ["good", " \n"]}, 422, "invalid_request", None),
    ({"inputs": ["good"] * 257}, 413, "too_many_inputs", "inputs"),
    ({"inputs": "good " * 20_001}, 413, "input_too_long", "inputs"),
    ({"inputs": "good", "parameters": {"top_k": 0}}, 422, "invalid_request", None),
    ({"inputs": "good", "parameters": {"temperature": 1}}, 422, "invalid_request", None),
    ({"text": "good"}, 422, "invalid_request", None),
])
def test_bad_predict_requests(flow: Flow, body: dict[str, Any], status: int, code: str,
                              param: str | None) -> None:
    response = flow.client.post("/v1/models/ft:sentiment:v1/predict", json=body)
    error = assert_error(response, status, code, param)
    if param is None:
        assert error["param"] is None or error["param"].split(".")[0] in ("inputs",
                                                                          "parameters", "text")


def test_delete_versions_and_base_models(flow: Flow) -> None:
    client = flow.client
    for base in (BASE_MODEL, "minilm-l6"):
        assert_error(client.delete(f"/v1/models/{base}"), 409, "base_model_not_deletable",
                     "model")
    # Only a specific version may be deleted, never a name or alias.
    assert_error(client.delete("/v1/models/sentiment"), 409, "conflict", "model")
    assert_error(client.delete("/v1/models/sentiment@production"), 409, "conflict", "model")

    storage = {v["id"]: v for v in client.get("/v1/registry/sentiment").json()["versions"]}
    assert set(storage) == {"ft:sentiment:v1", "ft:sentiment:v2"}
    models_root = flow.settings.resolved_artifact_dir / "models"
    stored_before = set(models_root.iterdir())

    check_classification(predict(client, "ft:sentiment:v1"), "ft:sentiment:v1")  # cached
    deleted = client.delete("/v1/models/ft:sentiment:v1")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": "ft:sentiment:v1", "object": "model", "deleted": True}
    assert len(stored_before - set(models_root.iterdir())) == 1

    assert_error(predict(client, "ft:sentiment:v1"), 404, "not_found", "model")
    assert_error(predict(client, "sentiment@production"), 404, "not_found", "model")
    assert_error(client.get("/v1/models/ft:sentiment:v1"), 404, "not_found")
    assert_error(client.delete("/v1/models/ft:sentiment:v1"), 404, "not_found")
    view = client.get("/v1/registry/sentiment").json()
    assert [v["id"] for v in view["versions"]] == ["ft:sentiment:v2"]
    assert "production" not in view["aliases"]
    check_classification(predict(client, "sentiment"), "ft:sentiment:v2")
    # The training file is still in the lineage of v2 and its jobs: not deletable.
    assert_error(client.delete(f"/v1/files/{flow.train_file['id']}"), 409, "file_in_use")


def test_failed_training_is_recorded_without_server_paths(tmp_path: Path,
                                                          models_dir: Path) -> None:
    broken_models = tmp_path / "models"
    broken = broken_models / "broken-bert"
    broken.mkdir(parents=True)
    (broken / "config.json").write_bytes((models_dir / BASE_MODEL / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"these are not weights")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        source = models_dir / BASE_MODEL / name
        if source.exists():
            (broken / name).write_bytes(source.read_bytes())

    with running_app(tmp_path / "data", broken_models) as (client, settings):
        file_id = upload_rows(client)["id"]
        job = create_job(client, model="broken-bert", training_file=file_id,
                         hyperparameters={"n_epochs": 1})
        failed = train(client, job["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "training_failed"
        assert failed["error"]["message"]
        assert str(settings.data_dir.resolve()) not in failed["error"]["message"]
        assert str(settings.resolved_artifact_dir) not in failed["error"]["message"]
        assert failed["fine_tuned_model"] is None
        assert failed["finished_at"] is not None
        events = client.get(f"{JOBS}/{job['id']}/events").json()["data"]
        assert events[0]["level"] == "error"
        assert events[0]["message"].startswith("Job failed:")
        models = client.get("/v1/models").json()["data"]
        assert not [m for m in models if m["id"].startswith("ft:")]


def test_a_deleted_version_number_is_never_reused(flow: Flow) -> None:
    client = flow.client
    first = train(client, create_job(client, model=BASE_MODEL, training_file=flow.train_file[
        "id"], suffix="numbered", hyperparameters={"n_epochs": 1, "batch_size": 16})["id"])
    assert first["fine_tuned_model"] == "ft:numbered:v1"
    assert client.delete("/v1/models/ft:numbered:v1").status_code == 200
    second = train(client, create_job(client, model=BASE_MODEL, training_file=flow.train_file[
        "id"], suffix="numbered", hyperparameters={"n_epochs": 1, "batch_size": 16})["id"])
    assert second["fine_tuned_model"] == "ft:numbered:v2"
    assert_error(client.get("/v1/models/ft:numbered:v1"), 404, "not_found")


def test_predict_rejects_a_lone_surrogate(flow: Flow) -> None:
    # Valid JSON, invalid Unicode: the escape decodes to half a surrogate pair, which the
    # request schema refuses before any tokenizer sees it.
    response = flow.client.post("/v1/models/ft:sentiment:v2/predict",
                                content=b'{"inputs": ["good", "bad \\ud800"]}',
                                headers={"Content-Type": "application/json"})
    assert_error(response, 422, "invalid_request", "inputs")


def test_an_attempt_over_the_time_limit_fails_cleanly(tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, MAX_JOB_SECONDS="0") as (client, _):
        file_id = upload_rows(client)["id"]
        job = create_job(client, model=BASE_MODEL, training_file=file_id,
                         hyperparameters={"n_epochs": 1, "batch_size": 8})
        failed = train(client, job["id"])
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "time_limit_exceeded"
        assert failed["fine_tuned_model"] is None and failed["finished_at"] is not None
        assert failed["progress"]["step"] == 1  # it stopped after its first step
