"""The API under test: the real app, a real SQLite database and artifact folder per test.

Base models come from a models folder holding the tiny BERT from tests/unit/tiny_model.py.
Every request carries the bootstrap admin key, as every /v1 route requires a key.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.db.migrate import upgrade_database
from tests.unit.tiny_model import build_tiny_bert

BASE_MODEL = "tiny-bert"
BOOTSTRAP_KEY = "tf-integration-bootstrap-key-0123456789"
AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base-models")
    build_tiny_bert(root / BASE_MODEL)
    return root


@contextmanager
def running_app(data_dir: Path, models_dir: Path,
                **env: str) -> Iterator[tuple[TestClient, Settings]]:
    """Configure through the environment, migrate, then run the app (lifespan included)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("TUNEFORGE_"):
                patch.delenv(name)
        patch.setenv("TUNEFORGE_DATA_DIR", str(data_dir))
        patch.setenv("TUNEFORGE_MODELS_DIR", str(models_dir))
        patch.setenv("TUNEFORGE_BOOTSTRAP_KEY", BOOTSTRAP_KEY)
        # No background sweeps during a test: every state change comes from the test.
        patch.setenv("TUNEFORGE_SWEEP_SECONDS", "3600")
        for name, value in env.items():
            patch.setenv(f"TUNEFORGE_{name.upper()}", value)
        get_settings.cache_clear()
        try:
            settings = get_settings()
            upgrade_database(settings)
            from app.main import create_app

            with TestClient(create_app(), headers=AUTH) as client:
                yield client, settings
        finally:
            get_settings.cache_clear()


@pytest.fixture
def app_env(tmp_path: Path, models_dir: Path) -> Iterator[tuple[TestClient, Settings]]:
    with running_app(tmp_path / "data", models_dir) as pair:
        yield pair


@pytest.fixture
def client(app_env: tuple[TestClient, Settings]) -> TestClient:
    return app_env[0]


@pytest.fixture
def settings(app_env: tuple[TestClient, Settings]) -> Settings:
    return app_env[1]
