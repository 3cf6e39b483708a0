"""What a newcomer sees first: `tuneforge serve` says one line per part it started, the
sample dataset the README's curl session uploads is accepted, and `--version` answers."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.live import expect, live_service

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sentiment.jsonl"


def _lines(log: str) -> list[str]:
    # As root, Celery warns that the worker runs as the superuser: a real warning, kept.
    root_warning = re.compile(r"SecurityWarning|superuser|--uid option|uid=0|_warn_or_raise|^$")
    return [line for line in log.splitlines() if not root_warning.search(line.strip())]


@pytest.mark.e2e
def test_serve_logs_one_line_per_part_and_the_sample_dataset_uploads(tmp_path: Path) -> None:
    with live_service(tmp_path) as service:
        serve = service.processes[0]
        service.wait_for_log(serve, "ready.", 120)
        with service.client() as client:
            expect(client.get("/healthz"))
            with SAMPLE.open("rb") as handle:
                uploaded = expect(client.post("/v1/files", data={"purpose": "fine-tune"},
                                              files={"file": ("sentiment.jsonl", handle)}))
        log = serve.log_path.read_text(errors="replace")
    assert uploaded["detected_task"] == "text-classification", uploaded
    assert uploaded["label_counts"] == {"negative": 25, "positive": 25}, uploaded
    lines = _lines(log)
    assert any("database ready: sqlite:///" in line for line in lines), log
    assert any(f"API ready on {service.base_url}" in line for line in lines), log
    assert any(line.endswith("ready.") and "celery" in line for line in lines), log
    # No migration narration, no banner, no uvicorn start-up lines, no access log.
    for noise in ("alembic", "-------------- ", "Uvicorn running", "GET /healthz",
                  "Connected to filesystem", "No hostname was supplied"):
        assert noise not in log, (noise, log)
    # The admin key's two lines aside, every line is one started part.
    assert len(lines) <= 6, log


def test_version_names_the_installed_package() -> None:
    done = subprocess.run([sys.executable, "-m", "app.cli", "--version"], capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stdout.strip() == f"tuneforge {version('tuneforge')}"
