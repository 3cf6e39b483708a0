"""The predict path over HTTP: batched answers equal sequential ones under concurrency, the
in-memory key and reference caches go stale for no longer than their settings, predict rows
are limited apart from control-plane requests, and loaded models stay within their budget."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.config import Settings
from app.db.models import ApiKey, ModelVersion
from app.db.session import session_scope
from app.ml.inference import serving_precision
from app.services import ratelimit, registry
from app.services.training_runs import run_job
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows
from tests.together import at_once

TTL = 1.0
# How late past its bound a change may be seen: a poll's own time on a busy machine.
SLACK = 1.5
VERSION_HEADER = "X-Tuneforge-Model-Version"
PRECISION_HEADER = "X-Tuneforge-Precision"
TEXTS = ["good film", "the plot was awful and boring", "happy", "sad movie", "fine",
         "the acting was really dull", "a nice and fun story", "ugly", "so very superb",
         "it is ok", "the movie was poor and sad", "love it"]


@dataclass
class Served:
    client: TestClient
    settings: Settings
    versions: list[str]


def train_versions(client: TestClient, settings: Settings, suffix: str, n: int) -> list[str]:
    file_id = upload_rows(client)["id"]
    versions = []
    for _ in range(n):
        response = client.post("/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL, "training_file": file_id, "suffix": suffix,
            "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
        assert response.status_code == 201, response.text
        run_job(settings, response.json()["id"], "test-worker")
        job = client.get(f"/v1/fine_tuning/jobs/{response.json()['id']}").json()
        assert job["status"] == "succeeded", job
        versions.append(job["fine_tuned_model"])
    return versions


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Served]:
    with running_app(tmp_path_factory.mktemp("serving") / "data", models_dir,
                     key_cache_seconds=str(TTL), version_cache_seconds=str(TTL)) as (c, s):
        yield Served(c, s, train_versions(c, s, "served", 2))


def predict(client: TestClient, model: str, inputs: Any,
            headers: dict[str, str] | None = None, **parameters: Any) -> httpx.Response:
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v1/models/{model}/predict", json=body, headers=headers)


def test_concurrent_callers_get_what_they_would_get_alone(served: Served) -> None:
    model = served.versions[0]
    requests = [TEXTS[i % len(TEXTS):][:1 + i % 4] for i in range(24)]
    alone = [predict(served.client, model, inputs).json() for inputs in requests]
    together = at_once([lambda inputs=inputs: predict(served.client, model, inputs).json()
                        for inputs in requests])
    for i, expected in enumerate(alone):
        assert len(together[i]) == len(expected)
        for got_row, want_row in zip(together[i], expected, strict=True):
            assert [item["label"] for item in got_row] == [item["label"] for item in want_row]
            for got, want in zip(got_row, want_row, strict=True):
                assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_the_answer_says_which_precision_served_it(served: Served) -> None:
    response = predict(served.client, served.versions[0], "good film")
    assert response.status_code == 200, response.text
    assert response.headers[PRECISION_HEADER] == serving_precision("auto")
    assert response.headers[VERSION_HEADER] == served.versions[0]


def _poll_until(check: Any, bound: float) -> float:
    """Seconds until check() holds; fails once `bound` plus slack has passed."""
    start = time.monotonic()
    while not check():
        elapsed = time.monotonic() - start
        assert elapsed <= bound + SLACK, f"still stale after {elapsed:.1f}s (bound {bound}s)"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_key_revoked_elsewhere_stops_working_within_key_cache_seconds(
        served: Served) -> None:
    created = served.client.post("/v1/admin/keys", json={"project": "default"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    auth = {"Authorization": f"Bearer {key}"}
    assert predict(served.client, served.versions[0], "good", auth).status_code == 200
    verified_at = time.monotonic()
    # Revoked as another API process would: in the database, not through this process.
    with session_scope(served.settings) as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=1))
        session.commit()
    still = predict(served.client, served.versions[0], "good", auth)
    # Trusted from memory until its time is up: the predict path asked no database.
    assert still.status_code == 200 or time.monotonic() - verified_at >= TTL
    _poll_until(lambda: predict(served.client, served.versions[0], "good", auth
                                ).status_code == 401, TTL)
    assert served.client.get("/v1/files", headers=auth).status_code == 401


def test_an_alias_moved_elsewhere_takes_effect_within_version_cache_seconds(
        served: Served) -> None:
    first, second = served.versions
    client = served.client
    assert client.put("/v1/registry/served/aliases/live", json={"version": "1"}
                      ).status_code == 200
    assert predict(client, "served@live", "good").headers[VERSION_HEADER] == first
    # Moved as another API process would: in the database, not through this process.
    with session_scope(served.settings) as session:
        project_id = session.scalar(select(ModelVersion.project_id).where(
            ModelVersion.id == first))
        assert project_id is not None
        registry.set_alias(session, project_id, "served", "live", "2")
    _poll_until(lambda: predict(client, "served@live", "good"
                                ).headers[VERSION_HEADER] == second, TTL)
    # Moved through this process: in effect at once.
    assert client.put("/v1/registry/served/aliases/live", json={"version": "1"}
                      ).status_code == 200
    assert predict(client, "served@live", "good").headers[VERSION_HEADER] == first


def _away_from_a_window_edge() -> None:
    if time.time() % ratelimit.WINDOW_SECONDS > ratelimit.WINDOW_SECONDS - 8:
        time.sleep(9)


def test_predict_rows_are_limited_apart_from_requests(tmp_path: Path,
                                                      models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, rate_limit_per_minute="4",
                     predict_rows_per_minute="5") as (client, settings):
        _away_from_a_window_edge()
        # Three control-plane requests: upload, create the job, read it back.
        (version,) = train_versions(client, settings, "limited", 1)
        assert predict(client, version, ["good", "bad", "fine"]).status_code == 200
        assert predict(client, version, ["happy", "sad"]).status_code == 200
        refused = predict(client, version, "ok")
        assert_error(refused, 429, "rate_limit_exceeded", None, "predict rows")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Predict spent rows, not requests: one control-plane request is left.
        assert client.get("/v1/files").status_code == 200
        assert client.get("/v1/files").status_code == 429


def test_loaded_models_stay_within_the_memory_budget(tmp_path: Path,
                                                     models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, model_cache_bytes="1") as (client, s):
        first, second = train_versions(client, s, "budget", 2)
        cache = client.app.state.model_cache  # type: ignore[attr-defined]
        assert predict(client, first, "good").status_code == 200
        assert predict(client, second, "good").status_code == 200
        # One byte holds no model: only the most recently loaded one stays.
        assert len(cache.keys()) == 1
        assert predict(client, first, "good").status_code == 200
        assert len(cache.keys()) == 1
