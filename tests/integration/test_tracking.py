"""MLflow tracking of jobs, against a real MLflow store (SQLite, no server) read back with
MlflowClient: params, per-step and evaluation metrics, the registered version, one run across
a pause and resume; and jobs that train as usual when MLflow is down or not installed.

Jobs are trained in-process by run_job (what the Celery task runs) on the tiny BERT.
"""

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from app.config import Settings
from app.db.models import FineTuningJob
from app.db.session import session_scope
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import jsonl_bytes, upload
from tests.unit.tiny_model import sentiment_rows

JOBS = "/v1/fine_tuning/jobs"
# Hundreds of steps, so a pause lands mid-training; evaluated at each epoch.
PAUSABLE = {"n_epochs": 3, "batch_size": 1, "learning_rate": 1e-3,
            "early_stopping_patience": 0}
QUICK = {"n_epochs": 1, "batch_size": 8}


def _files(client: TestClient) -> dict[str, str]:
    return {"training_file": upload(client, jsonl_bytes(sentiment_rows(40))).json()["id"],
            "validation_file": upload(client, jsonl_bytes(sentiment_rows(56)[40:]),
                                      "dev.jsonl").json()["id"]}


def _create(client: TestClient, files: dict[str, str], suffix: str,
            hyperparameters: dict[str, Any]) -> str:
    response = client.post(JOBS, json={"model": BASE_MODEL, "suffix": suffix, "seed": 7,
                                       "hyperparameters": hyperparameters, **files})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"{JOBS}/{job_id}/events", params={"limit": 100}).json()["data"])


def _pause_mid_training(client: TestClient, settings: Settings, job_id: str) -> int:
    """Train until the first progress report, pause; the step the pause stopped at."""
    worker = threading.Thread(target=run_job, args=(settings, job_id, "first-worker"))
    worker.start()
    while worker.is_alive():
        job = client.get(f"{JOBS}/{job_id}").json()
        if (job["progress"] or {}).get("step", 0) > 0:
            assert client.post(f"{JOBS}/{job_id}/pause").status_code == 200
            break
        time.sleep(0.02)
    worker.join(timeout=120)
    paused = client.get(f"{JOBS}/{job_id}").json()
    assert paused["status"] == "paused"
    assert 0 < paused["progress"]["step"] < paused["progress"]["total_steps"]
    return int(paused["progress"]["step"])


def test_a_job_is_one_mlflow_run_across_a_pause(tmp_path: Path, models_dir: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with running_app(tmp_path / "data", models_dir, mlflow_tracking_uri=store,
                     heartbeat_seconds="0.05") as (client, settings):
        files = _files(client)
        job_id = _create(client, files, "tracked", PAUSABLE)
        paused_at = _pause_mid_training(client, settings, job_id)
        with session_scope(settings) as session:
            row = session.get_one(FineTuningJob, job_id)
            run_id, project_id = row.tracking_run_id, row.project_id
        assert run_id
        assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
        assert client.post(f"{JOBS}/{job_id}/resume").status_code == 200
        run_job(settings, job_id, "second-worker")
        job = client.get(f"{JOBS}/{job_id}").json()
        assert job["status"] == "succeeded", job["error"]

    mlflow = MlflowClient(store)
    experiment = mlflow.get_experiment_by_name("tuneforge")
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.run_name == job_id and run.info.status == "FINISHED"
    assert run.data.tags["tuneforge.project"] == project_id
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["batch_size"] == "1"
    assert params["n_epochs"] == "3" and params["seed"] == "7"
    assert params["eval_steps"] == str(job["hyperparameters"]["eval_steps"])  # "auto" resolved
    assert (params["base_model"], params["task"]) == (BASE_MODEL, "text-classification")
    assert params["training_file"] == files["training_file"]
    assert params["validation_file"] == files["validation_file"]

    losses = mlflow.get_metric_history(run_id, "train_loss")
    steps = [m.step for m in losses]
    assert len(steps) >= 5 and steps == sorted(steps)
    # Both attempts logged into the one run: its history spans the pause, to the last steps.
    assert min(steps) <= paused_at < max(steps)
    assert max(steps) > job["progress"]["total_steps"] - 10
    for key in ("learning_rate", "samples_per_s"):
        assert len(mlflow.get_metric_history(run_id, key)) == len(losses)
    evaluations = mlflow.get_metric_history(run_id, "eval_accuracy")
    assert len(evaluations) >= 3  # one per epoch
    assert all(0.0 <= m.value <= 1.0 for m in evaluations)

    assert run.data.tags["tuneforge.fine_tuned_model"] == job["fine_tuned_model"] \
        == "ft:tracked:v1"
    assert run.data.tags["tuneforge.version"] == "1"
    assert run.data.tags["lineage.job"] == job_id
    assert run.data.tags["lineage.base_model"] == BASE_MODEL
    assert files["training_file"] in run.data.tags["lineage.files"]
    assert run.data.metrics["macro_f1"] == pytest.approx(job["metrics"]["macro_f1"])


@pytest.fixture(scope="module")
def untracked_service(tmp_path_factory: pytest.TempPathFactory,
                      models_dir: Path) -> Iterator[tuple[TestClient, Settings, str]]:
    """The service with tracking pointed at a port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        # MLflow's own setting: fail at once instead of retrying for minutes (the default;
        # the job would not wait for that either, but this test would).
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with running_app(tmp_path_factory.mktemp("untracked") / "data", models_dir,
                         mlflow_tracking_uri=f"http://127.0.0.1:{closed_port}") as (c, s):
            yield c, s, upload(c, jsonl_bytes(sentiment_rows(40))).json()["id"]


def _run_to_success(client: TestClient, settings: Settings, file_id: str,
                    suffix: str) -> list[dict[str, Any]]:
    job_id = _create(client, {"training_file": file_id}, suffix, QUICK)
    run_job(settings, job_id, "test-worker")
    job = client.get(f"{JOBS}/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == f"ft:{suffix}:v1"
    return [e for e in _events(client, job_id) if e["level"] == "warn"]


def test_a_job_trains_when_the_mlflow_server_is_down(untracked_service: Any) -> None:
    client, settings, file_id = untracked_service
    warnings = _run_to_success(client, settings, file_id, "unreachable")
    assert len(warnings) == 1, warnings
    assert warnings[0]["message"].startswith("MLflow tracking is off")
    assert "Training goes on." in warnings[0]["message"]


def test_a_job_trains_when_mlflow_is_not_installed(untracked_service: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client, settings, file_id = untracked_service
    for name in [n for n in sys.modules if n == "mlflow" or n.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    warnings = _run_to_success(client, settings, file_id, "uninstalled")
    assert len(warnings) == 1, warnings
    assert "pip install 'tuneforge[mlflow]'" in warnings[0]["message"]
    # Without the setting, nothing tries to import it.
    untracked = settings.model_copy(update={"mlflow_tracking_uri": None})
    assert _run_to_success(client, untracked, file_id, "plain") == []
