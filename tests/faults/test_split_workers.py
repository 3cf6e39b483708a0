"""Separate `tuneforge worker` processes on PostgreSQL and Redis: a graceful stop, and a
message delivered twice.

SIGTERM (what systemd, Docker and Kubernetes send) must hand the job back at a checkpoint
of the last step, so the next worker redoes nothing. A train message delivered twice must
still give one trainer at a time and one model version: the claim in the database decides.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    JobSpec,
    assert_attempts_sequential,
    create_job,
    fault_env,
    figures,
    get_job,
    history,
    publish,
    versions_of,
    wait_status,
    wait_training_past,
    worker_pid,
)
from tests.live import LiveProcess, LiveService, ServiceError, live_service

pytestmark = [pytest.mark.faults, pytest.mark.rotating, pytest.mark.postgres,
              pytest.mark.timeout(420)]
SKIPPED = "is not claimable"


def split(tmp_path: Path, models_dir: Path, database: str, broker: str,
          workers: int) -> dict[str, object]:
    LiveService(root=tmp_path, env_overrides={"TUNEFORGE_DATABASE_URL": database}
                ).run_cli("db", "upgrade")
    return {"embedded_worker": False, "separate_workers": workers,
            "env_overrides": fault_env(models_dir, TUNEFORGE_DATABASE_URL=database,
                                       TUNEFORGE_BROKER_URL=broker)}


def worker_process(service: LiveService, pid: int) -> LiveProcess:
    for proc in service.processes[1:]:
        if proc.pid == pid:
            return proc
    raise ServiceError(f"no worker process with pid {pid}\n{service.logs()}")


def log_count(proc: LiveProcess, needle: str) -> int:
    return proc.log_path.read_text(errors="replace").count(needle)


def test_sigterm_hands_the_job_back_at_a_checkpoint_and_nothing_is_redone(
        tmp_path: Path, models_dir: Path, postgres_url: str, redis_url: str) -> None:
    spec = JobSpec(suffix="sigterm", eval_steps=12)
    deployment = split(tmp_path, models_dir, postgres_url, redis_url, workers=2)
    with live_service(tmp_path, **deployment) as service, service.client() as client:  # type: ignore[arg-type]
        job = create_job(client, spec)
        running = wait_training_past(service, client, job["id"], 4)
        stopping = worker_process(service, worker_pid(running))
        assert stopping.popen is not None
        stopping.popen.send_signal(signal.SIGTERM)  # the process alone, as an operator would
        signalled_at = time.monotonic()
        try:
            code = stopping.popen.wait(timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"the worker did not exit within 120s of SIGTERM\n"
                               f"{service.logs()}") from exc
        drain_s = time.monotonic() - signalled_at
        # It exited on purpose: from now on the service is the API and the other worker.
        service.processes.remove(stopping)
        assert code == 0, f"worker exited {code} on SIGTERM\n{stopping.log_tail()}"

        resumed = wait_training_past(service, client, job["id"], 0, attempt=2)
        recovery_s = time.monotonic() - signalled_at
        assert worker_pid(resumed) != stopping.pid
        done = wait_status(service, client, job["id"], "succeeded")

        story = history(client, job["id"])
        assert_attempts_sequential(story)
        assert len(story.attempts) == 2 and done["attempt"] == 2, story.describe()
        first, second = story.attempts
        handed_back_at = first.steps[-1]
        assert story.count("Worker shutting down: checkpoint saved, job re-queued.") == 1, \
            story.describe()
        assert story.count("The worker's lease expired") == 0, story.describe()
        assert first.checkpoints[-1] == handed_back_at, story.describe()
        steps_redone = handed_back_at + 1 - second.steps[0]
        assert steps_redone == 0, (handed_back_at, second.steps)
        assert second.steps[-1] == spec.steps, second.steps
        assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
        figures("sigterm", jobs_lost=0, steps_redone=steps_redone, recovery_s=recovery_s,
                trainers_per_job=1, handed_back_at=handed_back_at, drain_s=drain_s)


def test_a_duplicate_delivery_never_runs_a_second_trainer(
        tmp_path: Path, models_dir: Path, postgres_url: str, redis_url: str) -> None:
    # Long (tens of seconds; progress logged every 7 steps): the idle worker's first task
    # imports torch, and the duplicate must reach the claim while the job still trains.
    spec = JobSpec(suffix="duplicate", steps=140, eval_steps=35)
    deployment = split(tmp_path, models_dir, postgres_url, redis_url, workers=2)
    with live_service(tmp_path, **deployment) as service, service.client() as client:  # type: ignore[arg-type]
        workers = service.processes[1:]
        job = create_job(client, spec)
        running = wait_training_past(service, client, job["id"], 2)
        trainer = worker_process(service, worker_pid(running))
        idle = next(proc for proc in workers if proc is not trainer)

        # Counted from here: on a slow machine the sweep may already have re-sent the job
        # (queued and unclaimed for REDISPATCH_S), a duplicate skipped like ours.
        skipped_before = log_count(idle, SKIPPED)
        publish(service, job["id"])  # the same job id, a second time, while it trains
        deadline = time.monotonic() + 60
        while log_count(idle, SKIPPED) <= skipped_before and time.monotonic() < deadline:
            service.check_alive()
            time.sleep(0.2)
        assert log_count(idle, SKIPPED) == skipped_before + 1, (
            f"the idle worker never took (and skipped) the duplicate\n{service.logs()}")
        during = get_job(client, job["id"])
        assert during["status"] == "running" and during["attempt"] == 1, during
        assert during["worker"] == running["worker"], during

        done = wait_status(service, client, job["id"], "succeeded")
        # Once more after it finished: a late duplicate must not train it again either.
        skipped_before = sum(log_count(p, SKIPPED) for p in workers)
        publish(service, job["id"])
        deadline = time.monotonic() + 60
        while (sum(log_count(p, SKIPPED) for p in workers) <= skipped_before
               and time.monotonic() < deadline):
            service.check_alive()
            time.sleep(0.2)
        assert sum(log_count(p, SKIPPED) for p in workers) == skipped_before + 1, \
            service.logs()
        after = get_job(client, job["id"])
        assert after["status"] == "succeeded" and after["attempt"] == 1, after

        story = history(client, job["id"])
        assert_attempts_sequential(story)
        assert len(story.attempts) == 1, story.describe()
        assert story.attempts[0].steps[-1] == spec.steps, story.describe()
        assert log_count(trainer, SKIPPED) + log_count(idle, SKIPPED) == skipped_before + 1
        assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
        figures("duplicate", jobs_lost=0, steps_redone=0, deliveries=3,
                trainers_per_job=len(story.attempts), versions=1)
