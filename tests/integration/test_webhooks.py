"""Webhooks: registration, signed deliveries to a real receiver on loopback, retries,
restarts, SSRF refusals and project scoping."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from app.config import Settings
from app.db.migrate import upgrade_database
from app.db.models import Project, WebhookDelivery, WebhookEndpoint
from app.db.session import engine_for, session_scope
from app.ids import now
from app.services.webhook_delivery import _claim, claim_due
from app.services.webhooks import new_secret
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, jsonl_bytes
from tests.unit.tiny_model import sentiment_rows

JOBS, HOOKS = "/v1/fine_tuning/jobs", "/v1/webhooks"
FAST = {"webhook_allow_private": "true", "webhook_poll_seconds": "0.05",
        "webhook_retry_seconds": "0.2"}


class Receiver:
    """A webhook receiver on loopback that answers with the statuses it is given in turn
    (then 200), and keeps what it was sent."""

    def __init__(self, statuses: tuple[int, ...] = ()):
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()},
                                          body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


def register(client: TestClient, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post(HOOKS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def cancelled_job(client: TestClient, headers: dict[str, str] | None = None) -> str:
    """A job created and cancelled at once: the quickest real outcome."""
    file_id = client.post("/v1/files", data={"purpose": "fine-tune"}, headers=headers, files={
        "file": ("train.jsonl", jsonl_bytes(sentiment_rows(40)), "application/jsonl")}).json()["id"]
    job = client.post(JOBS, headers=headers,
                      json={"model": BASE_MODEL, "training_file": file_id}).json()
    assert client.post(f"{JOBS}/{job['id']}/cancel", headers=headers).status_code == 200
    job_id: str = job["id"]
    return job_id


def settled(client: TestClient, webhook_id: str, count: int = 1,
            timeout: float = 20) -> list[dict[str, Any]]:
    """The endpoint's deliveries once `count` of them are no longer pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries: list[dict[str, Any]] = client.get(
            f"{HOOKS}/{webhook_id}/deliveries").json()["data"]
        if len(deliveries) >= count and all(d["status"] != "pending" for d in deliveries):
            return deliveries
        time.sleep(0.05)
    raise AssertionError(f"deliveries of {webhook_id} still pending after {timeout}s")


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, as a receiver writes it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", candidate)
               for candidate in headers["webhook-signature"].split())


def test_signed_delivery_of_a_job_outcome(tmp_path: Path, models_dir: Path,
                                          receiver: Receiver) -> None:
    with running_app(tmp_path / "data", models_dir, **FAST) as (client, _):
        hook = register(client, receiver.url)
        uninterested = register(client, receiver.url, events=["fine_tuning.job.succeeded"])
        assert hook["secret"].startswith("whsec_") and hook["events"] is None
        # The secret is shown once.
        assert "secret" not in client.get(f"{HOOKS}/{hook['id']}").json()
        assert all("secret" not in h for h in client.get(HOOKS).json()["data"])

        job_id = cancelled_job(client)
        delivery, = settled(client, hook["id"])
        assert len(receiver.received) == 1
        headers, body = receiver.received[0]
        assert verify(hook["secret"], headers, body)
        assert not verify(uninterested["secret"], headers, body)
        assert not verify(hook["secret"], headers, body.replace(b"cancelled", b"succeeded"))
        event = json.loads(body)
        assert event["type"] == "fine_tuning.job.cancelled" and event["object"] == "event"
        assert event["data"]["id"] == job_id and event["id"] == headers["webhook-id"]
        assert event["id"].startswith("evt_")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        # The openai SDK's own verifier accepts it, as an event of its own type.
        unwrapped = OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=hook["secret"])
        assert unwrapped.type == "fine_tuning.job.cancelled" and unwrapped.data.id == job_id
        assert delivery["status"] == "succeeded" and delivery["event_id"] == event["id"]
        assert [a["status_code"] for a in delivery["attempts"]] == [200]
        # The filtered endpoint was owed nothing.
        assert client.get(f"{HOOKS}/{uninterested['id']}/deliveries").json()["data"] == []


