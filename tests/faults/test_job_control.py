"""The embedded deployment (`tuneforge serve`: SQLite, filesystem broker, one supervised
worker) under control requests and load: a torn checkpoint left behind before a resume,
how fast a cancel lands, and SQLite under many concurrent readers and a writer.

The three tests share one service (one start, one worker boot); each uses its own job and
waits for it to end before the next test runs.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ml.checkpoints import MANIFEST
from tests.faults.conftest import (
    HEARTBEAT_S,
    JobSpec,
    assert_attempts_sequential,
    create_job,
    fault_env,
    figures,
    history,
    step_seconds,
    upload_files,
    versions_of,
    wait_status,
    wait_training_past,
)
from tests.live import LiveService, expect, jsonl_bytes, live_service
from tests.unit.tiny_model import sentiment_rows

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]
JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveService]:
    # The pollers below send thousands of requests a minute with one key.
    env = fault_env(models_dir, TUNEFORGE_RATE_LIMIT_PER_MINUTE="10000000")
    with live_service(tmp_path_factory.mktemp("job-control"), env_overrides=env) as live:
        yield live


@pytest.fixture
def client(service: LiveService) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


def artifact_folder(service: LiveService, job_id: str) -> Path:
    """Where the job's checkpoints live: data/artifacts/<the job's artifact key>."""
    database = service.data_dir / "tuneforge.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        row = connection.execute("SELECT artifact_key FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
    assert row, f"job {job_id} not in {database}"
    return service.data_dir / "artifacts" / row[0]


def test_resume_skips_a_torn_newer_checkpoint(service: LiveService,
                                               client: httpx.Client) -> None:
    spec = JobSpec(suffix="torn", eval_steps=6)
    job = create_job(client, spec)
    wait_training_past(service, client, job["id"], 7)
    expect(client.post(f"{JOBS}/{job['id']}/pause"))
    paused = wait_status(service, client, job["id"], "paused")
    newest = expect(client.get(f"{JOBS}/{job['id']}/checkpoints"))["data"][0]["step_number"]
    before = history(client, job["id"])
    # Pausing checkpoints the step it stopped at.
    assert newest == before.attempts[0].steps[-1] == paused["progress"]["step"], \
        before.describe()
    assert newest < spec.steps, "the job finished before the pause landed"

    # A newer checkpoint killed mid-write: half its weights, no manifest.
    whole = artifact_folder(service, job["id"]) / f"checkpoint-{newest}"
    assert (whole / MANIFEST).is_file(), sorted(p.name for p in whole.iterdir())
    torn = whole.with_name(f"checkpoint-{newest + 1000}")
    shutil.copytree(whole, torn, ignore=shutil.ignore_patterns(MANIFEST))
    weights = torn / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size // 2)

    resumed_at = time.monotonic()
    assert expect(client.post(f"{JOBS}/{job['id']}/resume"))["status"] == "queued"
    done = wait_status(service, client, job["id"], "succeeded")
    recovery_s = time.monotonic() - resumed_at

    story = history(client, job["id"])
    assert_attempts_sequential(story)
    assert len(story.attempts) == 2 and done["attempt"] == 2, story.describe()
    second = story.attempts[1]
    assert second.steps[0] == newest + 1, (newest, second.steps)
    assert second.steps[-1] == spec.steps, second.steps
    assert newest + 1000 not in story.checkpoints()
    assert not (torn / MANIFEST).exists() and weights.stat().st_size == size // 2
    assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
    figures("torn_checkpoint", jobs_lost=0, steps_redone=second.steps[0] - newest - 1,
            recovery_s=recovery_s, trainers_per_job=1, resumed_from=newest)


def test_cancel_lands_within_a_heartbeat_and_a_few_steps(service: LiveService,
                                                         client: httpx.Client) -> None:
    # Bigger batches make each step a few tenths of a second, so the job lasts many
    # heartbeats and a slow heartbeat cannot let it finish before the flag is read.
    spec = JobSpec(suffix="cancel", eval_steps=12, batch_size=1024)
    job = create_job(client, spec)
    wait_training_past(service, client, job["id"], 3)
    requested = time.monotonic()
    expect(client.post(f"{JOBS}/{job['id']}/cancel"))
    cancelled = wait_status(service, client, job["id"], "cancelled")
    latency_s = time.monotonic() - requested

    story = history(client, job["id"])
    step_s = step_seconds(story, spec.batch_size)
    requested_at = story.messages.index("Cancellation requested; stopping after this step.")
    steps_after = [e["data"]["step"] for e in story.events[requested_at:]
                   if e["type"] == "metrics" and "train_loss" in (e.get("data") or {})]
    assert story.messages[-1] == "Job cancelled.", story.describe()
    assert cancelled["fine_tuned_model"] is None and versions_of(client, spec.suffix) == []
    assert cancelled["progress"]["step"] < spec.steps, (cancelled, step_s)
    bound_s = HEARTBEAT_S + 4 * step_s + 2.0
    figures("cancel", jobs_lost=0, latency_s=latency_s, bound_s=bound_s, step_s=step_s,
            steps_after_request=len(steps_after), trainers_per_job=1)
    # The heartbeat reads the flag within one interval; the loop stops at that step's end.
    # The bound is in seconds, what a caller waits: a count of steps would lean on step_s,
    # which comes from the loop's samples/s and leaves out logging and event writes.
    assert latency_s < bound_s, (latency_s, step_s, story.describe())


def test_sqlite_under_concurrent_pollers_never_errors(service: LiveService,
                                                      client: httpx.Client) -> None:
    spec = JobSpec(suffix="pollers")
    files = upload_files(client, spec)
    stop = threading.Event()
    failures: list[str] = []
    counts: list[int] = []
    lock = threading.Lock()
    job: dict[str, Any] = create_job(client, spec, files)
    paths = [f"{JOBS}/{job['id']}", f"{JOBS}/{job['id']}/events?limit=100", f"{JOBS}?limit=50",
             f"{JOBS}/{job['id']}/checkpoints", "/v1/models"]

    def record(response: httpx.Response | None, what: str, error: str = "") -> None:
        with lock:
            counts.append(1)
            if response is not None and response.status_code < 300 \
                    and "database is locked" not in response.text:
                return
            failures.append(f"{what}: {response.status_code if response else ''} "
                            f"{response.text[:300] if response else error}")

    def poller(offset: int) -> None:
        with service.client(timeout_s=60) as http:
            index = offset
            while not stop.is_set():
                path = paths[index % len(paths)]
                index += 1
                try:
                    record(http.get(path), f"GET {path}")
                except httpx.HTTPError as exc:
                    record(None, f"GET {path}", repr(exc))
                time.sleep(0.01)

    def writer() -> None:
        # Writes from the API side while the worker writes progress: uploads.
        with service.client(timeout_s=60) as http:
            number = 0
            while not stop.is_set():
                number += 1
                try:
                    record(http.post("/v1/files", data={"purpose": "fine-tune"}, files={
                        "file": (f"w{number}.jsonl", jsonl_bytes(sentiment_rows(20)),
                                 "application/jsonl")}), "POST /v1/files")
                except httpx.HTTPError as exc:
                    record(None, "POST /v1/files", repr(exc))
                time.sleep(0.05)

    threads = [threading.Thread(target=poller, args=(n,), daemon=True) for n in range(8)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for thread in threads:
        thread.start()
    try:
        done = wait_status(service, client, job["id"], "succeeded")
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    serve_log = service.processes[0].log_path.read_text(errors="replace")
    locked_in_log = serve_log.count("database is locked")
    unavailable_in_log = serve_log.count("database unavailable")
    story = history(client, job["id"])
    figures("sqlite_pollers", jobs_lost=0, requests=len(counts), errors=len(failures),
            locked=locked_in_log, trainers_per_job=len(story.attempts))
    assert not failures, f"{len(failures)} of {len(counts)} requests failed:\n" + \
        "\n".join(failures[:20])
    assert locked_in_log == 0 and unavailable_in_log == 0, service.processes[0].log_tail()
    assert len(counts) > 200, f"only {len(counts)} requests ran during training"
    assert story.attempts[0].steps == list(range(1, spec.steps + 1)), story.describe()
    assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
