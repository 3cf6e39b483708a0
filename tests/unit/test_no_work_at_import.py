"""Importing the app, the CLI or the Celery module does no work: no settings read into
folders, no broker folder made. Flags such as `tuneforge serve --data-dir` apply first."""

import os
import subprocess
import sys
from pathlib import Path


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
