"""The broker and the database restart while a job trains. Each runs on a private server
(a redis-server and a PostgreSQL cluster of this test's own), never the shared ones.

Redis restarts with no persistence: whatever it held is gone, the worst case. PostgreSQL
restarts with `pg_ctl -m fast`: every connection is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import (
    JobSpec,
    PrivatePostgres,
    PrivateRedis,
    assert_attempts_sequential,
    create_job,
    fault_env,
    figures,
    get_job,
    history,
    upload_files,
    versions_of,
    wait_status,
    wait_training_past,
)
from tests.live import LiveService, ServiceError, events_text, expect, live_service

pytestmark = [pytest.mark.faults, pytest.mark.rotating, pytest.mark.postgres,
              pytest.mark.timeout(420)]


OUTAGE_S = 4.0


class QueuedJobLost(AssertionError):
    """A job queued in the broker before it restarted never ran."""


def split(tmp_path: Path, models_dir: Path, database: str, broker: str,
          **extra: str) -> dict[str, object]:
    LiveService(root=tmp_path, env_overrides={"TUNEFORGE_DATABASE_URL": database}
                ).run_cli("db", "upgrade")
    return {"embedded_worker": False, "separate_workers": 1,
            "env_overrides": fault_env(models_dir, TUNEFORGE_DATABASE_URL=database,
                                       TUNEFORGE_BROKER_URL=broker, **extra)}


def test_redis_restart_mid_training(tmp_path: Path, models_dir: Path, postgres_url: str,
                                    private_redis: PrivateRedis) -> None:
    # Long enough to still be training after the outage and the requests made during it,
    # even on an idle machine where a tiny-model step takes a few milliseconds.
    training = JobSpec(suffix="redis-running", batch_size=1024, n_epochs=8, text_repeats=1)
    waiting = JobSpec(suffix="redis-waiting", steps=6, batch_size=64, eval_steps=6)
    during = JobSpec(suffix="redis-during", steps=6, batch_size=64, eval_steps=6)
    deployment = split(tmp_path, models_dir, postgres_url, private_redis.url)
    with live_service(tmp_path, **deployment) as service, service.client() as client:  # type: ignore[arg-type]
        running = create_job(client, training)
        # Queued behind it: its message sits in Redis while the one worker trains.
        queued = create_job(client, waiting)
        during_files = upload_files(client, during)
        wait_training_past(service, client, running["id"], 4)

        private_redis.stop()
        down_at = time.monotonic()
        assert expect(client.get("/readyz"), 503)["checks"]["broker"] is False
        created_at = time.monotonic()
        made_while_down = create_job(client, during, during_files, status=201)
        create_s = time.monotonic() - created_at
        assert made_while_down["status"] == "queued", made_while_down
        still = get_job(client, running["id"])
        assert still["status"] == "running", still
        private_redis.start()  # same port, empty
        outage_s = time.monotonic() - down_at

        done = wait_status(service, client, running["id"], "succeeded")
        recovered = wait_status(service, client, made_while_down["id"], "succeeded")
        recovery_s = time.monotonic() - down_at
        story = history(client, running["id"])
        assert_attempts_sequential(story)
        assert versions_of(client, training.suffix) == [done["fine_tuned_model"]]
        assert versions_of(client, during.suffix) == [recovered["fine_tuned_model"]]
        assert done["progress"]["step"] == training.steps * training.n_epochs, done

        # The job that was waiting in Redis when it restarted: it must still run.
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            service.check_alive()
            waited = get_job(client, queued["id"])
            if waited["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        lost = int(waited["status"] != "succeeded")
        figures("redis_restart", jobs_lost=lost, steps_redone=0, recovery_s=recovery_s,
                trainers_per_job=1, outage_s=outage_s, create_while_down_s=create_s,
                attempts=done["attempt"])
        if lost:
            raise QueuedJobLost(
                f"job {queued['id']}, queued before the broker restarted, is still "
                f"{waited['status']} {time.monotonic() - down_at:.0f}s later:\n"
                f"{events_text(client, queued['id'])}")


def test_postgres_restart_mid_training(tmp_path: Path, models_dir: Path, redis_url: str,
                                       private_postgres: PrivatePostgres) -> None:
    spec = JobSpec(suffix="pg-restart", batch_size=1024)
    # A production-like lease, longer than the outage: the worker keeps its claim.
    deployment = split(tmp_path, models_dir, private_postgres.url, redis_url,
                       TUNEFORGE_LEASE_SECONDS="20")
    with live_service(tmp_path, **deployment) as service, service.client() as client:  # type: ignore[arg-type]
        job = create_job(client, spec)
        wait_training_past(service, client, job["id"], 4)

        private_postgres.stop("fast")
        down_at = time.monotonic()
        # While the database is down: alive, not ready, and /v1 says 503 with Retry-After.
        assert expect(httpx.get(f"{service.base_url}/healthz", timeout=30)) == {"status": "ok"}
        ready = httpx.get(f"{service.base_url}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["database"] is False, ready.text
        for method, path in (("GET", f"/v1/fine_tuning/jobs/{job['id']}"),
                             ("GET", "/v1/fine_tuning/jobs"), ("GET", "/v1/models"),
                             ("POST", f"/v1/fine_tuning/jobs/{job['id']}/pause")):
            response = client.request(method, path)
            assert response.status_code == 503, (method, path, response.status_code,
                                                 response.text)
            assert response.headers.get("Retry-After", "").isdigit(), response.headers
            assert response.json()["error"]["code"] == "database_unavailable", response.text
        # Down for several heartbeats (but less than the lease): the worker meets the outage.
        while time.monotonic() - down_at < OUTAGE_S:
            assert httpx.get(f"{service.base_url}/readyz", timeout=30).status_code == 503
            time.sleep(0.2)
        private_postgres.start()
        outage_s = time.monotonic() - down_at

        deadline = time.monotonic() + 60
        while httpx.get(f"{service.base_url}/readyz", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise ServiceError(f"not ready 60s after the database came back\n"
                                   f"{service.logs()}")
            time.sleep(0.2)
        ready_s = time.monotonic() - down_at
        done = wait_status(service, client, job["id"], "succeeded")

        story = history(client, job["id"])
        assert_attempts_sequential(story)
        assert done["attempt"] == 1 and len(story.attempts) == 1, story.describe()
        assert done["finished_at"] and done["fine_tuned_model"], done
        assert done["progress"]["step"] == spec.steps, done
        assert story.count("Job succeeded") == 1, story.describe()
        # Progress writes during the outage are best-effort; the steps it did record are
        # each recorded once, and training went on to the end.
        steps = story.attempts[0].steps
        assert steps[-1] == spec.steps, steps
        assert versions_of(client, spec.suffix) == [done["fine_tuned_model"]]
        worker_log = service.processes[1].log_path.read_text(errors="replace")
        assert "database unavailable while" in worker_log or "heartbeat for" in worker_log, \
            "the worker never met the outage\n" + service.processes[1].log_tail()
        figures("postgres_restart", jobs_lost=0, steps_redone=0, recovery_s=ready_s,
                trainers_per_job=1, outage_s=outage_s, steps_unrecorded=spec.steps - len(steps))
