"""Data-parallel training across processes on one machine, launched by torchrun.

The process that owns the job (the worker) starts torchrun (torch.distributed's elastic
launcher) in a session of its own; torchrun starts one training process per rank, and
Trainer runs them as DistributedDataParallel (gloo on CPU, NCCL on GPU, one GPU per rank).
Rank 0 alone reports: its progress, evaluations and checkpoints go to the owner over a
private socket, and the owner writes them where a single-process run would. A stop the
owner asks for reaches rank 0, which broadcasts it, so every rank stops after the same step.

A rank dies with its launcher, and the launcher with its owner (PDEATHSIG), so a killed
worker leaves no training processes behind.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from app.domain.statuses import StopReason

if TYPE_CHECKING:
    from app.ml.training import TrainingObserver, TrainingPlan, TrainingResult

# How often the owner looks for a stop request while it waits for rank 0's reports.
RELAY_POLL_S = 0.2
# How long the launcher gets to end its ranks after the run, before its session is killed.
LAUNCHER_EXIT_S = 60.0
_PLAN, _AUTHKEY, _SOCKET = "plan.json", "authkey", "rank0.sock"
_REPORTS = frozenset({"on_progress", "on_evaluation", "on_checkpoint"})
_STOP_CODES = list(StopReason)


class ProcessesUnavailable(Exception):
    """The job asks for more training processes than this machine runs at once."""

    code = "processes_unavailable"

    def __init__(self, requested: int, available: int, device: str):
        super().__init__(f"The job asks for {requested} training processes; this worker runs "
                         f"at most {available} (one per {device}). Ask for {available} or "
                         "fewer, or send the job to a larger worker.")


class TrainingProcessFailed(Exception):
    """A training process ended without a result (its error, where it left one)."""


# ------------------------------------------------------------------ inside a rank


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def per_process(batch_size: int) -> int:
    """Each process's share of a batch: `batch_size` stays the samples of one step, so
    a job trains on the same batches whatever the number of processes."""
    return math.ceil(batch_size / world_size())


def agreed_stop(reason: StopReason | None) -> StopReason | None:
    """Rank 0's stop reason, on every rank: all of them stop after the same step."""
    if not dist.is_initialized():
        return reason
    code = _STOP_CODES.index(reason) + 1 if reason else 0
    flag = torch.tensor([code], dtype=torch.long, device=_collective_device())
    dist.broadcast(flag, src=0)
    agreed = int(flag.item())
    return _STOP_CODES[agreed - 1] if agreed else None


def gathered_on_first(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the others)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, values, dst=0)
    return values


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _ReportToOwner:
    """Rank 0's observer: reports go to the owner; stop requests come from it."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.stop: StopReason | None = None

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.connection.send(("on_progress", (progress,)))

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.connection.send(("on_evaluation", (step, metrics)))

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        self.connection.send(("on_checkpoint", (step, epoch, metrics, directory)))

    def stop_requested(self) -> StopReason | None:
        while self.connection.poll():
            self.stop = StopReason(self.connection.recv())
        return self.stop


class _Silent:
    """The other ranks' observer: they train and report nothing."""

    def on_progress(self, progress: dict[str, Any]) -> None:
        pass

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None:
        pass

    def stop_requested(self) -> StopReason | None:
        return None


