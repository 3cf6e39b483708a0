"""Cancelling and pausing a job while a worker trains it, through the real lease heartbeat."""

import threading
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.config import get_settings
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import upload_rows

JOBS = "/v1/fine_tuning/jobs"
# Long enough (hundreds of steps) that the stop request arrives mid-training.
# Long enough to cancel or pause mid-run: no early stopping.
SLOW = {"n_epochs": 20, "batch_size": 1, "learning_rate": 1e-3, "early_stopping_patience": 0}


def start_worker(job_id: str) -> threading.Thread:
    settings = get_settings()
    thread = threading.Thread(target=run_job, args=(settings, job_id, "bg-worker"), daemon=True)
    thread.start()
    return thread


def wait_until_training(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"{JOBS}/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] > 0:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not start training within {timeout}s")


def test_cancel_and_pause_a_running_job(tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, heartbeat_seconds="0.05") as (client, _):
        file_id = upload_rows(client)["id"]

        # Cancel mid-training: the worker stops at the next step and records the outcome.
        job = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id,
                                      "suffix": "cancelled", "hyperparameters": SLOW}).json()
        worker = start_worker(job["id"])
        running = wait_until_training(client, job["id"])
        assert running["worker"] == "bg-worker"
        assert running["progress"]["total_steps"] == 36 * 20
        response = client.post(f"{JOBS}/{job['id']}/cancel")
        assert response.status_code == 200
        worker.join(timeout=120)
        assert not worker.is_alive()
        done = client.get(f"{JOBS}/{job['id']}").json()
        assert done["status"] == "cancelled"
        assert done["fine_tuned_model"] is None
        assert done["progress"]["step"] < done["progress"]["total_steps"]
        messages = [e["message"] for e in
                    client.get(f"{JOBS}/{job['id']}/events", params={"limit": 100}).json()["data"]]
        assert messages[0] == "Job cancelled."
        assert any(m.startswith("Cancellation requested") for m in messages)
        assert client.get("/v1/registry/cancelled").status_code == 404

        # Pause mid-training: a checkpoint is written; resume continues from it.
        job = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id,
                                      "suffix": "paused",
                                      "hyperparameters": {**SLOW, "n_epochs": 3}}).json()
        worker = start_worker(job["id"])
        wait_until_training(client, job["id"])
        assert client.post(f"{JOBS}/{job['id']}/pause").status_code == 200
        worker.join(timeout=120)
        assert not worker.is_alive()
        paused = client.get(f"{JOBS}/{job['id']}").json()
        assert paused["status"] == "paused"
        paused_at = paused["progress"]["step"]
        assert 0 < paused_at < paused["progress"]["total_steps"]
        checkpoints = client.get(f"{JOBS}/{job['id']}/checkpoints").json()["data"]
        last_checkpoint = checkpoints[0]["step_number"]
        assert last_checkpoint >= paused_at

        assert client.post(f"{JOBS}/{job['id']}/resume").json()["status"] == "queued"
        run_job(get_settings(), job["id"], "second-worker")
        finished = client.get(f"{JOBS}/{job['id']}").json()
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["attempt"] == 2
        assert finished["worker"] == "second-worker"
        assert finished["fine_tuned_model"] == "ft:paused:v1"
        events = client.get(f"{JOBS}/{job['id']}/events", params={"limit": 100}).json()["data"]
        attempt2 = next(i for i, e in enumerate(events)
                        if e["message"].startswith("Attempt 2 started"))
        resumed_steps = [e["data"]["step"] for e in events[:attempt2]
                         if e["type"] == "metrics" and "train_loss" in (e["data"] or {})]
        # The second attempt continued after the pause checkpoint instead of starting over.
        assert resumed_steps and min(resumed_steps) > last_checkpoint
