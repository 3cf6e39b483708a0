"""Training across processes: two real processes under torchrun, on gloo.

Against one process, and against an uninterrupted run, the model is a tiny BERT without
dropout: then a step of two processes (each half the batch, gradients averaged) computes
what a step of one process computes on the whole batch, up to the order in which floats
are summed, and the final weights must agree to float tolerance rather than to a loose
quality margin. Then a live 2-process job: its worker killed mid-run (no training process
may outlive it), resumed by the next worker from the last checkpoint, and cancelled (every
rank stops, none is left behind).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from app.ml.checkpoints import MANIFEST
from app.ml.hyperparameters import resolve
from app.ml.tasks.catalog import get_task
from app.ml.training import TrainingPlan, TrainingResult, fine_tune, strip_resume_state
from tests.faults.conftest import (
    BASE_MODEL,
    JobSpec,
    assert_attempts_sequential,
    cmdline,
    fault_env,
    get_job,
    history,
    poll,
    sigkill_embedded_worker,
    upload_files,
    wait_status,
    wait_training_past,
    worker_pid,
)
from tests.faults.test_resume_equivalence import Recorder
from tests.live import LiveService, events_text, expect, live_service
from tests.unit.tiny_model import build_tiny_bert, sentiment_rows

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
JOBS = "/v1/fine_tuning/jobs"
ROWS, BATCH, EPOCHS = 64, 8, 4
TOTAL_STEPS = ROWS // BATCH * EPOCHS  # 32: every step is logged (under 40)
# Two processes sum their halves' gradients in another order than one process sums the
# whole batch: float32 rounding, about 1e-7 of a value per step; after 32 steps the
# weights differ by about 1e-6 (measured: 1.2e-6 at most).
WEIGHTS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
# Softmax is unchanged by a bias on the attention keys, so their gradient is zero but for
# rounding, and Adam scales that noise up to learning-rate-sized steps of either sign:
# those tensors differ by rounding amplified, not by training, and are left out.
NOISE_ONLY = "attention.self.key.bias"


@pytest.fixture(scope="module")
def steady_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with dropout off: training is then a function of the batches alone."""
    model = build_tiny_bert(tmp_path_factory.mktemp("steady") / "tiny-bert")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return model


def plan(base_model: Path, output_dir: Path, processes: int) -> TrainingPlan:
    return TrainingPlan(
        task=get_task("text-classification"), base_model=str(base_model),
        train_rows=sentiment_rows(ROWS), eval_rows=sentiment_rows(16),
        labels=["negative", "positive"],
        hyperparameters=resolve({"n_epochs": EPOCHS, "batch_size": BATCH, "eval_steps": 8,
                                 "learning_rate": 1e-3, "early_stopping_patience": 0}, ROWS),
        seed=7, output_dir=output_dir, mixed_precision=False, processes=processes)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / f"checkpoint-{TOTAL_STEPS}" / "model.safetensors")


