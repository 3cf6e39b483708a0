"""The `tuneforge` client commands, run as a user runs them, against a served instance.

One real `tuneforge serve` (API and embedded worker, tests/live.py) with the tiny BERT and a
base model whose weights are broken, so one job really fails. Every command runs as a
subprocess, in a folder of its own that must stay empty: the client talks HTTP only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.client.render import prediction_text
from tests.live import LiveService, free_port, jsonl_bytes, live_service
from tests.security.fuzz import TINY_MODEL, service_env, tiny_models
from tests.unit.tiny_model import sentiment_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
BROKEN_MODEL = "broken-bert"
SUFFIX = "cli"
ONE_EPOCH = ("--n-epochs", "1", "--batch-size", "8")


@dataclass
class Cli:
    """`tuneforge` as a subprocess, pointed at the service through the environment."""

    service: LiveService
    cwd: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        return {**env, "TUNEFORGE_URL": self.service.base_url,
                "TUNEFORGE_API_KEY": self.service.api_key, "COLUMNS": "200"}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "app.cli", *args]

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), cwd=self.cwd, env=self.env(), input=stdin,
                              capture_output=True, text=True, timeout=120)

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, describe(done)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), cwd=self.cwd, env=self.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def describe(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def broken_copy(models_dir: Path) -> None:
    """A base model with the tiny BERT's config and tokenizer and weights that do not load."""
    broken = models_dir / BROKEN_MODEL
    shutil.copytree(models_dir / TINY_MODEL, broken)
    (broken / "model.safetensors").write_bytes(b"these are not weights")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    models_dir = tiny_models(tmp_path_factory.mktemp("cli-models"))
    broken_copy(models_dir)
    root = tmp_path_factory.mktemp("cli-service")
    # A cancel reaches the training loop at the worker's next heartbeat.
    env = service_env(models_dir, TUNEFORGE_HEARTBEAT_SECONDS="0.5")
    with live_service(root, env_overrides=env) as service:
        work = root / "client-cwd"
        work.mkdir()
        yield Cli(service, work)
        assert list(work.iterdir()) == [], "a client command wrote into its working folder"


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-rows") / "reviews.jsonl"
    path.write_bytes(jsonl_bytes(sentiment_rows(40)))
    return path


@pytest.fixture(scope="module")
def file_id(cli: Cli, rows_file: Path) -> str:
    shown = cli.ok("files", "upload", str(rows_file))
    first = shown.splitlines()[0].split()
    assert first[0] == "id" and first[1].startswith("file-"), shown
    assert "reviews.jsonl" in shown and "text-classification" in shown, shown
    return first[1]


@pytest.fixture(scope="module")
def trained(cli: Cli, file_id: str) -> subprocess.CompletedProcess[str]:
    return cli.run("jobs", "create", "--training-file", file_id, "--model", TINY_MODEL,
                   "--suffix", SUFFIX, *ONE_EPOCH, "--follow", "--interval", "0.2")


def test_create_follow_exits_0_with_the_model_it_trained(
        trained: subprocess.CompletedProcess[str]) -> None:
    assert trained.returncode == 0, describe(trained)
    assert "succeeded" in trained.stdout and f"ft:{SUFFIX}:v1" in trained.stdout, \
        describe(trained)
    # The bar's last state, and the job's other events above it, on stderr.
    assert re.search(r"succeeded .* (\d+)/\1 loss \d\.\d{4} [\d.]+ samples/s",
                     trained.stderr), describe(trained)
    assert "Checkpoint saved" in trained.stderr, describe(trained)
    assert "Traceback" not in trained.stderr


def test_listings_show_the_job_its_events_and_its_model(
        cli: Cli, trained: subprocess.CompletedProcess[str]) -> None:
    job_id = trained.stderr.split("Created ", 1)[1].split()[0]
    assert job_id in cli.ok("jobs", "list")
    assert cli.json("jobs", "get", job_id)["fine_tuned_model"] == f"ft:{SUFFIX}:v1"
    events = cli.ok("jobs", "events", job_id).splitlines()
    assert f"Created fine-tuning job {job_id}." in events[0], events
    assert "succeeded" in events[-1].lower(), events
    models = cli.ok("models", "list")
    assert f"ft:{SUFFIX}:v1" in models and TINY_MODEL in models, models


