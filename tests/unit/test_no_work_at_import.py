"""Importing the app, the CLI or the Celery module does no work: no settings read into
folders, no broker folder made. Flags such as `tuneforge serve --data-dir` apply first."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def test_importing_creates_nothing_in_the_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    subprocess.run([sys.executable, "-c", "import app.main, app.cli, worker.celery_app, "
                    "worker.tasks"], cwd=tmp_path, env=env, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []


def test_the_celery_app_is_built_from_the_settings_in_force(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")},
           "TUNEFORGE_DATA_DIR": str(tmp_path / "elsewhere")}
    subprocess.run([sys.executable, "-c", "from worker.celery_app import celery; "
                    "assert celery.main == 'tuneforge'"], cwd=tmp_path, env=env, check=True,
                   timeout=120)
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]
    assert (tmp_path / "elsewhere" / "broker").is_dir()


def _clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    return env | {f"TUNEFORGE_{name.upper()}": value for name, value in settings.items()}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("command", [["db", "upgrade"],
                                     ["keys", "create", "--project", "elsewhere"]])
def test_a_command_given_data_dir_writes_only_there(tmp_path: Path, command: list[str]) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "app.cli", *command, "--data-dir", str(elsewhere)],
                   cwd=work, env=_clean_env(), check=True, timeout=120, capture_output=True)
    assert list(work.iterdir()) == []
    assert (elsewhere / "tuneforge.db").is_file()


def test_serve_with_data_dir_makes_nothing_in_the_working_directory(tmp_path: Path) -> None:
    """`tuneforge serve --data-dir /elsewhere` once made ./tuneforge-data/broker here."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--data-dir", str(elsewhere),
         "--port", str(port)], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=_clean_env(bootstrap_key="tf-no-work-at-import-key-0123456789"))
    try:
        _wait_until_serving(port, server)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert list(work.iterdir()) == []
    assert (elsewhere / "broker").is_dir()


def _wait_until_serving(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, "tuneforge serve exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("tuneforge serve did not answer within 120 s")