def assert_same_weights(actual: dict[str, torch.Tensor],
                        expected: dict[str, torch.Tensor]) -> float:
    """Every tensor within tolerance; returns the largest difference seen."""
    assert actual.keys() == expected.keys()
    compared = [name for name in expected if not name.endswith(NOISE_ONLY)]
    assert len(compared) > len(expected) * 0.9, compared
    for name in compared:
        torch.testing.assert_close(actual[name], expected[name], **WEIGHTS_TOLERANCE,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return max(float((actual[n] - expected[n]).abs().max()) for n in compared)


@pytest.fixture(scope="module")
def two_processes(steady_model: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingResult,
                                                                      Recorder]:
    """An uninterrupted 2-process run."""
    output, recorder = tmp_path_factory.mktemp("two") / "run", Recorder()
    return output, fine_tune(plan(steady_model, output, 2), recorder), recorder


def test_two_processes_train_as_one_does(steady_model: Path, tmp_path: Path,
                                         two_processes: tuple[Path, TrainingResult,
                                                              Recorder]) -> None:
    one = fine_tune(plan(steady_model, tmp_path / "one", 1), Recorder())
    output, two, recorder = two_processes
    assert one.stopped is None and two.stopped is None
    # Rank 0 alone reported: each step and each checkpoint once.
    assert recorder.steps == list(range(1, TOTAL_STEPS + 1)), recorder.steps
    assert recorder.checkpoints == [8, 16, 24, 32], recorder.checkpoints
    difference = assert_same_weights(final_weights(output), final_weights(tmp_path / "one"))
    assert two.best_step == one.best_step, (two, one)
    for name in ("loss", "accuracy"):
        assert two.best_metrics[name] == pytest.approx(one.best_metrics[name], abs=1e-4)
    # Written by rank 0 alone, before the manifest: every rank's random state is in it.
    manifest = json.loads((output / "checkpoint-8" / MANIFEST).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= manifest.keys()
    strip_resume_state(output)  # as a finished job does: no rank's state goes on
    assert not list(output.glob("checkpoint-*/rng_state_*")), sorted(output.rglob("rng*"))
    print(f"DISTRIBUTED equivalence: max weight difference {difference:.2e}, "
          f"loss {one.best_metrics['loss']:.5f} vs {two.best_metrics['loss']:.5f}")


def test_two_processes_paused_and_resumed_end_as_uninterrupted(
        steady_model: Path, tmp_path: Path,
        two_processes: tuple[Path, TrainingResult, Recorder]) -> None:
    interrupted = tmp_path / "interrupted"
    first = Recorder(stop_at=3)
    assert fine_tune(plan(steady_model, interrupted, 2), first).stopped == "requeue"
    # The stop reached every rank at one step, checkpointed there once.
    landed = first.checkpoints[-1]
    assert landed == max(first.steps) < TOTAL_STEPS, first.__dict__
    one_process = tmp_path / "resumed-in-one"
    shutil.copytree(interrupted, one_process)

    second = Recorder()
    assert fine_tune(plan(steady_model, interrupted, 2), second).stopped is None
    assert min(second.steps) == landed + 1  # nothing redone, nothing skipped
    uninterrupted = final_weights(two_processes[0])
    assert_same_weights(final_weights(interrupted), uninterrupted)

    # A job resumes with any number of processes: each step trains on the same rows.
    third = Recorder()
    assert fine_tune(plan(steady_model, one_process, 1), third).stopped is None
    assert min(third.steps) == landed + 1
    assert_same_weights(final_weights(one_process), uninterrupted)


# ------------------------------------------------------------------ a live 2-process job


def training_processes(service: LiveService) -> list[int]:
    """The launcher and ranks of `service`'s jobs (they run in sessions of their own)."""
    found = []
    marker = f"TUNEFORGE_DATA_DIR={service.data_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or "app.ml.distributed" not in cmdline(int(entry.name)):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(service: LiveService, pids: list[int], what: str, timeout_s: float = 15) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not set(pids) & set(training_processes(service)):
            return time.monotonic() - started
        time.sleep(0.1)
    left = set(pids) & set(training_processes(service))
    for pid in left:  # leave nothing behind for the next test, then fail
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"{what}: training processes {sorted(left)} still running "
                         f"after {timeout_s}s\n{service.logs()}")


def trained_in(client: httpx.Client, job_id: str, attempt: int) -> bool:
    attempts = history(client, job_id).attempts
    return len(attempts) >= attempt and bool(attempts[attempt - 1].steps)


def create_wide_job(client: httpx.Client, spec: JobSpec, processes: int,
                    status: int = 201) -> dict[str, Any]:
    files = upload_files(client, spec)
    job: dict[str, Any] = expect(client.post(JOBS, json={
        "model": BASE_MODEL, "training_file": files.training,
        "validation_file": files.validation, "suffix": spec.suffix,
        "hyperparameters": spec.hyperparameters(), "compute": {"processes": processes}}),
        status)
    return job


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    models = tmp_path_factory.mktemp("wide-models")
    build_tiny_bert(models / BASE_MODEL)
    # The pollers below read a job's events many times a minute with one key.
    env = fault_env(models, TUNEFORGE_RATE_LIMIT_PER_MINUTE="100000")
    with live_service(tmp_path_factory.mktemp("wide"), env_overrides=env) as live:
        yield live


def test_more_processes_than_the_worker_has_fails_the_job_clearly(
        service: LiveService) -> None:
    spec = JobSpec(suffix="toowide", steps=4, batch_size=64)
    with service.client() as client:
        job = create_wide_job(client, spec, len(os.sched_getaffinity(0)) + 1)
        failed = wait_status(service, client, job["id"], "failed")
    assert failed["error"]["code"] == "processes_unavailable", failed
    assert "training processes" in failed["error"]["message"], failed


def test_a_killed_worker_leaves_no_rank_and_a_cancel_stops_them_all(
        service: LiveService) -> None:
    spec = JobSpec(suffix="wide", eval_steps=6)
    with service.client() as client:
        job = create_wide_job(client, spec, 2)
        running = wait_training_past(service, client, job["id"], 7)
        ranks = training_processes(service)
        assert len(ranks) == 3, [cmdline(p) for p in ranks]  # the launcher and 2 ranks
        checkpoints = expect(client.get(f"{JOBS}/{job['id']}/checkpoints"))["data"]
        resume_from = checkpoints[0]["step_number"]

        sigkill_embedded_worker(service, worker_pid(running))
        orphans_gone_s = wait_gone(service, ranks, "after the worker's SIGKILL")

        # Progress still shows the killed attempt's steps: wait for the new one's own.
        poll(service, client, job["id"], lambda _: trained_in(client, job["id"], 2),
             "training in attempt 2", every_s=0.3)
        ranks = training_processes(service)
        assert len(ranks) == 3, (ranks, events_text(client, job["id"]), service.logs())
        expect(client.post(f"{JOBS}/{job['id']}/cancel"))
        cancelled = wait_status(service, client, job["id"], "cancelled")
        stopped_s = wait_gone(service, ranks, "after the cancel")

        story = history(client, job["id"])
        assert_attempts_sequential(story)
        first, second = story.attempts
        assert second.steps[0] == resume_from + 1, (resume_from, story.describe())
        assert story.count("Training across 2 processes (data parallel), 256 rows each") == 2
        assert cancelled["fine_tuned_model"] is None
        assert get_job(client, job["id"])["progress"]["step"] < spec.steps
        print(f"DISTRIBUTED live: ranks gone {orphans_gone_s:.1f}s after the worker's "
              f"SIGKILL, {stopped_s:.1f}s after the job was cancelled; resumed at step "
              f"{second.steps[0]} after {first.steps[-1]}")
