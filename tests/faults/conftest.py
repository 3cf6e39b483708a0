"""Shared parts of the fault-injection suite: a tiny base model, short lease settings, jobs
sized so a fault lands mid-epoch, readers for a job's attempts and steps, and private Redis
and PostgreSQL servers this suite may stop and restart (never the shared ones).

Every wait has a deadline and fails with the service's log tails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import (
    LiveService,
    ServiceError,
    all_events,
    events_text,
    expect,
    free_port,
    group_members,
    upload_jsonl,
)
from tests.unit.tiny_model import build_tiny_bert, sentiment_rows

BASE_MODEL = "tiny-bert"
LEASE_S = 5
HEARTBEAT_S = 1.0
SWEEP_S = 1.0
DISPATCH_RETRY_S = 2.0
REDISPATCH_S = 10.0
MAX_ATTEMPTS = 3
FAST_LEASES = {
    "TUNEFORGE_LEASE_SECONDS": str(LEASE_S),
    "TUNEFORGE_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
    "TUNEFORGE_SWEEP_SECONDS": str(SWEEP_S),
    "TUNEFORGE_DISPATCH_RETRY_SECONDS": str(DISPATCH_RETRY_S),
    "TUNEFORGE_REDISPATCH_SECONDS": str(REDISPATCH_S),
    "TUNEFORGE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    # These tests poll jobs and events several times a second for minutes; the rate limit
    # has tests of its own (tests/security/test_limits.py).
    "TUNEFORGE_RATE_LIMIT_PER_MINUTE": "100000",
}
# Trainer logs every step only while a run has fewer than 40 steps (logging_steps is
# total_steps // 20, at least 1): so jobs here have at most 39 steps, and every step shows
# up as a metrics event, which is how the tests see exactly where an attempt resumed.
MAX_LOGGED_STEPS = 39
VALIDATION_ROWS = 64
WAIT_S = 240.0
_ATTEMPT = re.compile(r"^Attempt (\d+) started on (\S+)\.$")
_CHECKPOINT = re.compile(r"^Checkpoint saved at step (\d+)\.$")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fault-models")
    build_tiny_bert(root / BASE_MODEL)
    return root


def fault_env(models_dir: Path, **extra: str) -> dict[str, str]:
    """Short leases, heartbeats and sweeps, the tiny base model, and one torch thread per
    process (the machine is shared: steps stay steady instead of fighting for cores)."""
    return {**FAST_LEASES, "TUNEFORGE_MODELS_DIR": str(models_dir),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------ jobs


@dataclass
class JobSpec:
    """A text-classification job on the tiny BERT; one epoch of `steps` steps."""

    steps: int = 36
    batch_size: int = 512
    eval_steps: int = 6
    n_epochs: int = 1
    suffix: str = "fault"
    # Each training text said this many times. Longer rows make steps of a tenth of a second
    # or more, so a job outlasts a few heartbeats and polls: with short rows a 36-step job
    # took about a second, and on a loaded machine could finish before a fault landed.
    text_repeats: int = 5

    @property
    def rows(self) -> int:
        return self.steps * self.batch_size

    def training_rows(self) -> list[dict[str, str]]:
        rows = sentiment_rows(self.rows)
        return [{**row, "text": " ".join([row["text"]] * self.text_repeats)} for row in rows]

    def hyperparameters(self) -> dict[str, Any]:
        return {"n_epochs": self.n_epochs, "batch_size": self.batch_size,
                "eval_steps": self.eval_steps, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                # A fault must land mid-training: the job runs all its steps.
                "early_stopping_patience": 0}


@dataclass
class Files:
    training: str
    validation: str


def upload_files(client: httpx.Client, spec: JobSpec) -> Files:
    training = upload_jsonl(client, f"{spec.suffix}-train.jsonl", spec.training_rows())
    validation = upload_jsonl(client, f"{spec.suffix}-dev.jsonl",
                              sentiment_rows(VALIDATION_ROWS))
    return Files(training["id"], validation["id"])


def create_job(client: httpx.Client, spec: JobSpec, files: Files | None = None,
               status: int | tuple[int, ...] = 201) -> dict[str, Any]:
    files = files or upload_files(client, spec)
    job: dict[str, Any] = expect(client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL, "training_file": files.training,
        "validation_file": files.validation, "suffix": spec.suffix,
        "hyperparameters": spec.hyperparameters()}), status)
    return job


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = expect(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
    return job


def poll(service: LiveService, client: httpx.Client, job_id: str,
         done: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = WAIT_S,
         every_s: float = 0.1, allow_failed: bool = False) -> dict[str, Any]:
    """Poll a job until `done(job)`. Fails at the deadline, or at once if the job failed
    (unless `allow_failed`), or finished without `done` becoming true."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        service.check_alive()
        job = get_job(client, job_id)
        if done(job):
            return job
        if job["status"] in ("failed", "succeeded", "cancelled") and not (
                allow_failed and job["status"] == "failed"):
            break
        time.sleep(every_s)
    raise ServiceError(f"job {job_id}: not {what} (after up to {timeout_s}s); last state "
                       f"{job}\n{events_text(client, job_id)}\n{service.logs()}")


