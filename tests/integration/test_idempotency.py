"""Idempotency-Key on job creation, on SQLite and on PostgreSQL: an empty key is refused, a
retried create returns the first job, and two creates racing with one key make one job."""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app.db.models import FineTuningJob
from app.db.session import session_scope
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import assert_error, upload_rows

JOBS = "/v1/fine_tuning/jobs"
KEY = "Idempotency-Key"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request: pytest.FixtureRequest, tmp_path: Path,
            models_dir: Path) -> Iterator[tuple[TestClient, Any]]:
    env = {}
    if request.param == "postgres":
        env["database_url"] = request.getfixturevalue("postgres_url")
    with running_app(tmp_path / "data", models_dir, **env) as pair:
        yield pair


@pytest.fixture
def body(service: tuple[TestClient, Any]) -> dict[str, Any]:
    client, _ = service
    return {"model": BASE_MODEL, "training_file": upload_rows(client)["id"]}


def writes_a_job(session: Session) -> bool:
    return any(isinstance(row, FineTuningJob) for row in session.new)


def job_count(service: tuple[TestClient, Any]) -> int:
    with session_scope(service[1]) as session:
        return session.scalar(select(func.count()).select_from(FineTuningJob)) or 0


@pytest.mark.parametrize("value", ["", " ", "\t \t"])
def test_an_empty_or_blank_key_is_refused_every_time(service: tuple[TestClient, Any],
                                                     body: dict[str, Any], value: str) -> None:
    client, _ = service
    for _ in range(2):
        # The same answer the second time: the first refusal stored nothing.
        assert_error(client.post(JOBS, json=body, headers={KEY: value}), 400, "invalid_header",
                     KEY)
    assert job_count(service) == 0


def test_a_key_over_200_characters_is_refused(service: tuple[TestClient, Any],
                                              body: dict[str, Any]) -> None:
    client, _ = service
    assert_error(client.post(JOBS, json=body, headers={KEY: "k" * 201}), 400, "invalid_header",
                 KEY)
    assert client.post(JOBS, json=body, headers={KEY: "k" * 200}).status_code == 201


def test_a_retry_returns_the_first_job(service: tuple[TestClient, Any],
                                       body: dict[str, Any]) -> None:
    client, _ = service
    first = client.post(JOBS, json=body, headers={KEY: "retry-1"})
    again = client.post(JOBS, json=body, headers={KEY: "retry-1"})
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    assert job_count(service) == 1


def test_racing_creates_with_one_key_make_one_job(service: tuple[TestClient, Any],
                                                  body: dict[str, Any]) -> None:
    """The second request looks for the key while the first has written its row but not yet
    committed it, so it takes the unique constraint's path, not the simple replay."""
    client, _ = service
    first_flushed, second_writing = threading.Event(), threading.Event()
    first_thread: list[int] = []

    def hold_first_commit(session: Session, _context: Any) -> None:
        if not first_thread and writes_a_job(session):
            first_thread.append(threading.get_ident())
            first_flushed.set()
            # Wait until the second request has looked up the key and is writing its row.
            assert second_writing.wait(30), "the second request never reached its insert"

    def mark_second(session: Session, _context: Any, _instances: Any) -> None:
        if first_thread and threading.get_ident() != first_thread[0] and writes_a_job(session):
            second_writing.set()

    def create() -> httpx.Response:
        return client.post(JOBS, json=body, headers={KEY: "race-1"})

    def second() -> httpx.Response:
        assert first_flushed.wait(30), "the first request never wrote its row"
        return create()

    event.listen(Session, "after_flush", hold_first_commit)
    event.listen(Session, "before_flush", mark_second)
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = [future.result(timeout=90)
                       for future in (pool.submit(create), pool.submit(second))]
    finally:
        event.remove(Session, "after_flush", hold_first_commit)
        event.remove(Session, "before_flush", mark_second)
    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([200, 201], [201, 409]), [a.text for a in answers]
    created = next(a for a in answers if a.status_code == 201).json()
    for answer in answers:
        if answer.status_code == 200:
            assert answer.json()["id"] == created["id"]
        if answer.status_code == 409:
            assert_error(answer, 409, "idempotency_key_in_use", KEY)
    assert job_count(service) == 1


def test_many_simultaneous_creates_with_one_key(service: tuple[TestClient, Any],
                                                body: dict[str, Any]) -> None:
    client, _ = service
    start = threading.Barrier(6)

    def create(_: int) -> httpx.Response:
        start.wait(30)
        return client.post(JOBS, json=body, headers={KEY: "burst-1"})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(create, range(6)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}, statuses
    assert len({a.json()["id"] for a in answers if a.status_code in (200, 201)}) == 1
    assert job_count(service) == 1