def _run_rank(folder: Path) -> None:
    """One rank's life: join the group, train, and (rank 0) hand the result to the owner."""
    from app.ml.training import train_in_this_process  # this module is imported by it

    plan = _plan_from_json((folder / _PLAN).read_text())
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    try:
        if dist.get_rank() != 0:
            train_in_this_process(plan, _Silent())
            return
        authkey = (folder / _AUTHKEY).read_bytes()
        with Listener(str(folder / _SOCKET), authkey=authkey) as listener, \
                listener.accept() as connection:
            result = train_in_this_process(plan, _ReportToOwner(connection))
            connection.send(("result", result))
    except Exception as exc:
        (folder / f"failure-{dist.get_rank()}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        dist.destroy_process_group()


def _plan_to_json(plan: TrainingPlan) -> str:
    """The plan as plain JSON for the ranks: rows, settings and the task's name, nothing
    that runs code when it is read back."""
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    return json.dumps({**fields, "task": plan.task.name, "train_rows": list(plan.train_rows),
                       "eval_rows": list(plan.eval_rows), "output_dir": str(plan.output_dir),
                       "hyperparameters": dataclasses.asdict(plan.hyperparameters)})


def _plan_from_json(text: str) -> TrainingPlan:
    from app.ml.hyperparameters import Hyperparameters, LoraSettings
    from app.ml.tasks.catalog import get_task
    from app.ml.training import TrainingPlan

    raw = json.loads(text)
    settings = raw["hyperparameters"]
    hyperparameters = Hyperparameters(**{**settings, "reasons": tuple(settings["reasons"]),
                                         "lora": LoraSettings.of(settings["lora"])})
    return TrainingPlan(**{**raw, "task": get_task(raw["task"]), "output_dir":
                           Path(raw["output_dir"]), "hyperparameters": hyperparameters})


# ------------------------------------------------------------------ in the owner


def available_processes() -> tuple[int, str]:
    """How many training processes this machine runs at once, and one of what."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU"
    return len(os.sched_getaffinity(0)), "CPU core"


def check_processes(requested: int) -> None:
    available, device = available_processes()
    if requested > available:
        raise ProcessesUnavailable(requested, available, device)


def fine_tune_across_processes(plan: TrainingPlan, observer: TrainingObserver
                               ) -> TrainingResult:
    """Train `plan` in `plan.processes` processes under torchrun, reporting to `observer`
    from this process, as `fine_tune` does in one."""
    check_processes(plan.processes)
    with tempfile.TemporaryDirectory(prefix="tuneforge-ddp-") as temporary:
        folder = Path(temporary)
        authkey = secrets.token_bytes(32)
        (folder / _AUTHKEY).write_bytes(authkey)
        (folder / _PLAN).write_text(_plan_to_json(plan))
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.ml.distributed", "launch", str(folder),
             str(plan.processes), str(os.getpid())],
            env=_rank_environment(plan.processes), stdin=subprocess.DEVNULL,
            # A session of its own: a signal meant for the worker's group (Ctrl-C) reaches
            # the worker alone, which then stops the ranks at a step, checkpointing.
            start_new_session=True)
        try:
            return _follow(launcher, folder, authkey, observer)
        finally:
            _end(launcher)


def _rank_environment(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # The cores shared out: more threads than cores per rank only wait on each other.
        env.setdefault("OMP_NUM_THREADS", str(max(1, available_processes()[0] // processes)))
    return env


def _follow(launcher: subprocess.Popen[bytes], folder: Path, authkey: bytes,
            observer: TrainingObserver) -> TrainingResult:
    from app.ml.training import TrainingResult

    connection = _connect(launcher, folder / _SOCKET, authkey, observer)
    if isinstance(connection, StopReason):
        return TrainingResult(stopped=connection)  # stopped before training began
    result = None
    if connection is not None:
        with connection:
            result = _relay(connection, observer)
    with suppress(subprocess.TimeoutExpired):  # then `_end` takes the launcher down
        launcher.wait(timeout=LAUNCHER_EXIT_S)
    if result is None:
        raise TrainingProcessFailed(_failure(folder, launcher.returncode))
    return result


def _connect(launcher: subprocess.Popen[bytes], address: Path, authkey: bytes,
             observer: TrainingObserver) -> Connection | StopReason | None:
    """Rank 0's channel once it listens; a stop asked for before then; None if the
    launcher ended first."""
    while launcher.poll() is None:
        reason = observer.stop_requested()
        if reason is not None:
            return StopReason(reason)
        try:
            return Client(str(address), authkey=authkey)
        except (OSError, EOFError):  # not listening yet, or gone mid-handshake
            time.sleep(RELAY_POLL_S)
    return None


def _relay(connection: Connection, observer: TrainingObserver) -> TrainingResult | None:
    """Pass rank 0's reports to `observer` and its stop requests to rank 0, until the
    result (None: rank 0 went away without one)."""
    sent: StopReason | None = None
    try:
        while True:
            reason = observer.stop_requested()
            if reason is not None and reason != sent:
                connection.send(str(reason))
                sent = reason
            if not connection.poll(RELAY_POLL_S):
                continue
            kind, payload = connection.recv()
            if kind == "result":
                result: TrainingResult = payload
                return result
            if kind in _REPORTS:
                getattr(observer, kind)(*payload)
    except (EOFError, OSError):
        return None


def _failure(folder: Path, returncode: int | None) -> str:
    reports = sorted(folder.glob("failure-*.txt"))
    if reports:
        rank = reports[0].stem.removeprefix("failure-")
        return f"training process {rank} failed: {reports[0].read_text()[:400]}"
    return f"the training processes ended without a result (launcher exit code {returncode})"


def _end(launcher: subprocess.Popen[bytes]) -> None:
    """Make sure the launcher is gone: it ends its ranks on SIGTERM, and they die with it."""
    if launcher.poll() is not None:
        return
    launcher.terminate()
    try:
        launcher.wait(timeout=LAUNCHER_EXIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


# ------------------------------------------------------------------ entry points


def _die_with_parent(parent: int, sig: signal.Signals) -> None:
    """Ask Linux to send `sig` to this process when its parent exits, however it exits."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig))
    if os.getppid() != parent:  # the parent ended before we asked
        sys.exit(1)


def _launch(folder: str, processes: str, owner: str) -> None:
    """torchrun, one rank per process, dying with the worker that owns the job. SIGTERM
    makes torchrun end its ranks; SIGKILL of it leaves them to their own PDEATHSIG."""
    _die_with_parent(int(owner), signal.SIGTERM)
    from torch.distributed.run import main as torchrun

    torchrun(["--standalone", f"--nproc-per-node={processes}", "--max-restarts=0",
              "--module", "app.ml.distributed", "rank", folder, str(os.getpid())])


def _rank(folder: str, launcher: str) -> None:
    _die_with_parent(int(launcher), signal.SIGKILL)
    _run_rank(Path(folder))


def main(argv: Sequence[str]) -> None:
    command, *args = argv
    if command == "launch":
        _launch(*args)
    elif command == "rank":
        _rank(*args)
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