def wait_status(service: LiveService, client: httpx.Client, job_id: str, status: str,
                timeout_s: float = WAIT_S) -> dict[str, Any]:
    return poll(service, client, job_id, lambda job: job["status"] == status, status,
                timeout_s, every_s=0.2, allow_failed=status == "failed")


def wait_training_past(service: LiveService, client: httpx.Client, job_id: str, step: int,
                       attempt: int | None = None, timeout_s: float = WAIT_S
                       ) -> dict[str, Any]:
    """Running, with progress beyond `step` (in the given attempt, if one is named)."""
    def done(job: dict[str, Any]) -> bool:
        return (job["status"] == "running" and job["progress"]["step"] > step
                and (attempt is None or job["attempt"] == attempt))

    return poll(service, client, job_id, done, f"training past step {step}", timeout_s)


# ------------------------------------------------------------------ events


@dataclass
class Attempt:
    number: int
    worker: str
    steps: list[int] = field(default_factory=list)  # training steps reported, in order
    checkpoints: list[int] = field(default_factory=list)
    started_at: int = 0


@dataclass
class History:
    """A job's events, oldest first, read into attempts."""

    events: list[dict[str, Any]]
    attempts: list[Attempt]

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.events]

    def count(self, prefix: str) -> int:
        return sum(m.startswith(prefix) for m in self.messages)

    def checkpoints(self) -> list[int]:
        return [step for a in self.attempts for step in a.checkpoints]

    def describe(self) -> str:
        return "\n".join(f"  [{e['level']}] {e['message']}" for e in self.events)


def history(client: httpx.Client, job_id: str) -> History:
    events = list(reversed(all_events(client, job_id)))
    attempts: list[Attempt] = []
    for event in events:
        started = _ATTEMPT.match(event["message"])
        if started:
            attempts.append(Attempt(int(started.group(1)), started.group(2),
                                    started_at=event["created_at"]))
            continue
        if not attempts:
            continue
        data = event.get("data") or {}
        if event["type"] == "metrics" and "train_loss" in data:
            attempts[-1].steps.append(int(data["step"]))
        saved = _CHECKPOINT.match(event["message"])
        if saved:
            attempts[-1].checkpoints.append(int(saved.group(1)))
    return History(events, attempts)


def assert_attempts_sequential(story: History) -> None:
    """One trainer at a time: attempts are numbered 1, 2, ... in order, and within each
    attempt the reported steps only go up (a second trainer would interleave its steps)."""
    numbers = [a.number for a in story.attempts]
    assert numbers == list(range(1, len(numbers) + 1)), (numbers, story.describe())
    for attempt in story.attempts:
        assert attempt.steps == sorted(set(attempt.steps)), (
            f"attempt {attempt.number} reported steps out of order or twice: "
            f"{attempt.steps}\n{story.describe()}")


