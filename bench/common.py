"""What the benchmarks share: reading the data, starting a service, running a fine-tuning job
through its API, the plain loop's optimizer, and writing the comparison out.

Each benchmark keeps what is its own (how rows are shaped, its plain transformers loop, its
metrics and its table) and uses this for the rest, so both measure the service the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
BASE_MODEL = "minilm-l6"
# A fresh key per run: the service this script starts is given it as its bootstrap key.
API_KEY = "bench-" + os.urandom(8).hex()
HEALTHY_WITHIN_S = 120
POLL_S = 0.25
# The service's own defaults for what a job does not state (app/ml/hyperparameters.py); the
# plain loop uses them too, so both sides train with the same settings.
WARMUP_RATIO, WEIGHT_DECAY = 0.06, 0.01


# ---------------------------------------------------------------- data


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows (all if None) of a JSON-lines file, blank lines skipped."""
    with path.open(encoding="utf-8") as handle:
        return list(islice((json.loads(line) for line in handle if line.strip()), limit))


# ---------------------------------------------------------------- options


def add_service_defaults(args: argparse.Namespace) -> None:
    """Record on args what the service uses unasked, for the plain loop and the results file."""
    args.warmup_ratio, args.weight_decay = WARMUP_RATIO, WEIGHT_DECAY


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_service(url: str | None) -> Iterator[str]:
    """Yield the base URL of a service: the given one, or a fresh `tuneforge serve` (API and
    its worker) on a free port in a temporary data folder, stopped and removed on exit."""
    if url:
        yield url.rstrip("/")
        return
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as data_dir, \
            _sigterm_unwinds():
        port = free_port()
        env = {**os.environ, "TUNEFORGE_DATA_DIR": data_dir, "TUNEFORGE_PORT": str(port),
               "TUNEFORGE_BOOTSTRAP_KEY": API_KEY}
        log_path = Path(data_dir) / "serve.log"
        with log_path.open("wb") as log:
            # Its own session, so that a stuck server can be killed with all its children.
            process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO,
                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(process, base, log_path)
                yield base
            finally:
                _stop(process)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """On SIGTERM, unwind normally, so a service this run started is stopped with it rather
    than left running in its own session."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_healthy(process: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # The data folder, log included, goes when we unwind: say what the log said.
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"tuneforge serve exited during start-up:\n{tail}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"tuneforge serve did not become healthy in {HEALTHY_WITHIN_S}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the server finish its shutdown; kill the whole session if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Service:
    """The few API calls a benchmark makes, authorised with this run's key."""

    def __init__(self, base: str):
        self.client = httpx.Client(base_url=base, timeout=600,
                                   headers={"Authorization": f"Bearer {API_KEY}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def upload_rows(self, name: str, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
        """Upload rows, cut down to `keys`, as a JSON-lines training file; return its id."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text("".join(json.dumps({k: row[k] for k in keys}) + "\n"
                                    for row in rows), encoding="utf-8")
            with path.open("rb") as handle:
                body = self.call("POST", "/v1/files", data={"purpose": "fine-tune"},
                                 files={"file": (name, handle, "application/jsonl")})
        return str(body["id"])

    def fine_tune(self, train_id: str, validation_id: str, args: argparse.Namespace,
                  **fields: Any) -> dict[str, Any]:
        """Create a job with args' hyperparameters (and any other job `fields`), wait for it
        to succeed and return it, with `_wall_s` from creation to the poll that saw it done."""
        return self.train(train_id, validation_id, {
            "n_epochs": args.epochs, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "max_length": args.max_length},
            seed=args.seed, **fields)

    def train(self, train_id: str, validation_id: str | None,
              hyperparameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Create a job with these hyperparameters (the service chooses what they leave out)
        and wait for it to succeed, as fine_tune does."""
        job = self.call("POST", "/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL, "training_file": train_id, "validation_file": validation_id,
            "hyperparameters": hyperparameters, **fields})
        started = time.perf_counter()
        while job["status"] not in {"succeeded", "failed", "cancelled"}:
            time.sleep(POLL_S)
            job = self.call("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        job["_wall_s"] = time.perf_counter() - started
        return job

    def predict(self, model: str, inputs: list[str], chunk: int,
                parameters: dict[str, Any] | None = None) -> list[Any]:
        """One output per input, sent `chunk` at a time to stay under the request limits."""
        outputs: list[Any] = []
        for start in range(0, len(inputs), chunk):
            body: dict[str, Any] = {"inputs": inputs[start:start + chunk]}
            if parameters:
                body["parameters"] = parameters
            outputs.extend(self.call("POST", f"/v1/models/{model}/predict", json=body))
        return outputs


# ---------------------------------------------------------------- the plain loop


def adamw_with_warmup(model: Any, args: argparse.Namespace, total_steps: int) -> tuple[Any, Any]:
    """AdamW without decay on biases and LayerNorm, and a linear schedule with warmup: what
    the transformers no-trainer examples do, and what the service does."""
    import torch
    from transformers import get_scheduler

    no_decay = ("bias", "LayerNorm.weight")
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not any(d in n for d in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(d in n for d in no_decay)],
         "weight_decay": 0.0}], lr=args.learning_rate)
    scheduler = get_scheduler("linear", optimizer,
                              num_warmup_steps=math.ceil(total_steps * args.warmup_ratio),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def plain_step(model: Any, batch: Any, optimizer: Any, scheduler: Any, bf16: bool) -> None:
    """One step of the plain loop: forward (under bf16 autocast if asked), backward, AdamW."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def train_plain(model: Any, loader: Any, optimizer: Any, scheduler: Any, epochs: int,
                bf16: bool) -> float:
    """The plain loop's epochs, in train mode; the seconds they took."""
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in loader:
            plain_step(model, batch, optimizer, scheduler, bf16)
    return time.perf_counter() - started


# ---------------------------------------------------------------- report


def comparison_table(head: str, fields: list[tuple[str, str, str]],
                     service: dict[str, Any] | None,
                     baseline: dict[str, Any] | None) -> list[str]:
    """Lines of figure, service, plain loop and service/plain ratio; '-' where one is missing."""
    lines = [f"{head:<18}{'service':>12}{'plain loop':>12}{'ratio':>9}"]
    for key, name, fmt in fields:
        s = service.get(key) if service else None
        b = baseline.get(key) if baseline else None
        ratio = f"{s / b:.2f}x" if s is not None and b else "-"
        lines.append(f"{name:<18}{fmt.format(s) if s is not None else '-':>12}"
                     f"{fmt.format(b) if b is not None else '-':>12}{ratio:>9}")
    return lines


def ratios(service: dict[str, Any], baseline: dict[str, Any],
           keys: list[str]) -> dict[str, float]:
    """Service over plain loop for each figure both have; none where the plain loop's is 0
    (a small slice can score an F1 of 0), as in the table."""
    return {k: service[k] / baseline[k] for k in keys
            if service.get(k) is not None and baseline.get(k)}


def write_results(benchmark: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """bench/results/<benchmark>-<time>.json: the options and machine, so a figure can be
    traced to how it was measured, then the results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        **results,
    }, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")
