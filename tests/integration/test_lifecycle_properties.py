"""Whatever users and workers do to a job, in whatever order, its stored status only ever
moves along the lifecycle's table, and the fields that go with each status agree with it.

API verbs go over HTTP (so through the request's commit); worker outcomes call the same
functions a worker calls, with no model trained.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from app.config import Settings
from app.db.models import FineTuningJob, JobEvent
from app.db.session import session_scope
from app.domain.lifecycle import ALLOWED, JobFailure, check_transition, transition
from app.domain.statuses import TERMINAL, JobStatus, StopReason
from app.ml.hyperparameters import DataProfile, resolve
from app.ml.tasks.catalog import get_task
from app.ml.training import TrainingPlan, TrainingResult
from app.services import training_runs
from app.services.leases import Claim, claim_job
from app.services.outbox import requeue_expired
from app.storage.artifacts import artifact_store
from tests.integration.conftest import BASE_MODEL, running_app
from tests.integration.helpers import upload_rows

JOBS = "/v1/fine_tuning/jobs"
MAX_ATTEMPTS = 3


class World:
    """One job, the claims workers hold on it, and the service they act through."""

    def __init__(self, client: TestClient, config: Settings, file_id: str, tmp: Path):
        self.client, self.settings, self.tmp = client, config, tmp
        self.job_id: str = client.post(JOBS, json={"model": BASE_MODEL,
                                                   "training_file": file_id}).json()["id"]
        self.claims: list[Claim] = []

    def verb(self, name: str) -> None:
        answer = self.client.post(f"{JOBS}/{self.job_id}/{name}")
        assert answer.status_code in (200, 409), answer.text

    def claim(self) -> None:
        claim = claim_job(self.settings, self.job_id, "worker")
        if claim is not None:
            self.claims.append(claim)

    def stop(self, index: int, reason: StopReason) -> None:
        if not self.claims:
            return
        claim = self.claims[index % len(self.claims)]
        with session_scope(self.settings) as session:
            job = training_runs.owned_job(session, claim)
            if job is not None and reason != StopReason.LOST:
                training_runs.record_stop(session, self.settings, claim, job, reason)

    def fail(self, index: int) -> None:
        if self.claims:
            training_runs.fail(self.settings, self.claims[index % len(self.claims)],
                               JobFailure("training_failed", "RuntimeError: boom"))

    def succeed(self, index: int) -> None:
        if not self.claims:
            return
        claim = self.claims[index % len(self.claims)]
        checkpoint = self.tmp / f"ckpt-{claim.attempt}-{len(self.claims)}"
        checkpoint.mkdir(exist_ok=True)
        (checkpoint / "config.json").write_text("{}")
        result = TrainingResult(stopped=None, best_checkpoint=checkpoint,
                                best_metrics={"macro_f1": 0.5}, total_steps=4, final_step=4)
        store = artifact_store(self.settings.resolved_artifact_dir)
        with session_scope(self.settings) as session:
            job = training_runs.owned_job(session, claim)
            if job is None:
                return
            task = get_task(job.task)
            profile = DataProfile(n_rows=40)
            plan = TrainingPlan(task=task, base_model=BASE_MODEL, train_rows=[], eval_rows=[],
                                labels=["negative", "positive"],
                                hyperparameters=resolve({}, profile), seed=job.seed,
                                output_dir=self.tmp / "out")
            prepared = training_runs._Prepared(plan, job.model, job.artifact_key, profile)
            try:
                training_runs._register_success(session, store, claim, job, prepared, result)
            except training_runs.Superseded:
                session.rollback()

    def lose_worker(self) -> None:
        """The worker holding the job died: its lease runs out and the sweep finds it."""
        with session_scope(self.settings) as session:
            session.execute(update(FineTuningJob).where(
                FineTuningJob.id == self.job_id, FineTuningJob.status == JobStatus.RUNNING)
                .values(lease_expires_at=0.0))
        with session_scope(self.settings) as session:
            requeue_expired(session, MAX_ATTEMPTS)

    def stored(self) -> FineTuningJob:
        with session_scope(self.settings) as session:
            return session.get_one(FineTuningJob, self.job_id)

    def events(self) -> int:
        with session_scope(self.settings) as session:
            return session.scalar(select(func.count()).select_from(JobEvent).where(
                JobEvent.job_id == self.job_id)) or 0


index = st.integers(0, 3)
STEPS = st.lists(st.one_of(
    st.tuples(st.just("verb"), st.sampled_from(["cancel", "pause", "resume"])),
    st.tuples(st.just("claim")),
    st.tuples(st.just("stop"), index, st.sampled_from(list(StopReason))),
    st.tuples(st.just("fail"), index),
    st.tuples(st.just("succeed"), index),
    st.tuples(st.just("lose_worker")),
), max_size=14)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory,
            models_dir: Path) -> Iterator[tuple[TestClient, Settings, str, Path]]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    with running_app(tmp / "data", models_dir, max_active_jobs_per_project="100000",
                     rate_limit_per_minute="100000000") as (client, config):
        yield client, config, upload_rows(client)["id"], tmp


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
def test_no_illegal_transition_is_ever_stored(
        service: tuple[TestClient, Settings, str, Path], steps: list[tuple[Any, ...]]) -> None:
    world = World(*service)
    before = world.stored()
    assert before.status == JobStatus.QUEUED
    for name, *args in steps:
        events_before = world.events()
        getattr(world, name)(*args)
        after = world.stored()
        if after.status != before.status:
            assert JobStatus(after.status) in ALLOWED[JobStatus(before.status)], (
                f"{before.status} -> {after.status} by {name}{args}")
            assert world.events() > events_before, "a status change without its event"
        assert_consistent(after)
        before = after


def assert_consistent(job: FineTuningJob) -> None:
    status = JobStatus(job.status)
    assert (job.lease_expires_at is not None) == (status is JobStatus.RUNNING), job.status
    assert (job.finished_at is not None) == (status in TERMINAL), job.status
    assert (job.error is not None) == (status is JobStatus.FAILED), job.status
    assert (job.fine_tuned_model is not None) == (status is JobStatus.SUCCEEDED), job.status
    assert job.started_at is not None or job.attempt == 0
    if status is JobStatus.FAILED:
        assert job.error is not None and set(job.error) == {"code", "message", "param"}


def test_the_table_refuses_what_it_does_not_list() -> None:
    for source, targets in ALLOWED.items():
        for to in JobStatus:
            if to in targets:
                check_transition(source, to)
            else:
                with pytest.raises(RuntimeError):
                    check_transition(source, to)
    assert all(not ALLOWED[status] for status in TERMINAL)


def test_a_transition_from_a_status_the_job_has_left_writes_nothing(
        service: tuple[TestClient, Settings, str, Path]) -> None:
    world = World(*service)
    with session_scope(world.settings) as session:
        job = session.get_one(FineTuningJob, world.job_id)  # read while queued
        world.verb("cancel")  # lands meanwhile
        assert not transition(session, job, JobStatus.RUNNING, message="claimed",
                              worker="late", attempt=1, lease_expires_at=1e12)
    assert world.stored().status == JobStatus.CANCELLED
    assert world.stored().worker is None
