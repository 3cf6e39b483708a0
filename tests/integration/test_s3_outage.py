"""A bucket that cannot be reached is an outage, not a server fault: the store raises
StorageUnavailable and the API answers 503 with Retry-After, never a 500."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import get_settings
from app.errors import StorageUnavailable
from app.services.training_runs import run_job
from app.storage.s3 import S3ArtifactStore
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import jsonl_bytes, upload
from tests.s3 import S3Bucket
from tests.unit.tiny_model import sentiment_rows


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on a loopback port nobody listens on, and no retries to wait through."""
    endpoint = _closed_port_url()
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "key",
                        "AWS_SECRET_ACCESS_KEY": "secret", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    yield endpoint


def test_an_unreachable_bucket_is_storage_unavailable(tmp_path: Path,
                                                      closed_endpoint: str) -> None:
    store = S3ArtifactStore.from_url("s3://artifacts/tuneforge", tmp_path / "cache")
    source = tmp_path / "upload.jsonl"
    source.write_text('{"text": "hi", "label": "a"}\n')
    for attempt in (lambda: store.put_file(source, "files/abc"),
                    lambda: store.local_path("versions/abc"),
                    lambda: store.chunks("files/abc"),
                    lambda: store.delete("files/abc")):
        with pytest.raises(StorageUnavailable):
            attempt()
    assert source.exists()  # an upload that did not happen keeps its source


def test_the_api_answers_503_while_the_bucket_is_down(tmp_path: Path, models_dir: Path,
                                                      closed_endpoint: str) -> None:
    with running_app(tmp_path / "data", models_dir,
                     artifact_url="s3://artifacts/tuneforge") as (client, _):
        response = upload(client, jsonl_bytes(sentiment_rows(20)))
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert client.get("/v1/files").json()["data"] == []  # nothing half-stored


def test_a_worker_that_cannot_reach_the_bucket_gives_the_job_back(
        tmp_path: Path, models_dir: Path, s3_bucket: S3Bucket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The job's file is in the bucket; the worker's attempt then finds the bucket gone. The
    # job is re-queued with a warning, not failed, and trains once the bucket is back.
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    with running_app(tmp_path / "data", models_dir, artifact_url=s3_bucket.url) as (client, _):
        training = upload(client, jsonl_bytes(sentiment_rows(20))).json()["id"]
        created = client.post("/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL, "training_file": training, "seed": 1,
            "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        with monkeypatch.context() as outage:
            outage.setenv("AWS_ENDPOINT_URL", _closed_port_url())
            outage.setenv("AWS_MAX_ATTEMPTS", "1")
            run_job(get_settings(), job_id, "cut-off-worker")
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["error"] is None, job
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
        assert any(e["level"] == "warn" and "artifact store is unavailable" in e["message"]
                   for e in events), events
        run_job(get_settings(), job_id, "worker")
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "succeeded"
