"""GET /metrics on the real app: requests counted by route template and status, the predict
path's passes and model cache, figures of other processes on the host added up, and job
figures read from the database.

prometheus_client is imported only inside functions here: it chooses its multiprocess mode
on first import, which must come after the app has named the folder."""

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.config import Settings
from app.db.models import FineTuningJob
from app.db.session import session_scope
from app.domain.lifecycle import record_event
from app.observability.folder import FOLDER_VARIABLE, use_metrics_folder
from app.services.leases import claim_job
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import upload_rows
from tests.live import REPO_ROOT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SUFFIX = "metered"


@dataclass
class Metered:
    client: TestClient
    settings: Settings
    file_id: str
    version: str


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Metered]:
    with running_app(tmp_path_factory.mktemp("metrics") / "data", models_dir) as (client,
                                                                                   settings):
        file_id = upload_rows(client)["id"]
        job_id = create_job(client, file_id)
        run_job(settings, job_id, "test-worker")
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        yield Metered(client, settings, file_id, job["fine_tuned_model"])


def create_job(client: TestClient, file_id: str) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL, "training_file": file_id, "suffix": SUFFIX,
        "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def scrape(client: TestClient) -> tuple[str, Samples]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(response.text)
               for s in family.samples}
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_and_predicts_are_counted_by_route_template(metered: Metered) -> None:
    client = metered.client
    _, before = scrape(client)
    assert client.get(f"/v1/files/{metered.file_id}").status_code == 200
    assert client.get("/v1/files/file-000000000000000000000000").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    for inputs in (["good film", "sad movie", "fine"], ["ugly"]):
        response = client.post(f"/v1/models/{metered.version}/predict",
                               json={"inputs": inputs})
        assert response.status_code == 200, response.text
    text, after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    file_route = {"method": "GET", "route": "/v1/files/{file_id}"}
    assert delta("tuneforge_http_requests_total", **file_route, status="200") == 1
    assert delta("tuneforge_http_requests_total", **file_route, status="404") == 1
    assert delta("tuneforge_http_requests_total", method="GET", route="unmatched",
                 status="404") == 1
    predict_route = {"method": "POST", "route": "/v1/models/{model_id}/predict"}
    assert delta("tuneforge_http_requests_total", **predict_route, status="200") == 2
    assert delta("tuneforge_http_request_duration_seconds_count", **predict_route) == 2
    assert delta("tuneforge_http_request_duration_seconds_bucket", **predict_route,
                 le="+Inf") == 2
    assert delta("tuneforge_predict_rows_total") == 4
    assert delta("tuneforge_predict_batch_rows_sum") == 4
    assert delta("tuneforge_predict_queue_wait_seconds_count") == 2
    # The first predict loaded the version, the second found it loaded.
    assert delta("tuneforge_model_cache_loads_total") == 1
    assert delta("tuneforge_model_cache_hits_total") == 1
    assert value(after, "tuneforge_model_cache_bytes") > 0
    # No id, name or raw path in any label.
    for secret in (metered.file_id, metered.version, SUFFIX, "/no/such/path"):
        assert secret not in text


def test_metrics_are_kept_out_of_the_api_spec(metered: Metered) -> None:
    assert "/metrics" not in metered.client.get("/openapi.json").json()["paths"]


def test_another_process_on_the_host_is_added_up(metered: Metered) -> None:
    client = metered.client
    client.post(f"/v1/models/{metered.version}/predict", json={"inputs": "good"})
    use_metrics_folder(metered.settings)  # no exited process's bytes are left to count
    _, before = scrape(client)
    assert value(before, "tuneforge_model_cache_loads_total") >= 1  # this process's own
    own_bytes = value(before, "tuneforge_model_cache_bytes")
    assert own_bytes > 0
    record_in_another_process(loads=7, held_bytes=1000)
    _, after = scrape(client)
    assert value(after, "tuneforge_model_cache_loads_total") == \
        value(before, "tuneforge_model_cache_loads_total") + 7
    assert value(after, "tuneforge_model_cache_bytes") == own_bytes + 1000
    # That process has exited: the next process to start drops what only a live process
    # reports (bytes held) and keeps its counts.
    use_metrics_folder(metered.settings)
    _, swept = scrape(client)
    assert value(swept, "tuneforge_model_cache_bytes") == own_bytes
    assert value(swept, "tuneforge_model_cache_loads_total") == \
        value(after, "tuneforge_model_cache_loads_total")


def record_in_another_process(loads: int, held_bytes: int) -> None:
    program = ("from app.observability.instruments import MODEL_CACHE_BYTES, "
               "MODEL_CACHE_LOADS\n"
               f"MODEL_CACHE_LOADS.inc({loads})\n"
               f"MODEL_CACHE_BYTES.set({held_bytes})\n")
    env = {**os.environ, FOLDER_VARIABLE: os.environ[FOLDER_VARIABLE]}
    subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, env=env, check=True,
                   timeout=60)


def test_job_figures_are_read_from_the_database(metered: Metered) -> None:
    client, settings = metered.client, metered.settings
    queued = [create_job(client, metered.file_id) for _ in range(3)]
    assert client.post(f"/v1/fine_tuning/jobs/{queued[0]}/cancel").status_code == 200
    running = queued[1]
    assert claim_job(settings, running, "host-a:42") is not None
    with session_scope(settings) as session:
        # The worker last renewed its lease 30 seconds ago, and reported its speed.
        session.execute(update(FineTuningJob).where(FineTuningJob.id == running)
                        .values(lease_expires_at=FineTuningJob.lease_expires_at - 30))
        record_event(session, running, "Step 5/10", type="metrics",
                     data={"step": 5, "samples_per_s": 12.5})
    _, samples = scrape(client)
    statuses = {"queued": 1, "running": 1, "succeeded": 1, "cancelled": 1, "failed": 0,
                "paused": 0}
    for status, count in statuses.items():
        assert value(samples, "tuneforge_jobs", status=status) == count, status
    assert value(samples, "tuneforge_job_queue_depth") == 1
    assert value(samples, "tuneforge_database_up") == 1
    # Only the trained job both started and finished; the cancelled one never started.
    assert value(samples, "tuneforge_job_duration_seconds_count", status="succeeded") == 1
    assert value(samples, "tuneforge_job_duration_seconds_count", status="cancelled") == 0
    assert value(samples, "tuneforge_job_duration_seconds_bucket", status="succeeded",
                 le="+Inf") == 1
    labels = {"job": running, "worker": "host-a:42"}
    assert value(samples, "tuneforge_job_training_samples_per_second", **labels) == 12.5
    age = value(samples, "tuneforge_job_heartbeat_age_seconds", **labels)
    assert 30 <= age < 60, age


def test_metrics_can_be_turned_off(tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, metrics_enabled="false") as (client, _):
        assert client.get("/metrics").status_code == 404
