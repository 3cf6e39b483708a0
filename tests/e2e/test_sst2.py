"""SST-2 end to end, over HTTP, against real processes: upload, fine-tune MiniLM, predict.

Two deployments:
- embedded: SQLite and Celery's filesystem transport, the worker started by `tuneforge serve`;
- postgres: a fresh PostgreSQL database and a Redis database number, `tuneforge db upgrade`,
  `tuneforge serve --no-worker`, and a separate `tuneforge worker` process.

The accuracy is computed here from the labels the service returns for SST-2 dev sentences
that training never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.ml.precision import use_bf16
from tests.live import (
    LiveService,
    all_events,
    expect,
    live_service,
    predict_labels,
    upload_jsonl,
    wait_for_job,
)

MIN_ACCURACY = 0.70
LEARNING_RATE = 2e-4  # what the service chooses for these rows (app/ml/hyperparameters.py)
PROGRESS_FIELDS = ("step", "train_loss", "learning_rate", "samples_per_s")


def _deployment(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "embedded":
        return {"embedded_worker": True, "separate_workers": 0, "env_overrides": {}}
    database = request.getfixturevalue("postgres_url")
    broker = request.getfixturevalue("redis_url")
    return {"embedded_worker": False, "separate_workers": 1,
            "env_overrides": {"TUNEFORGE_DATABASE_URL": database,
                              "TUNEFORGE_BROKER_URL": broker}}


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["embedded",
                                  pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sst2_fine_tune_and_predict(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                    sst2_train: list[dict[str, Any]],
                                    sst2_dev: list[dict[str, Any]]) -> None:
    deployment = _deployment(kind, request)
    if kind == "postgres":
        # The schema comes from the migration command, before any server touches it.
        LiveService(root=tmp_path, **deployment).run_cli("db", "upgrade")
        _assert_schema_at_head(deployment["env_overrides"]["TUNEFORGE_DATABASE_URL"])

    with live_service(tmp_path, **deployment) as service, service.client() as client:
        training = upload_jsonl(client, "sst2-train.jsonl", sst2_train)
        assert training["object"] == "file" and training["id"].startswith("file-")
        assert training["rows"] == len(sst2_train)
        assert training["detected_task"] == "text-classification"
        assert set(training["label_counts"]) == {"negative", "positive"}

        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": training["id"], "suffix": f"sst2-{kind}",
            # Only n_epochs, as a new user sends: the service picks the rest.
            "hyperparameters": {"n_epochs": 1}}), 201)
        assert created["status"] in ("validating_files", "queued", "running"), created
        job = wait_for_job(service, client, created["id"])

        model = job["fine_tuned_model"]
        assert model, job
        assert job["finished_at"] and job["trained_tokens"] and job["trained_tokens"] > 0, job
        assert job["hyperparameters"]["n_epochs"] == 1, job["hyperparameters"]
        assert job["hyperparameters"]["learning_rate"] == pytest.approx(LEARNING_RATE)
        # Progress is written at logging steps, so the last step may not be reported.
        progress = job["progress"]
        events = all_events(client, job["id"])
        stopped_early = [e for e in events if e["message"].startswith("Stopped early")]
        assert progress["total_steps"] > 0, progress
        assert progress["step"] == progress["total_steps"] or (
            stopped_early and 0 < progress["step"] < progress["total_steps"]), progress
        # The batch size was left to the service, which says why it chose it.
        assert any(e["message"].startswith("auto: batch_size 16 because") for e in events)
        # 720 rows (10% held out) in one epoch of batch 16 is 45 steps: MiniLM's 1e-4, doubled.
        assert any(e["message"].startswith("auto: learning_rate 2e-04 because a 23M-parameter "
                                           "model and only 45 optimizer steps") for e in events)
        # SST-2 rows are short phrases: the default token limit holds them, measured in
        # MiniLM's own tokens.
        assert any(e["message"].startswith("auto: max_length 128 because 99% of the training "
                                           "rows are at most") for e in events)
        assert progress["fraction"] == 1.0, progress

        _assert_progress_events(all_events(client, job["id"]))
        checkpoints = expect(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints"))
        assert checkpoints["object"] == "list" and checkpoints["data"], checkpoints
        for checkpoint in checkpoints["data"]:
            assert checkpoint["object"] == "fine_tuning.job.checkpoint"
            assert checkpoint["fine_tuning_job_id"] == job["id"]
            assert 0 < checkpoint["step_number"] <= job["progress"]["total_steps"]
            assert checkpoint["fine_tuned_model_checkpoint"]

        accuracy = _dev_accuracy(client, model, sst2_dev)
        print(f"E2E sst2 ({kind}): dev accuracy {accuracy:.3f} (bar {MIN_ACCURACY})")
        assert accuracy >= MIN_ACCURACY, f"{kind}: dev accuracy {accuracy:.3f} < {MIN_ACCURACY}"

        if kind == "postgres":
            _assert_split_deployment(service, deployment, job["id"])


def _assert_progress_events(events: list[dict[str, Any]]) -> None:
    assert events, "the job has no events"
    for event in events:
        assert event["object"] == "fine_tuning.job.event"
        assert event["level"] in ("info", "warn", "error") and event["message"], event
    progress = [e for e in events if e["type"] == "metrics" and e["data"]
                and all(name in e["data"] for name in PROGRESS_FIELDS)]
    assert progress, "no metrics event with " + ", ".join(PROGRESS_FIELDS) + ": " + str(
        [(e["type"], e["message"], e["data"]) for e in events])
    for event in progress:
        data = event["data"]
        assert data["step"] > 0 and data["train_loss"] >= 0, data
        assert 0 < data["learning_rate"] <= LEARNING_RATE * 1.0001, data
        assert data["samples_per_s"] > 0, data
    # The worker runs on this machine with the default settings: it says the same as we do.
    precision = "bf16 mixed precision" if use_bf16(True) else "fp32"
    messages = [e["message"] for e in events]
    assert messages.count(f"Training in {precision}.") == 1, messages


def _dev_accuracy(client: Any, model: str, dev: list[dict[str, Any]]) -> float:
    response = client.post(f"/v1/models/{model}/predict", json={"inputs": dev[0]["text"]})
    expect(response)
    assert response.headers.get("X-Tuneforge-Model-Version") == model, response.headers

    outputs = predict_labels(client, model, [row["text"] for row in dev])
    correct = 0
    for row, scores in zip(dev, outputs, strict=True):
        assert {s["label"] for s in scores} == {"negative", "positive"}, scores
        assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-3), scores
        assert [s["score"] for s in scores] == sorted((s["score"] for s in scores),
                                                      reverse=True), scores
        best = max(scores, key=lambda s: s["score"])["label"]
        correct += best == row["label"]
    return correct / len(dev)


def _plain_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _assert_schema_at_head(database_url: str) -> None:
    with psycopg.connect(_plain_url(database_url), connect_timeout=5) as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        assert revision, "`tuneforge db upgrade` left no alembic revision"


def _assert_split_deployment(service: LiveService, deployment: dict[str, Any],
                             job_id: str) -> None:
    """The job went through PostgreSQL and Redis, and the separate worker trained it."""
    database_url = deployment["env_overrides"]["TUNEFORGE_DATABASE_URL"]
    with psycopg.connect(_plain_url(database_url), connect_timeout=5) as connection:
        row = connection.execute("SELECT status FROM jobs WHERE id = %s",
                                 (job_id,)).fetchone()
    assert row == ("succeeded",), f"job {job_id} in PostgreSQL: {row}"
    assert not (service.data_dir / "tuneforge.db").exists(), "a SQLite database was created"
    assert not (service.data_dir / "broker").exists(), "the filesystem broker was used"
    api_log = service.processes[0].log_path.read_text(errors="replace")
    worker_log = service.processes[1].log_path.read_text(errors="replace")
    assert "tuneforge.train_job" not in api_log, "the API process ran a training task"
    assert "tuneforge.train_job" in worker_log and "succeeded" in worker_log, \
        service.processes[1].log_tail()
