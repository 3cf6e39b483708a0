"""Hyperparameter search as a job option: each trial a recorded child run, the best trial's
checkpoint the version.

Jobs are trained in-process by run_job (what the Celery task runs) on the tiny BERT; the
worker-kill case, with real processes, is in tests/faults/test_search_resume.py.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.db.models import FineTuningJob
from app.db.session import session_scope
from app.services.training_runs import run_job
from app.storage.artifacts import artifact_store
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import jsonl_bytes, upload
from tests.unit.tiny_model import sentiment_rows

JOBS = "/v1/fine_tuning/jobs"
TRIALS = 3
SEARCH = {"trials": TRIALS, "space": {"learning_rate": [1e-4, 3e-3], "n_epochs": [1, 2]}}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory,
            models_dir: Path) -> Iterator[tuple[TestClient, Settings, dict[str, str]]]:
    with running_app(tmp_path_factory.mktemp("search") / "data", models_dir) as (client, s):
        files = {"training_file": upload(client, jsonl_bytes(sentiment_rows(40)),
                                         "train.jsonl").json()["id"],
                 "validation_file": upload(client, jsonl_bytes(sentiment_rows(60)[40:]),
                                           "dev.jsonl").json()["id"]}
        yield client, s, files


def _create(client: TestClient, files: dict[str, str], **hyperparameters: Any) -> str:
    response = client.post(JOBS, json={"model": BASE_MODEL, "suffix": "searched", "seed": 3,
                                       "hyperparameters": {"batch_size": 8, **hyperparameters},
                                       **files})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _trials(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"{JOBS}/{job_id}/trials")
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    events = client.get(f"{JOBS}/{job_id}/events", params={"limit": 100}).json()["data"]
    return list(reversed(events))


def test_a_search_trains_each_trial_and_the_best_becomes_the_version(service: Any) -> None:
    client, settings, files = service
    job_id = _create(client, files, search=SEARCH)
    run_job(get_settings(), job_id, "test-worker")
    job = client.get(f"{JOBS}/{job_id}").json()
    assert job["status"] == "succeeded", job

    trials = _trials(client, job_id)
    assert [t["number"] for t in trials] == list(range(TRIALS))
    assert all(t["status"] == "succeeded" and t["metrics"] for t in trials), trials
    for trial in trials:
        low, high = SEARCH["space"]["learning_rate"]
        assert low <= trial["params"]["learning_rate"] <= high
        assert trial["hyperparameters"]["batch_size"] == 8  # fixed: shared by every trial
    best = max(trials, key=lambda t: (t["metrics"]["macro_f1"], -t["number"]))
    # The job records the winner's settings and what the search found.
    assert job["hyperparameters"]["learning_rate"] == best["params"]["learning_rate"]
    assert job["hyperparameters"]["search"]["best_trial"] == best["number"]
    assert job["hyperparameters"]["search"]["trials"] == TRIALS
    version = client.get(f"/v1/registry/{job['fine_tuned_model'].split(':')[1]}").json()
    assert version["versions"][-1]["metrics"]["macro_f1"] == best["metrics"]["macro_f1"]

    messages = [e["message"] for e in _events(client, job_id)]
    assert sum(m.startswith("Search: 3 trials over learning_rate") for m in messages) == 1
    for number in range(1, TRIALS + 1):
        assert sum(m.startswith(f"Trial {number} of {TRIALS} started") for m in messages) == 1
        assert any(m.startswith(f"Trial {number}/{TRIALS}: Evaluation at step")
                   for m in messages), messages
    predicted = client.post(f"/v1/models/{job['fine_tuned_model']}/predict",
                            json={"inputs": "a good film"})
    assert predicted.status_code == 200, predicted.text
    # Only the winner's folder is kept, with its one best checkpoint.
    with session_scope(settings) as session:
        key = session.get_one(FineTuningJob, job_id).artifact_key
    job_folder = artifact_store(settings.resolved_artifact_dir).local_path(key)
    assert [p.name for p in job_folder.glob("trial-*")] == [f"trial-{best['number']}"]
    assert len(list(job_folder.glob("trial-*/checkpoint-*"))) == 1


def test_a_value_both_fixed_and_searched_is_refused(service: Any) -> None:
    client, _, files = service
    response = client.post(JOBS, json={"model": BASE_MODEL, **files, "hyperparameters": {
        "learning_rate": 1e-3, "search": {"trials": 2, "space": {"learning_rate": [1e-4, 1e-3]}}}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "hyperparameters"
    assert "learning_rate is both fixed and in search.space" in error["message"]


def test_a_job_without_search_has_no_trials(service: Any) -> None:
    client, _, files = service
    job_id = _create(client, files, n_epochs=1)
    assert _trials(client, job_id) == []
    assert client.get(f"{JOBS}/ftjob-nope/trials").status_code == 404