def test_failures_are_retried_with_backoff(tmp_path: Path, models_dir: Path) -> None:
    flaky, down = Receiver((500, 500)), Receiver((503,) * 10)
    try:
        with running_app(tmp_path / "data", models_dir, webhook_max_attempts="3",
                         **FAST) as (client, _):
            recovering, failing = register(client, flaky.url), register(client, down.url)
            cancelled_job(client)
            delivery, = settled(client, recovering["id"])
            given_up, = settled(client, failing["id"])
    finally:
        flaky.close()
        down.close()
    assert delivery["status"] == "succeeded"
    attempts = delivery["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    # Backoff doubles from webhook_retry_seconds (0.2 s): waits of >= 0.2 s, then >= 0.4 s.
    starts = [a["started_at"] for a in attempts]
    assert starts[1] - starts[0] >= 0.2 and starts[2] - starts[1] >= 0.4
    assert all(a["duration_ms"] >= 0 and a["error"] is None for a in attempts)
    # Every attempt carried the same event and body.
    assert len({body for _, body in flaky.received}) == 1
    assert given_up["status"] == "failed" and given_up["next_attempt_at"] is None
    assert [a["status_code"] for a in given_up["attempts"]] == [503, 503, 503]


def test_a_pending_delivery_survives_a_restart(tmp_path: Path, models_dir: Path,
                                               receiver: Receiver) -> None:
    # The first process's dispatcher would wait an hour before its first round.
    with running_app(tmp_path / "data", models_dir, **{**FAST, "webhook_poll_seconds": "3600"}
                     ) as (client, _):
        hook = register(client, receiver.url)
        cancelled_job(client)
        pending, = client.get(f"{HOOKS}/{hook['id']}/deliveries").json()["data"]
        assert pending["status"] == "pending" and pending["attempts"] == []
    assert receiver.received == []
    with running_app(tmp_path / "data", models_dir, **FAST) as (client, _):
        delivered, = settled(client, hook["id"])
    assert delivered["id"] == pending["id"] and delivered["status"] == "succeeded"
    assert len(receiver.received) == 1
    assert verify(hook["secret"], *receiver.received[0])


@pytest.mark.parametrize(("url", "code"), [
    ("http://127.0.0.1:8080/hook", "webhook_url_forbidden"),
    ("http://10.1.2.3/hook", "webhook_url_forbidden"),
    ("http://169.254.169.254/latest/meta-data", "webhook_url_forbidden"),
    ("http://[::1]/hook", "webhook_url_forbidden"),
    ("http://localhost:9000/hook", "webhook_url_forbidden"),
    ("http://0.0.0.0/hook", "webhook_url_forbidden"),
    ("ftp://example.com/hook", None),
    ("http://:80/hook", "webhook_url_invalid"),
    ("https://\u00e65[t\u0014\u00c2&\u001bL", "webhook_url_invalid"),
    ("https://host.invalid/hook", "webhook_url_unresolvable"),
])
def test_private_destinations_are_refused(client: TestClient, url: str,
                                          code: str | None) -> None:
    assert_error(client.post(HOOKS, json={"url": url}), 422, code, "url")
    assert client.get(HOOKS).json()["data"] == []


def test_destination_is_checked_again_at_delivery(tmp_path: Path, models_dir: Path,
                                                  receiver: Receiver) -> None:
    with running_app(tmp_path / "data", models_dir, **FAST) as (client, _):
        hook = register(client, receiver.url)
    # The same endpoint, once private destinations are no longer allowed.
    with running_app(tmp_path / "data", models_dir, webhook_max_attempts="1",
                     webhook_poll_seconds="0.05") as (client, _):
        cancelled_job(client)
        refused, = settled(client, hook["id"])
    assert receiver.received == []
    assert refused["status"] == "failed"
    attempt, = refused["attempts"]
    assert attempt["status_code"] is None and "127.0.0.1" in attempt["error"]


def test_webhooks_are_scoped_to_their_project(tmp_path: Path, models_dir: Path,
                                              receiver: Receiver) -> None:
    with running_app(tmp_path / "data", models_dir, **FAST) as (client, _):
        scoped_to_projects(client, register(client, receiver.url))


def scoped_to_projects(client: TestClient, hook: dict[str, Any]) -> None:
    key = client.post("/v1/admin/keys", json={"project": "other"}).json()["key"]
    other = {"Authorization": f"Bearer {key}"}
    for method, path in [("GET", f"{HOOKS}/{hook['id']}"), ("DELETE", f"{HOOKS}/{hook['id']}"),
                         ("GET", f"{HOOKS}/{hook['id']}/deliveries")]:
        assert_error(client.request(method, path, headers=other), 404, "not_found", "webhook_id")
    assert client.get(HOOKS, headers=other).json()["data"] == []
    # Another project's job owes this project's endpoint nothing.
    cancelled_job(client, headers=other)
    assert client.get(f"{HOOKS}/{hook['id']}/deliveries").json()["data"] == []
    # Its own project deletes it; then it is gone.
    deleted = client.delete(f"{HOOKS}/{hook['id']}").json()
    assert deleted == {"id": hook["id"], "object": "webhook_endpoint", "deleted": True}
    assert_error(client.get(f"{HOOKS}/{hook['id']}"), 404, "not_found", "webhook_id")


@pytest.mark.parametrize("body", [
    {"url": "https://example.com/hook", "events": ["fine_tuning.job.exploded"]},
    {"url": "https://example.com/hook", "events": []},
    {"url": "https://example.com/hook", "secret": "mine"},
    {"events": ["fine_tuning.job.failed"]},
])
def test_bad_registrations(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post(HOOKS, json=body)
    assert_error(response, 422)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    configured = Settings(data_dir=tmp_path / "data", database_url=url)
    (tmp_path / "data").mkdir()
    upgrade_database(configured)
    yield configured
    engine_for(configured.resolved_database_url).dispose()


def test_a_delivery_is_claimed_once(database: Settings) -> None:
    """Two dispatchers read the same due delivery; only the first claim takes it."""
    with session_scope(database) as session:
        session.add(Project(id="proj-claims", name="claims", created_at=now()))
        session.flush()
        session.add(WebhookEndpoint(id="wh-claims", project_id="proj-claims",
                                    url="https://example.com/hook", events=None,
                                    secret=new_secret(), created_at=now()))
        session.flush()
        session.add(WebhookDelivery(id="whdel-claims", endpoint_id="wh-claims",
                                    event_id="evt_claims", event_type="fine_tuning.job.failed",
                                    payload="{}", status="pending", attempt_count=0,
                                    next_attempt_at=now() - 1, created_at=now()))
    with session_scope(database) as late:
        seen = late.get(WebhookDelivery, "whdel-claims")
        assert seen is not None
        with session_scope(database) as first:
            claimed = claim_due(first, lease_seconds=60)
        assert [c.delivery_id for c in claimed] == ["whdel-claims"]
        # The late dispatcher acts on what it read before the first one's claim.
        assert not _claim(late, seen, now() + 60)
    with session_scope(database) as again:
        assert claim_due(again, lease_seconds=60) == []  # leased, so not due
