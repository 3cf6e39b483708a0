"""The official `openai` SDK, unchanged, against a live Tuneforge.

Every call goes through the SDK's own request building and response parsing; any shape it
rejects is an error here. The model-deletion test runs last in this module because it deletes
the shared fine-tuned model (the Hugging Face module, earlier alphabetically, uses it too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.compat.conftest import TrainedServer
from tests.live import ServiceError, jsonl_bytes

pytestmark = pytest.mark.e2e
WAIT_S = 300


@pytest.fixture(scope="module")
def client(trained: TrainedServer) -> Iterator[OpenAI]:
    sdk = OpenAI(base_url=trained.service.api_url, api_key=trained.service.api_key,
                 max_retries=0, timeout=120)
    yield sdk
    sdk.close()


def _wait(trained: TrainedServer, client: OpenAI, job_id: str,
          done: Callable[[Any], bool], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        trained.service.check_alive()
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        if job.status == "failed":
            raise ServiceError(f"{job_id} failed waiting for {what}: {job.error}\n"
                               f"{trained.service.logs()}")
        time.sleep(0.5)
    raise ServiceError(f"{job_id} not {what} after {timeout_s}s: {job}\n{trained.service.logs()}")


def _new_job(trained: TrainedServer, client: OpenAI, n_epochs: int = 3) -> Any:
    return client.fine_tuning.jobs.create(
        model="minilm-l6", training_file=trained.training_file["id"],
        hyperparameters={"n_epochs": n_epochs}, suffix="compat-extra", seed=7,
        metadata={"purpose": "compat"})


def test_files_create_retrieve_list_content_delete(client: OpenAI,
                                                   sst2_train: list[dict[str, Any]]) -> None:
    body = jsonl_bytes(sst2_train[:40])
    created = client.files.create(file=("small.jsonl", body, "application/jsonl"),
                                  purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.bytes == len(body) and created.filename == "small.jsonl"
    assert created.purpose == "fine-tune" and created.status == "processed"
    # Our additions ride along as extra fields.
    assert created.model_extra and created.model_extra["rows"] == 40

    retrieved = client.files.retrieve(created.id)
    assert (retrieved.id, retrieved.bytes, retrieved.filename) == (created.id, len(body),
                                                                    "small.jsonl")
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.content(created.id).read() == body

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as raised:
        client.files.retrieve(created.id)
    assert raised.value.status_code == 404


def test_jobs_retrieve_and_list(trained: TrainedServer, client: OpenAI) -> None:
    job = client.fine_tuning.jobs.retrieve(trained.job["id"])
    assert job.object == "fine_tuning.job" and job.status == "succeeded"
    assert job.fine_tuned_model == trained.model and job.model == "minilm-l6"
    assert job.training_file == trained.training_file["id"] and job.validation_file
    assert job.hyperparameters.n_epochs == 1
    assert job.finished_at and job.finished_at >= job.created_at
    assert job.trained_tokens and job.trained_tokens > 0

    page = client.fine_tuning.jobs.list(limit=100)
    assert trained.job["id"] in [j.id for j in page.data]
    succeeded = client.fine_tuning.jobs.list(extra_query={"status": "succeeded"})
    assert trained.job["id"] in [j.id for j in succeeded.data]

    with pytest.raises(openai.NotFoundError) as raised:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert isinstance(raised.value.body, dict) and raised.value.body.get("message"), \
        raised.value.body


def test_list_events_paginates(trained: TrainedServer, client: OpenAI) -> None:
    first = client.fine_tuning.jobs.list_events(trained.job["id"], limit=2)
    assert len(first.data) == 2 and first.has_more
    # The SDK's auto-pagination follows `after` through every page.
    events = list(client.fine_tuning.jobs.list_events(trained.job["id"], limit=3))
    assert len(events) > 3 and len({e.id for e in events}) == len(events)
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error")
               for e in events)
    metrics = [e for e in events if e.type == "metrics" and isinstance(e.data, dict)
               and "train_loss" in e.data]
    assert metrics, [(e.type, e.message) for e in events]


def test_checkpoints_list(trained: TrainedServer, client: OpenAI) -> None:
    checkpoints = client.fine_tuning.jobs.checkpoints.list(trained.job["id"])
    assert checkpoints.data, checkpoints
    for checkpoint in checkpoints.data:
        assert checkpoint.object == "fine_tuning.job.checkpoint"
        assert checkpoint.fine_tuning_job_id == trained.job["id"]
        assert checkpoint.step_number > 0 and checkpoint.fine_tuned_model_checkpoint
        assert checkpoint.metrics is not None


def test_cancel_running_job(trained: TrainedServer, client: OpenAI) -> None:
    job = _new_job(trained, client)
    assert job.status in ("validating_files", "queued")
    _wait(trained, client, job.id, lambda j: j.status == "running", "running")

    client.fine_tuning.jobs.cancel(job.id)
    ended = _wait(trained, client, job.id, lambda j: j.status != "running", "stopped")
    assert ended.status == "cancelled", ended
    assert ended.fine_tuned_model is None and ended.finished_at
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def test_cancel_queued_job(trained: TrainedServer, client: OpenAI) -> None:
    job = _new_job(trained, client)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    # Queued: cancelled at once. Already picked up: cancelled at the next heartbeat.
    assert cancelled.status in ("cancelled", "running"), cancelled
    ended = _wait(trained, client, job.id, lambda j: j.status != "running", "stopped")
    assert ended.status == "cancelled", ended


def test_pause_and_resume(trained: TrainedServer, client: OpenAI) -> None:
    job = _new_job(trained, client)
    _wait(trained, client, job.id, lambda j: j.status == "running", "running")
    client.fine_tuning.jobs.pause(job.id)
    paused = _wait(trained, client, job.id, lambda j: j.status == "paused", "paused")
    assert paused.fine_tuned_model is None

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running"), resumed
    # It is picked up again (from its checkpoint) by the worker.
    _wait(trained, client, job.id, lambda j: j.status == "running", "running again")
    client.fine_tuning.jobs.cancel(job.id)
    ended = _wait(trained, client, job.id, lambda j: j.status != "running", "stopped")
    assert ended.status == "cancelled", ended


def test_models_list_and_retrieve(trained: TrainedServer, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "minilm-l6" in ids and trained.model in ids
    model = client.models.retrieve(trained.model)
    assert model.id == trained.model and model.object == "model" and model.owned_by
    base = client.models.retrieve("minilm-l6")
    assert base.id == "minilm-l6"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_models_delete_last(trained: TrainedServer, client: OpenAI) -> None:
    with pytest.raises(openai.ConflictError):
        client.models.delete("minilm-l6")
    deleted = client.models.delete(trained.model)
    assert deleted.id == trained.model and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(trained.model)
    assert trained.model not in [m.id for m in client.models.list()]
