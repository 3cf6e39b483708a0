"""Worker queues with real processes: an API offering `default` and `gpu` on PostgreSQL and
Redis, one `tuneforge worker --queues gpu` and one `tuneforge worker --queues default`. A job
naming `gpu` trains on the gpu worker, a job naming no queue on the default one, whichever
worker is free first: the job's `worker` field (host:pid) says which trained it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveProcess, LiveService, expect, live_service, upload_jsonl, wait_for_job
from tests.security.fuzz import TINY_MODEL, tiny_models
from tests.unit.tiny_model import sentiment_rows

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(300)]
READY_S = 120


def start_worker(service: LiveService, name: str, queues: str) -> LiveProcess:
    worker = service._process(name, ["worker", "--queues", queues])
    service.processes.append(worker)
    worker.start()
    return worker


def create_with_cli(service: LiveService, file_id: str, *options: str) -> dict[str, Any]:
    """`tuneforge jobs create` as a user runs it; the job it made."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "create", "--url", service.base_url,
         "--api-key", service.api_key, "--training-file", file_id, "--model", TINY_MODEL,
         "--n-epochs", "1", "--batch-size", "8", "--json", *options],
        cwd=service.root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr}"
    job: dict[str, Any] = json.loads(done.stdout)
    return job


def worker_pid(job: dict[str, object]) -> int:
    return int(str(job["worker"]).rsplit(":", 1)[1])


def test_a_job_trains_on_a_worker_of_the_queue_it_names(
        tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    env = {"TUNEFORGE_MODELS_DIR": str(tiny_models(tmp_path / "models")),
           "TUNEFORGE_DATABASE_URL": postgres_url, "TUNEFORGE_BROKER_URL": redis_url,
           "TUNEFORGE_QUEUES": "default,gpu", "OMP_NUM_THREADS": "1"}
    # Workers start once the API is ready, so after it has migrated the database.
    with live_service(tmp_path, env_overrides=env, embedded_worker=False) as service:
        gpu = start_worker(service, "worker-gpu", "gpu")
        default = start_worker(service, "worker-default", "default")
        for worker in (gpu, default):
            service.wait_for_log(worker, "ready.", READY_S)
        with service.client() as client:
            file_id = upload_jsonl(client, "rows.jsonl", sentiment_rows(40))["id"]
            body = {"model": TINY_MODEL, "training_file": file_id,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 8}}
            on_gpu = create_with_cli(service, file_id, "--suffix", "on-gpu", "--queue", "gpu")
            plain = expect(client.post("/v1/fine_tuning/jobs",
                                       json={**body, "suffix": "plain"}), 201)
            on_gpu = wait_for_job(service, client, on_gpu["id"], timeout_s=180)
            plain = wait_for_job(service, client, plain["id"], timeout_s=180)
    assert worker_pid(on_gpu) == gpu.pid, (on_gpu["worker"], gpu.pid, default.pid)
    assert worker_pid(plain) == default.pid, (plain["worker"], gpu.pid, default.pid)
    assert "taking jobs from queues: gpu" in gpu.log_path.read_text()