def test_predict_from_arguments_and_from_stdin(
        cli: Cli, trained: subprocess.CompletedProcess[str]) -> None:
    model = f"ft:{SUFFIX}:v1"
    texts = ["the film was good and great", "the plot was awful and bad"]
    raw = cli.json("predict", model, *texts)
    assert len(raw) == 2 and all(row[0]["label"] in ("positive", "negative") for row in raw)
    shown = cli.ok("predict", model, *texts)
    for text, row in zip(texts, raw, strict=True):
        line = next(line for line in shown.splitlines() if line.startswith(text))
        assert row[0]["label"] in line and f"{row[0]['score']:.4f}" in line, shown
    piped = json.loads(cli.ok("predict", SUFFIX, "--json", stdin="\n".join(texts) + "\n\n"))
    assert piped == raw
    # Alone, the row is padded differently than beside the other: the same answer, give or
    # take float rounding.
    alone = json.loads(cli.ok("predict", SUFFIX, "-", "--json", stdin=texts[1]))
    assert [a["label"] for a in alone[0]] == [a["label"] for a in raw[1]]
    assert [a["score"] for a in alone[0]] == pytest.approx([a["score"] for a in raw[1]],
                                                           abs=1e-4)


def test_models_download_saves_the_services_archive_and_leaves_nothing_on_failure(
        cli: Cli, trained: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    model = f"ft:{SUFFIX}:v1"
    named = tmp_path / "chosen.tar.gz"
    done = cli.run("models", "download", model, "-o", str(named))
    assert done.returncode == 0, describe(done)
    assert f"Saved {model} to {named}" in done.stderr, describe(done)
    with cli.service.client() as client:
        served = client.get(f"/v1/models/{model}/content")
    assert served.status_code == 200 and named.read_bytes() == served.content
    with tarfile.open(named, mode="r:gz") as tar:
        assert f"ft-{SUFFIX}-v1/model.safetensors" in tar.getnames()
    # Into a folder, under the service's name; to stdout with '-'.
    assert cli.run("models", "download", SUFFIX, "-o", str(tmp_path)).returncode == 0
    assert (tmp_path / f"ft-{SUFFIX}-v1.tar.gz").read_bytes() == served.content
    piped = subprocess.run(cli.command("models", "download", model, "-o", "-"), cwd=cli.cwd,
                           env=cli.env(), capture_output=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == served.content
    refused = cli.run("models", "download", TINY_MODEL, "-o", str(tmp_path / "base.tar.gz"))
    assert refused.returncode == 1, describe(refused)
    assert "409 base_model_not_exportable" in refused.stderr, describe(refused)
    # --format reaches the service: a full fine-tune has no adapter to send alone.
    adapter = cli.run("models", "download", model, "--format", "adapter", "-o",
                      str(tmp_path / "adapter.tar.gz"))
    assert adapter.returncode == 1 and "422 not_an_adapter" in adapter.stderr, describe(adapter)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen.tar.gz",
                                                          f"ft-{SUFFIX}-v1.tar.gz"]


def test_a_job_that_fails_makes_follow_exit_non_zero(cli: Cli, file_id: str) -> None:
    done = cli.run("jobs", "create", "--training-file", file_id, "--model", BROKEN_MODEL,
                   *ONE_EPOCH, "--follow", "--interval", "0.2")
    assert done.returncode == 1, describe(done)
    assert "failed" in done.stdout and "training_failed" in done.stdout, describe(done)
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unknown_job_prints_the_services_message(cli: Cli) -> None:
    done = cli.run("jobs", "get", "ftjob-nosuchjob")
    assert done.returncode == 1, describe(done)
    assert done.stdout == ""
    assert "ftjob-nosuchjob" in done.stderr and "404 not_found" in done.stderr, describe(done)
    assert "Traceback" not in done.stderr


def test_a_wrong_url_says_which_url_it_could_not_reach(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli.run("models", "list", "--url", url)
    assert done.returncode == 1, describe(done)
    assert f"could not reach the Tuneforge service at {url}" in done.stderr, describe(done)
    assert "Traceback" not in done.stderr


def test_ctrl_c_stops_following_not_the_job_and_the_job_verbs_work(
        cli: Cli, file_id: str, tmp_path: Path) -> None:
    many_rows = tmp_path / "many.jsonl"
    many_rows.write_bytes(jsonl_bytes(sentiment_rows(400)))
    many_id = cli.json("files", "upload", str(many_rows))["id"]
    # Thousands of one-row steps and no early stop: it runs until it is cancelled.
    long_job = cli.json("jobs", "create", "--training-file", many_id, "--model", TINY_MODEL,
                        "--n-epochs", "50", "--batch-size", "1",
                        "--early-stopping-patience", "0")["id"]
    queued = cli.json("jobs", "create", "--training-file", file_id, "--model", TINY_MODEL,
                      *ONE_EPOCH)["id"]
    # One worker: the second job waits behind the first, so it pauses at once.
    assert cli.json("jobs", "pause", queued)["status"] == "paused"
    assert cli.json("jobs", "resume", queued)["status"] == "queued"
    assert cli.json("jobs", "cancel", queued)["status"] == "cancelled"

    # Until its first progress event, so the bar has a loss, a speed and an ETA to show.
    wait_for_a_step(cli.service, long_job)
    following = cli.start("jobs", "get", long_job, "--follow", "--interval", "0.2")
    assert following.stderr is not None
    # Its first event line: it is following now, not still starting up.
    first = following.stderr.readline()
    assert f"Created fine-tuning job {long_job}." in first, first
    following.send_signal(signal.SIGINT)
    _, stderr = following.communicate(timeout=30)
    assert following.returncode == 130, stderr
    assert f"Stopped following {long_job}; the job goes on." in stderr, stderr
    # The bar as it stood: a running job with the service's estimate of the time left.
    assert re.search(r"running .* \d+/\d+ loss \d\.\d{4} [\d.]+ samples/s ETA \d+:\d\d:\d\d",
                     stderr), stderr
    assert "Traceback" not in stderr
    assert cli.json("jobs", "get", long_job)["status"] == "running"

    cancel = cli.run("jobs", "cancel", long_job)
    assert cancel.returncode == 0, describe(cancel)
    assert "Cancel requested" in cancel.stderr and long_job in cancel.stdout, describe(cancel)
    done = cli.run("jobs", "events", long_job, "--follow", "--interval", "0.2")
    assert done.returncode == 1, describe(done)
    assert "Cancellation requested" in done.stdout and "cancelled" in done.stderr, \
        describe(done)


def test_predictions_of_every_task_read_as_one_line_each() -> None:
    assert prediction_text([{"label": "positive", "score": 0.93},
                            {"label": "negative", "score": 0.07}]) == ("positive", "0.9300")
    entities = [{"entity_group": "PER", "score": 0.981, "word": "Ada", "start": 0, "end": 3},
                {"entity_group": "LOC", "score": 0.9, "word": "Paris", "start": 12, "end": 17}]
    assert prediction_text(entities) == ("Ada PER 0.9810; Paris LOC 0.9000", "")
    assert prediction_text([]) == ("(no entities)", "")
    assert prediction_text([{"generated_text": "the film was good"}]) == (
        "the film was good", "")
    assert prediction_text([{"score": 0.5, "token": 9, "token_str": "good",
                             "sequence": "the film was good"}]) == ("good", "0.5000")


def wait_for_a_step(service: LiveService, job_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with service.client() as client:
        while client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, f"{job_id} made no step in {timeout_s}s"
            time.sleep(0.2)
