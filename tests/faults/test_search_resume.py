"""A search job survives a worker SIGKILL: a finished trial is never trained again, and the
trial that was running resumes with its own settings from its last checkpoint.

The kill lands in trial 2 of 2, past its first checkpoint; the embedded worker is restarted by
`tuneforge serve`, the lease expires, the sweep re-queues the job, and the new attempt goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import (
    JobSpec,
    fault_env,
    history,
    poll,
    sigkill_embedded_worker,
    upload_files,
    versions_of,
    wait_new_embedded_worker,
    wait_status,
    worker_pid,
)
from tests.live import expect, live_service

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]
TRIALS = 2


def _trials(client: Any, job_id: str) -> list[dict[str, Any]]:
    return list(expect(client.get(f"/v1/fine_tuning/jobs/{job_id}/trials"))["data"])


def _create_search_job(client: Any, spec: JobSpec, search: dict[str, Any],
                       searched: tuple[str, ...]) -> dict[str, Any]:
    """The spec's job with `search`; the settings it searches are not also fixed."""
    hyperparameters = {k: v for k, v in spec.hyperparameters().items() if k not in searched}
    files = upload_files(client, spec)
    job: dict[str, Any] = expect(client.post("/v1/fine_tuning/jobs", json={
        "model": "tiny-bert", "training_file": files.training,
        "validation_file": files.validation, "suffix": spec.suffix,
        "hyperparameters": {**hyperparameters, "search": search}}), 201)
    return job


def _in_trial_past_step(job_id: str, client: Any, number: int, step: int):
    """True once trial `number` (from 0) reports a training step past `step`."""
    def done(job: dict[str, Any]) -> bool:
        if job["status"] != "running":
            return False
        story = history(client, job_id)
        return any((e.get("data") or {}).get("trial") == number
                   and "train_loss" in (e.get("data") or {})
                   and e["data"]["step"] > step for e in story.events)
    return done


def test_a_killed_search_keeps_finished_trials_and_resumes_the_running_one(
        tmp_path: Path, models_dir: Path) -> None:
    spec = JobSpec(suffix="search", eval_steps=6)
    learning_rate = spec.hyperparameters()["learning_rate"]
    search = {"trials": TRIALS, "space": {"learning_rate": [learning_rate / 4, learning_rate]}}
    with live_service(tmp_path, env_overrides=fault_env(models_dir)) as service, \
            service.client() as client:
        job = _create_search_job(client, spec, search, searched=("learning_rate",))
        # Two steps past trial 2's first checkpoint (step 6), well before its next one.
        running = poll(service, client, job["id"],
                       _in_trial_past_step(job["id"], client, 1, 7), "in trial 2, step 8",
                       every_s=0.2)
        finished_before = _trials(client, job["id"])[0]
        assert finished_before["status"] == "succeeded", finished_before
        victim = worker_pid(running)
        sigkill_embedded_worker(service, victim)
        wait_new_embedded_worker(service, victim)
        done = wait_status(service, client, job["id"], "succeeded")

        trials = _trials(client, job["id"])
        assert trials[0] == finished_before  # untouched: never trained again
        assert trials[1]["status"] == "succeeded", trials
        story = history(client, job["id"])
        assert story.count(f"Trial 1 of {TRIALS} started") == 1, story.describe()
        assert story.count(f"Trial 2 of {TRIALS} started") == 1, story.describe()
        assert story.count(f"Trial 2 of {TRIALS} resumed") == 1, story.describe()
        # The second attempt trained trial 2 only, from just after its checkpoint at step 6.
        second = story.attempts[-1]
        assert done["attempt"] == 2 and len(story.attempts) == 2, story.describe()
        assert second.steps and second.steps[0] == 7, (second.steps, story.describe())
        trial_of_steps = {(e.get("data") or {}).get("trial") for e in story.events
                          if e["created_at"] >= second.started_at and "train_loss" in
                          (e.get("data") or {})}
        assert trial_of_steps == {1}, story.describe()
        assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]


def test_cancelling_a_search_stops_its_running_trial_and_starts_no_other(
        tmp_path: Path, models_dir: Path) -> None:
    spec = JobSpec(suffix="cancelsearch", eval_steps=6)
    search = {"trials": 3, "space": {"n_epochs": [1, 1]}}
    with live_service(tmp_path, env_overrides=fault_env(models_dir)) as service, \
            service.client() as client:
        job = _create_search_job(client, spec, search, searched=("n_epochs",))
        poll(service, client, job["id"], _in_trial_past_step(job["id"], client, 0, 3),
             "in trial 1, step 4", every_s=0.2)
        expect(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"))
        cancelled = wait_status(service, client, job["id"], "cancelled")
        assert cancelled["fine_tuned_model"] is None
        trials = _trials(client, job["id"])
        assert [t["status"] for t in trials] == ["cancelled"], trials
        story = history(client, job["id"])
        assert story.count("Trial 2 of 3 started") == 0, story.describe()
        assert versions_of(client, spec.suffix) == []
