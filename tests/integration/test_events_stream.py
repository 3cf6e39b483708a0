"""A job's events as Server-Sent Events, while a worker trains it in-process."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.config import get_settings
from app.db.session import engine_for
from app.services.training_runs import run_job
from tests.integration.conftest import AUTH, BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows
from tests.live import free_port

JOBS = "/v1/fine_tuning/jobs"
QUICK = {"n_epochs": 1, "batch_size": 8, "learning_rate": 3e-3}
# The stream would end on its own after this long: far beyond the test's timeout, so only
# the job's end can end it here.
NEVER = "600"


def read_stream(client: TestClient, job_id: str, **headers: str) -> tuple[str, str]:
    """The whole stream (the test client hands it over once the server has closed it)."""
    with client.stream("GET", f"{JOBS}/{job_id}/events", params={"stream": "true"},
                       headers=headers) as response:
        assert response.status_code == 200, response.read()
        return response.headers["content-type"], response.read().decode()


def messages(body: str) -> list[dict[str, Any]]:
    """Each SSE message as {"id", "data"}; comments left out."""
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":"))
        if fields:
            found.append({"id": fields["id"], "data": json.loads(fields["data"])})
    return found


@pytest.mark.timeout(120)
def test_stream_follows_a_job_to_its_end_and_resumes(tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, events_poll_seconds="0.05",
                     events_keepalive_seconds="0.1", events_stream_seconds=NEVER,
                     heartbeat_seconds="0.05") as (client, _):
        file_id = upload_rows(client)["id"]
        job = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id,
                                      "hyperparameters": QUICK}).json()
        # The worker starts once the stream is open and quiet: a keep-alive comes meanwhile.
        worker = threading.Timer(0.5, run_job, args=(get_settings(), job["id"], "sse-worker"))
        worker.start()
        started = time.monotonic()
        content_type, body = read_stream(client, job["id"])
        worker.join(timeout=60)

        assert content_type.startswith("text/event-stream")
        streamed = messages(body)
        assert body.index(": keep-alive\n\n") > body.index(streamed[0]["id"])
        # The same events as the list, oldest first, each with its id as the SSE id.
        listed = client.get(f"{JOBS}/{job['id']}/events", params={"limit": 100}).json()["data"]
        assert [m["data"] for m in streamed] == listed[::-1]
        assert [m["id"] for m in streamed] == [m["data"]["id"] for m in streamed]
        assert streamed[0]["data"]["message"].startswith("Created fine-tuning job")
        assert streamed[-1]["data"]["message"].startswith("Job succeeded")
        assert client.get(f"{JOBS}/{job['id']}").json()["status"] == "succeeded"
        assert time.monotonic() - started < 60

        # Resuming after the third event sends exactly what followed it, then ends.
        _, rest = read_stream(client, job["id"], **{"Last-Event-ID": streamed[2]["id"]})
        assert messages(rest) == streamed[3:]
        _, nothing = read_stream(client, job["id"], **{"Last-Event-ID": streamed[-1]["id"]})
        assert messages(nothing) == []


def test_stream_refusals(client: TestClient) -> None:
    file_id = upload_rows(client)["id"]
    job = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id}).json()
    assert client.post(f"{JOBS}/{job['id']}/cancel").status_code == 200
    # A Last-Event-ID of no event of this job, a job of nobody's, a bad stream flag.
    with client.stream("GET", f"{JOBS}/{job['id']}/events", params={"stream": "true"},
                       headers={"Last-Event-ID": "ftevent-nope"}) as response:
        response.read()
        assert_error(response, 404, "not_found", "Last-Event-ID")
    response = client.get(f"{JOBS}/ftjob-nope/events", params={"stream": "true"})
    assert_error(response, 404, "not_found")
    response = client.get(f"{JOBS}/{job['id']}/events", params={"stream": "maybe"})
    assert_error(response, 422, param="stream")
    # The plain list is unchanged: no stream unless asked.
    page = client.get(f"{JOBS}/{job['id']}/events").json()
    assert page["object"] == "list" and page["data"][0]["message"] == "Job cancelled."


def test_spec_declares_the_event_stream(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][
        "/v1/fine_tuning/jobs/{job_id}/events"]["get"]
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    event = content["text/event-stream"]["schema"]
    assert event["required"] == ["id", "data"]
    assert event["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/EventPublic"}
    names = {p["name"] for p in operation["parameters"]}
    assert {"stream", "Last-Event-ID"} <= names
    assert "400" in operation["responses"]


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The app behind a real uvicorn server on loopback: a client there can hang up."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.timeout(60)
def test_a_client_that_hangs_up_stops_the_poll(tmp_path: Path, models_dir: Path) -> None:
    with running_app(tmp_path / "data", models_dir, events_poll_seconds="0.02",
                     events_keepalive_seconds="0.02", events_stream_seconds=NEVER
                     ) as (client, settings):
        file_id = upload_rows(client)["id"]
        job = client.post(JOBS, json={"model": BASE_MODEL, "training_file": file_id}).json()
        reads = count_event_reads(settings.resolved_database_url)
        with served(client.app) as base_url, httpx.Client(base_url=base_url,
                                                         headers=AUTH) as live:
            with live.stream("GET", f"{JOBS}/{job['id']}/events",
                             params={"stream": "true"}) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("id: ftevent-")
                # A queued job: the stream keeps polling, and keeps the connection alive.
                listening = time.monotonic()
                while time.monotonic() - listening < 0.3:
                    line = next(lines)
                    assert line in ("", ": keep-alive") or line.startswith("data: "), line
                assert reads() > 3
            # Hung up: within a poll or two the stream stops reading.
            time.sleep(0.2)
            after_hang_up = reads()
            time.sleep(0.5)
            assert reads() == after_hang_up


def count_event_reads(database_url: str) -> Callable[[], int]:
    """How many times the database has been asked for a job's events from now on."""
    seen = [0]

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM job_events" in statement:
            seen[0] += 1

    event.listen(engine_for(database_url), "before_cursor_execute", count)
    return lambda: seen[0]
