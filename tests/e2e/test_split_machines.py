"""The API and workers as if on separate machines: each process has a data directory of its
own, and they share only PostgreSQL, Redis and an S3 bucket (moto, tests/s3.py).

Files uploaded through the API train on worker A, which never saw the API's disk; the job,
paused there, resumes on worker B, whose disk is empty, from the checkpoint A uploaded, and
finishes. Predict through the API fetches the version from the bucket, the training file's
content downloads from the bucket, and deleting the version removes its objects.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.ml.checkpoints import MANIFEST
from tests.faults.conftest import (
    JobSpec,
    create_job,
    fault_env,
    history,
    upload_files,
    wait_status,
    wait_training_past,
    worker_pid,
)
from tests.live import LiveProcess, LiveService, expect, jsonl_bytes, live_service
from tests.s3 import S3Bucket
from tests.unit.tiny_model import build_tiny_bert

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(600)]
JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model every machine has installed (base models are not artifacts)."""
    root = tmp_path_factory.mktemp("split-models")
    build_tiny_bert(root / "tiny-bert")
    return root


def launch_worker(api: LiveService, root: Path, name: str) -> LiveProcess:
    """A `tuneforge worker` with a data directory of its own under `root`, starting."""
    machine = LiveService(root=root, env_overrides=api.env_overrides)
    (root / "cwd").mkdir(parents=True, exist_ok=True)
    worker = LiveProcess(name, ["worker"], machine.env(), root / "cwd",
                         root / "logs" / f"{name}.log")
    api.processes.append(worker)
    worker.start()
    return worker


def ready(api: LiveService, worker: LiveProcess) -> LiveProcess:
    api.wait_for_log(worker, "ready.", 180)
    return worker


def stop_worker(api: LiveService, worker: LiveProcess) -> None:
    assert worker.stop() == [], f"{worker.name} left processes behind"
    api.processes.remove(worker)


def artifacts(root: Path) -> Path:
    return root / "data" / "artifacts"


def names_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) \
        if folder.exists() else []


def test_api_and_workers_share_only_database_broker_and_bucket(
        tmp_path: Path, tiny_models: Path, postgres_url: str, redis_url: str,
        s3_bucket: S3Bucket) -> None:
    env = fault_env(tiny_models, TUNEFORGE_DATABASE_URL=postgres_url,
                    TUNEFORGE_BROKER_URL=redis_url, **s3_bucket.env())
    api_root, a_root, b_root = tmp_path / "api", tmp_path / "worker-a", tmp_path / "worker-b"
    LiveService(root=api_root, env_overrides=env).run_cli("db", "upgrade")
    # Steps of a tenth of a second or more: 13 of them outlast the pause's way to the worker.
    spec = JobSpec(suffix="split", steps=16, eval_steps=4, batch_size=1024)
    with live_service(api_root, env_overrides=env, embedded_worker=False) as api, \
            api.client() as client:
        worker_a = ready(api, launch_worker(api, a_root, "worker-a"))
        files = upload_files(client, spec)
        job = create_job(client, spec, files)
        running = wait_training_past(api, client, job["id"], 2)
        assert worker_pid(running) == worker_a.pid
        # B starts while A holds the job's lease: it waits for work of its own.
        worker_b = launch_worker(api, b_root, "worker-b")
        expect(client.post(f"{JOBS}/{job['id']}/pause"))
        at = wait_status(api, client, job["id"], "paused")["progress"]["step"]
        assert 2 < at < spec.steps
        stop_worker(api, worker_a)

        ready(api, worker_b)
        assert not (artifacts(b_root) / "jobs").exists()  # an empty disk
        expect(client.post(f"{JOBS}/{job['id']}/resume"))
        done = wait_status(api, client, job["id"], "succeeded")
        resumed_from_the_uploaded_checkpoint(client, job["id"], at, worker_b, b_root)
        in_the_bucket_only(api, s3_bucket, a_root)
        served_from_the_bucket(api, client, done["fine_tuned_model"])
        downloaded_from_the_bucket(client, files.training, spec)
        expect(client.delete(f"/v1/models/{done['fine_tuned_model']}"))
        assert not [n for n in s3_bucket.objects() if n.startswith("models/")]
        assert not [n for n in names_under(artifacts(api.root)) if n.startswith("models/")]


def resumed_from_the_uploaded_checkpoint(client: httpx.Client, job_id: str, at: int,
                                         worker_b: LiveProcess, b_root: Path) -> None:
    story = history(client, job_id)
    first, second = story.attempts[0], story.attempts[-1]
    assert second.worker.endswith(f":{worker_b.pid}"), story.describe()
    assert first.steps[-1] == at and second.steps[0] == at + 1, story.describe()
    fetched = list((artifacts(b_root) / "jobs").glob(f"*/checkpoint-{at}/{MANIFEST}"))
    assert len(fetched) == 1, names_under(artifacts(b_root))


def in_the_bucket_only(api: LiveService, bucket: S3Bucket, a_root: Path) -> None:
    objects = bucket.objects()
    assert len([n for n in objects if n.startswith("files/")]) == 2, sorted(objects)
    assert any(n.startswith("jobs/") and n.endswith(MANIFEST) for n in objects)
    # Over: its checkpoints keep their weights, not the state only resuming needs.
    assert not [n for n in objects if n.endswith((".pt", ".pth", ".bin"))], sorted(objects)
    assert any(n.startswith("models/") and n.endswith("model.safetensors") for n in objects)
    # The API's disk holds no dataset (each went to the bucket) and no job folder; worker A
    # trained in its own folder.
    assert names_under(artifacts(api.root)) in ([], ["tmp"]), names_under(artifacts(api.root))
    assert (artifacts(a_root) / "jobs").is_dir()


def served_from_the_bucket(api: LiveService, client: httpx.Client, model: str) -> None:
    answer = expect(client.post(f"/v1/models/{model}/predict",
                                json={"inputs": ["good great fun", "awful boring"]}))
    assert len(answer) == 2 and {s["label"] for s in answer[0]} == {"positive", "negative"}
    fetched = [n for n in names_under(artifacts(api.root)) if n.endswith("model.safetensors")]
    assert len(fetched) == 1 and fetched[0].startswith("models/"), fetched


def downloaded_from_the_bucket(client: httpx.Client, file_id: str, spec: JobSpec) -> None:
    content = client.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200, content.text
    assert content.content == jsonl_bytes(spec.training_rows())
    assert content.headers["content-type"].startswith("application/jsonl")
    assert 'filename="split-train.jsonl"' in content.headers["content-disposition"]