def versions_of(client: httpx.Client, suffix: str) -> list[str]:
    models = expect(client.get("/v1/models"))["data"]
    return [m["id"] for m in models if m["id"].startswith(f"ft:{suffix}:")]


def step_seconds(story: History, batch_size: int) -> float:
    """Seconds per training step, from the samples_per_s the loop reports."""
    rates = [e["data"]["samples_per_s"] for e in story.events
             if e["type"] == "metrics" and (e.get("data") or {}).get("samples_per_s")]
    assert rates, story.describe()
    rates.sort()
    return batch_size / rates[len(rates) // 2]


# ------------------------------------------------------------------ processes


def worker_pid(job: dict[str, Any]) -> int:
    """The pid of the worker holding a job (its `worker` field is host:pid)."""
    assert job["worker"], job
    return int(str(job["worker"]).rsplit(":", 1)[1])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def embedded_worker_pids(service: LiveService) -> list[int]:
    """The `tuneforge worker` processes in the process group of `tuneforge serve`."""
    serve = service.processes[0]
    return [pid for pid in group_members(serve.pid)
            if pid != serve.pid and "app.cli worker" in cmdline(pid)]


def sigkill_embedded_worker(service: LiveService, pid: int) -> None:
    """SIGKILL the worker `serve` supervises, after checking `pid` is that worker."""
    members = embedded_worker_pids(service)
    assert pid in members, f"pid {pid} is not the embedded worker ({members})\n{service.logs()}"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid in group_members(service.processes[0].pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid not in group_members(service.processes[0].pid), f"worker {pid} survived SIGKILL"


def wait_new_embedded_worker(service: LiveService, old: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = [pid for pid in embedded_worker_pids(service) if pid != old]
        if fresh:
            return fresh[0]
        time.sleep(0.2)
    raise ServiceError(f"`serve` did not restart its worker within {timeout_s}s\n"
                       f"{service.logs()}")


def publish(service: LiveService, job_id: str) -> None:
    """Send a train message for `job_id` to the service's broker, as the API would.

    Done in a subprocess with the service's environment, so the Celery app is built from
    the same settings and nothing is written in this process's working folder."""
    code = ("import sys\n"
            "from app.config import Settings\n"
            "from worker.celery_app import TRAIN_TASK, create_celery\n"
            "app = create_celery(Settings())\n"
            "app.send_task(TRAIN_TASK, args=[sys.argv[1]])\n")
    cwd = service.root / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", code, job_id], cwd=cwd, env=service.env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"publishing failed: {done.stdout}\n{done.stderr}"


# ------------------------------------------------------------------ private servers


class PrivateRedis:
    """A redis-server of our own on a free port, with no persistence: a restart loses
    everything it held, the worst case for a broker restart."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.log_path = root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise AssertionError(f"private redis on {self.port} did not start:\n"
                             f"{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; deselect with -m 'not postgres'")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster of our own, run as the postgres user, on a free port."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "pgdata"
        self.log_path = root / "postgres.log"
        self.port = free_port()
        self.bin = _postgres_bin()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout_s: float = 120) -> None:
        command = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*command, *args], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (f"{' '.join(args)} exited {done.returncode}:\n"
                                      f"{done.stdout}\n{done.stderr}\n{self.log_tail()}")

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def init(self) -> None:
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                          "-U", "postgres", "--no-sync")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.log_path), "-o",
                          f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                          "-c fsync=off", "-w", "-t", "60", *extra, action)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if os.geteuid() == 0:
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("no postgres user to run a private cluster as")
    # Not under pytest's tmp_path: its folders are private to root, and the server runs as
    # the postgres user.
    root = Path(tempfile.mkdtemp(prefix="tuneforge-faults-pg-"))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    root.chmod(0o700)
    server = PrivatePostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            try:
                server.stop("fast")
            except AssertionError:
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def figures(name: str, **values: Any) -> str:
    parts = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())
    line = f"FAULT {name}: {parts}"
    print(line)
    return line
