"""Real Tuneforge processes for end-to-end tests.

`LiveService` starts `tuneforge serve` (and, for a split deployment, a separate
`tuneforge worker`) as subprocesses of this interpreter, each in its own process group with
its output in a log file. Teardown signals whole process groups, so Celery's pool children
and the worker that `serve` supervises go too; `stop()` fails loudly if anything is left.

Everything waits with a deadline and says what it was waiting for, with the log tails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 80
TRAIN_TIMEOUT_S = float(os.environ.get("TUNEFORGE_TEST_TRAIN_TIMEOUT", "600"))


def data_root() -> Path:
    """../shared/data next to the repository, or TUNEFORGE_TEST_DATA."""
    override = os.environ.get("TUNEFORGE_TEST_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def jsonl_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry.name))
    return members


class ServiceError(AssertionError):
    """A live process misbehaved; the message carries its log tails."""


@dataclass
class LiveProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args], cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return f"----- {self.name} log ({self.log_path}) -----\n{tail(self.log_path, lines)}"

    def stop(self, grace_s: float = 15.0) -> list[int]:
        """Stop the process the way an operator would, then make sure its group is gone.

        SIGTERM to the leader alone first (it should take its own children down), then
        SIGTERM and finally SIGKILL to the whole group. Returns pids that survived it all.
        """
        if self.popen is None:
            return []
        pgid = self.popen.pid  # start_new_session: the leader's pid is the group id
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            if sig is None:
                if self.popen.poll() is None:
                    self.popen.terminate()
            else:
                _signal_group(pgid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not group_members(pgid):
                    break
                if sig is None and self.popen.poll() is not None:
                    break  # the leader is gone: whatever is left of its group is orphaned
                time.sleep(0.2)
            if not group_members(pgid):
                break
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return group_members(pgid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@dataclass
class LiveService:
    """One API process (optionally with its embedded worker) plus optional separate workers."""

    root: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    embedded_worker: bool = True
    separate_workers: int = 0
    api_key: str = field(default_factory=lambda: "tf-test-" + secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    processes: list[LiveProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        env.update({
            "TUNEFORGE_DATA_DIR": str(self.data_dir),
            "TUNEFORGE_HOST": "127.0.0.1",
            "TUNEFORGE_PORT": str(self.port),
            "TUNEFORGE_BOOTSTRAP_KEY": self.api_key,
            # Everything these tests need is installed; nothing may be fetched.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env_overrides)
        return env

    def _process(self, name: str, args: list[str]) -> LiveProcess:
        # The processes run in their own folder: nothing they write lands in the checkout.
        cwd = self.root / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        return LiveProcess(name, args, self.env(), cwd, self.root / "logs" / f"{name}.log")

    def run_cli(self, *args: str, timeout_s: float = 120) -> str:
        """Run a one-shot command (e.g. `db upgrade`) to completion; fail with its output."""
        proc = self._process("cli-" + "-".join(args), list(args))
        try:
            done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=proc.cwd,
                                  env=proc.env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout_s, text=True)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"`tuneforge {' '.join(args)}` ran over {timeout_s}s:\n"
                               f"{exc.stdout!r}\n{exc.stderr!r}") from exc
        if done.returncode != 0:
            raise ServiceError(f"`tuneforge {' '.join(args)}` exited {done.returncode}:\n"
                               f"{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def start(self, ready_timeout_s: float = 180) -> None:
        serve_args = ["serve"] if self.embedded_worker else ["serve", "--no-worker"]
        api = self._process("serve", serve_args)
        self.processes.append(api)
        api.start()
        for index in range(self.separate_workers):
            worker = self._process(f"worker-{index}", ["worker"])
            self.processes.append(worker)
            worker.start()
        self.wait_ready(ready_timeout_s)
        for worker in self.processes[1:]:
            self.wait_for_log(worker, "ready.", ready_timeout_s)

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(p.log_tail(lines) for p in self.processes)

    def check_alive(self) -> None:
        for proc in self.processes:
            code = proc.exited()
            if code is not None:
                raise ServiceError(f"{proc.name} exited with {code}\n{self.logs()}")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                response = httpx.get(f"{self.base_url}/readyz", timeout=5)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise ServiceError(f"/readyz not ready after {timeout_s}s (last: {last})\n{self.logs()}")

    def wait_for_log(self, proc: LiveProcess, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if proc.log_path.exists() and needle in proc.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise ServiceError(f"{proc.name} did not log {needle!r} within {timeout_s}s\n"
                           f"{self.logs()}")

    def stop(self) -> None:
        survivors: dict[str, list[int]] = {}
        # Workers first, so the API's sweeper never sees a half-stopped fleet; API last.
        for proc in reversed(self.processes):
            left = proc.stop()
            if left:
                survivors[proc.name] = left
        if survivors:
            raise ServiceError(f"processes survived SIGKILL: {survivors}\n{self.logs()}")

    def client(self, timeout_s: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout_s,
                            headers={"Authorization": f"Bearer {self.api_key}"})


@contextmanager
def live_service(root: Path, **kwargs: Any) -> Iterator[LiveService]:
    service = LiveService(root=root, **kwargs)
    try:
        service.start()
        yield service
    except BaseException:
        # Print the logs so a failure anywhere in the body is diagnosable from pytest output.
        print(service.logs(200), file=sys.stderr)
        raise
    finally:
        service.stop()


# ---------------------------------------------------------------- API helpers


def expect(response: httpx.Response, status: int | tuple[int, ...] = 200) -> Any:
    wanted = (status,) if isinstance(status, int) else status
    assert response.status_code in wanted, (
        f"{response.request.method} {response.request.url} -> {response.status_code} "
        f"(wanted {wanted}): {response.text[:2000]}")
    return response.json()


def upload_jsonl(client: httpx.Client, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    file: dict[str, Any] = expect(client.post(
        "/v1/files", data={"purpose": "fine-tune"},
        files={"file": (name, jsonl_bytes(rows), "application/jsonl")}))
    return file


def wait_for_status(service: LiveService, client: httpx.Client, job_id: str,
                    done: Callable[[dict[str, Any]], bool], what: str,
                    timeout_s: float = TRAIN_TIMEOUT_S, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll a job until `done(job)`; fail at once if it fails, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        service.check_alive()
        job = expect(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
        if done(job):
            return job
        if job["status"] == "failed":
            raise ServiceError(f"job {job_id} failed while waiting for {what}: {job['error']}\n"
                               f"{events_text(client, job_id)}\n{service.logs()}")
        time.sleep(poll_s)
    raise ServiceError(f"job {job_id} not {what} after {timeout_s}s; last state "
                       f"{json.dumps(job)}\n{events_text(client, job_id)}\n{service.logs()}")


def wait_for_job(service: LiveService, client: httpx.Client, job_id: str,
                 status: str = "succeeded", **kwargs: Any) -> dict[str, Any]:
    return wait_for_status(service, client, job_id, lambda job: job["status"] == status,
                           status, **kwargs)


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, following the `after` cursor, newest first."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    for _ in range(1000):
        page = expect(client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params))
        events.extend(page["data"])
        if not page["has_more"]:
            return events
        params["after"] = page["data"][-1]["id"]
    raise AssertionError(f"events of {job_id} kept paginating past 100,000")


def events_text(client: httpx.Client, job_id: str) -> str:
    try:
        events = all_events(client, job_id)
    except Exception as exc:  # diagnostics only: never mask the original failure
        return f"(could not list events: {exc!r})"
    return "events (oldest first):\n" + "\n".join(
        f"  [{e['level']}] {e['message']}" for e in reversed(events))


def predict_labels(client: httpx.Client, model: str, texts: list[str],
                   batch: int = 50) -> list[list[dict[str, Any]]]:
    outputs: list[list[dict[str, Any]]] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        result = expect(client.post(f"/v1/models/{model}/predict", json={"inputs": chunk}))
        assert isinstance(result, list) and len(result) == len(chunk), (
            f"predict returned {len(result)} outputs for {len(chunk)} inputs: {result!r:.500}")
        outputs.extend(result)
    return outputs
