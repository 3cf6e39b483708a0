"""Worker queues at the front door and on the broker: a job naming a queue the deployment does
not offer is refused, and a job's train message lands on its queue, as sent at creation and
again by the sweep (which also re-sends jobs whose worker was lost). Read from the embedded
broker's own message files."""

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.services.outbox import sweep_once
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows

JOBS = "/v1/fine_tuning/jobs"


def job_body(client: TestClient, **extra: Any) -> dict[str, Any]:
    return {"model": BASE_MODEL, "training_file": upload_rows(client)["id"], **extra}


def sent_messages(settings: Settings) -> Counter[tuple[str, str]]:
    """(job id, queue) of every train message waiting on the filesystem broker."""
    sent: Counter[tuple[str, str]] = Counter()
    for path in (settings.broker_folder / "queue").glob("*.msg"):
        queue = path.name.split(".")[1]  # <time>_<uuid>.<queue>.msg
        message = json.loads(path.read_bytes())
        args = json.loads(base64.b64decode(message["body"]))[0]
        sent[(args[0], queue)] += 1
    return sent


def test_a_queue_the_deployment_does_not_offer_is_refused_and_nothing_is_kept(
        tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir) as (client, settings):
        body = job_body(client, compute={"queue": "gpu"})
        assert_error(client.post(JOBS, json=body), 422, "unknown_queue", "compute.queue",
                     "'gpu'", "offers default")
        assert client.get(JOBS).json()["data"] == []
        assert sent_messages(settings) == Counter()


def test_each_job_is_sent_to_its_queue_at_creation_and_by_the_sweep(
        tmp_path: Path, models_dir: Path) -> None:
    # Every queued job is due for the sweep at once.
    with running_app(tmp_path / "data", models_dir, queues="cpu,gpu",
                     dispatch_retry_seconds="0", redispatch_seconds="0") as (client, settings):
        on_gpu = client.post(JOBS, json=job_body(client, compute={"queue": "gpu"})).json()
        plain = client.post(JOBS, json=job_body(client)).json()
        assert on_gpu["compute"]["queue"] == "gpu", on_gpu
        at_creation = Counter({(on_gpu["id"], "gpu"): 1, (plain["id"], "cpu"): 1})
        assert sent_messages(settings) == at_creation
        sweep_once(settings, client.app.state.send)  # type: ignore[attr-defined]
        assert sent_messages(settings) == at_creation + at_creation
        # The spec lists the queues this deployment offers, so clients see them.
        queue = client.get("/openapi.json").json()["components"]["schemas"]["ComputeIn"][
            "properties"]["queue"]
        assert {"type": "string", "enum": ["cpu", "gpu"]}.items() <= queue["anyOf"][0].items()


@pytest.mark.parametrize(("queues", "worker_queues", "default", "listened"), [
    (None, None, "default", ["default"]),
    ("cpu,gpu", None, "cpu", ["cpu", "gpu"]),
    (" gpu , cpu ", "gpu", "gpu", ["gpu"]),
    ("cpu", "", "cpu", ["cpu"]),  # set but empty: as if unset
])
def test_queue_settings_read_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, queues: str | None, worker_queues: str | None,
        default: str, listened: list[str]) -> None:
    for name, value in (("TUNEFORGE_QUEUES", queues), ("TUNEFORGE_WORKER_QUEUES", worker_queues)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.default_queue, settings.listened_queues) == (default, listened)


@pytest.mark.parametrize("queues", ["", "GPU", "cpu;gpu", "a" * 33])
def test_a_queue_name_a_job_could_not_name_is_refused_at_start(
        monkeypatch: pytest.MonkeyPatch, queues: str) -> None:
    monkeypatch.setenv("TUNEFORGE_QUEUES", queues)
    with pytest.raises(ValidationError, match="queue names"):
        Settings()
