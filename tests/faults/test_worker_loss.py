"""A worker that dies without a word: SIGKILL of the worker `tuneforge serve` supervises.

Nothing in the worker gets to run: the lease must expire, the API's sweep must put the job
back in the queue, the supervisor must start a new worker, and the job must resume from its
last whole checkpoint. A job that kills every worker that takes it must be failed after
TUNEFORGE_MAX_ATTEMPTS lost attempts, without blocking the queue behind it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.ml.checkpoints import MANIFEST
from tests.faults.conftest import (
    LEASE_S,
    MAX_ATTEMPTS,
    JobSpec,
    assert_attempts_sequential,
    create_job,
    embedded_worker_pids,
    fault_env,
    figures,
    history,
    poll,
    sigkill_embedded_worker,
    versions_of,
    wait_new_embedded_worker,
    wait_status,
    wait_training_past,
    worker_pid,
)
from tests.live import live_service

pytestmark = [pytest.mark.faults, pytest.mark.rotating, pytest.mark.timeout(420)]


def whole_checkpoints(data_dir: Path) -> list[int]:
    """Steps of the checkpoint folders on disk whose manifest (written last) exists."""
    return sorted(int(path.name.split("-")[1])
                  for path in (data_dir / "artifacts" / "jobs").glob("*/checkpoint-*")
                  if (path / MANIFEST).is_file())


def test_sigkill_of_the_worker_mid_epoch_resumes_from_the_last_checkpoint(
        tmp_path: Path, models_dir: Path) -> None:
    spec = JobSpec(suffix="sigkill", eval_steps=6)
    with live_service(tmp_path, env_overrides=fault_env(models_dir)) as service, \
            service.client() as client:
        job = create_job(client, spec)
        # Two steps past the first checkpoint, well before the next one.
        running = wait_training_past(service, client, job["id"], 7)
        victim = worker_pid(running)
        assert embedded_worker_pids(service) == [victim], (
            f"the job's worker {victim} is not the one worker of `serve`: "
            f"{embedded_worker_pids(service)}")
        sigkill_embedded_worker(service, victim)
        killed_at = time.monotonic()
        on_disk = whole_checkpoints(service.data_dir)
        assert on_disk, "no whole checkpoint on disk when the worker was killed"
        resume_from = on_disk[-1]
        assert resume_from < spec.steps

        replacement = wait_new_embedded_worker(service, victim)
        resumed = wait_training_past(service, client, job["id"], resume_from, attempt=2)
        recovery_s = time.monotonic() - killed_at
        assert worker_pid(resumed) == replacement, resumed
        done = wait_status(service, client, job["id"], "succeeded")

        story = history(client, job["id"])
        assert_attempts_sequential(story)
        first, second = story.attempts[0], story.attempts[1]
        assert len(story.attempts) == 2 and done["attempt"] == 2, story.describe()
        assert resume_from in first.checkpoints, (resume_from, story.describe())
        # Resumed exactly after the checkpoint: nothing skipped, nothing before it redone.
        assert second.steps[0] == resume_from + 1, (resume_from, second.steps)
        assert second.steps[-1] == spec.steps, second.steps
        assert story.count("The worker's lease expired (lost 1 of") == 1, story.describe()
        assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
        steps_redone = first.steps[-1] - resume_from
        figures("sigkill", jobs_lost=0, steps_redone=steps_redone, recovery_s=recovery_s,
                trainers_per_job=1, resumed_from=resume_from, attempts=done["attempt"])
        # Recovery is bounded by the lease, the sweep, the restart backoff and a worker boot.
        assert recovery_s < LEASE_S + 120, recovery_s


def test_a_job_that_kills_every_worker_fails_after_max_attempts_and_the_queue_moves_on(
        tmp_path: Path, models_dir: Path) -> None:
    poison_spec = JobSpec(suffix="poison")
    behind_spec = JobSpec(suffix="behind", steps=12, batch_size=64, eval_steps=6)
    with live_service(tmp_path, env_overrides=fault_env(models_dir)) as service, \
            service.client() as client:
        poison = create_job(client, poison_spec)
        behind = create_job(client, behind_spec)
        started = time.monotonic()
        killed: list[int] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # The test is the poison: whenever the job starts an attempt, its worker dies.
            claimed = poll(service, client, poison["id"],
                           lambda job, n=attempt: job["status"] == "running"
                           and job["attempt"] == n, f"running attempt {attempt}",
                           every_s=0.05)
            victim = worker_pid(claimed)
            sigkill_embedded_worker(service, victim)
            killed.append(victim)
        failed = wait_status(service, client, poison["id"], "failed")
        fail_s = time.monotonic() - started
        assert failed["error"]["code"] == "worker_lost_repeatedly", failed
        assert failed["attempt"] == MAX_ATTEMPTS, failed
        assert failed["fine_tuned_model"] is None, failed

        done = wait_status(service, client, behind["id"], "succeeded")
        story = history(client, poison["id"])
        # The worker may die before it records "Attempt N started"; the count is the claim's.
        numbers = [a.number for a in story.attempts]
        assert numbers == sorted(set(numbers)), story.describe()
        assert set(numbers) <= set(range(1, MAX_ATTEMPTS + 1)), story.describe()
        assert story.count("The worker's lease expired") == MAX_ATTEMPTS - 1, story.describe()
        assert story.count(f"The worker was lost {MAX_ATTEMPTS} times") == 1, story.describe()
        assert versions_of(client, poison_spec.suffix) == []
        assert versions_of(client, behind_spec.suffix) == [done["fine_tuned_model"]]
        assert len(set(killed)) == MAX_ATTEMPTS, killed
        figures("poison", jobs_lost=0, lost_attempts=MAX_ATTEMPTS, recovery_s=fail_s,
                trainers_per_job=1, queued_behind="succeeded")
