"""An in-process API (real app, real SQLite, real tiny model) for security tests."""

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.db.migrate import upgrade_database
from app.main import create_app
from app.services.training_runs import run_job
from tests.unit.tiny_model import build_tiny_bert, sentiment_rows

TINY_MODEL = "tiny-bert"


@dataclass
class Service:
    client: TestClient
    settings: Settings
    admin_key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def new_key(self, project: str, admin: bool = False) -> str:
        response = self.client.post("/v1/admin/keys", json={"project": project, "admin": admin},
                                    headers=self.headers())
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def upload(self, key: str, rows: int = 40, name: str = "reviews.jsonl") -> str:
        body = "\n".join(
            f'{{"text": "{r["text"]}", "label": "{r["label"]}"}}' for r in sentiment_rows(rows))
        response = self.client.post("/v1/files", headers=self.headers(key),
                                    data={"purpose": "fine-tune"},
                                    files={"file": (name, body.encode(), "application/jsonl")})
        assert response.status_code == 200, response.text
        file_id: str = response.json()["id"]
        return file_id

    def create_job(self, key: str, file_id: str, suffix: str = "secret") -> str:
        response = self.client.post("/v1/fine_tuning/jobs", headers=self.headers(key), json={
            "model": TINY_MODEL, "training_file": file_id, "suffix": suffix,
            "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
        return job_id

    def train(self, key: str, file_id: str, suffix: str = "secret") -> str:
        """A real training run through the worker's code path; returns the version id."""
        job_id = self.create_job(key, file_id, suffix)
        run_job(self.settings, job_id, worker="security-tests")
        job = self.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=self.headers(key)).json()
        assert job["status"] == "succeeded", job
        version: str = job["fine_tuned_model"]
        return version


@contextlib.contextmanager
def running_service(root: Path, **overrides: object) -> Iterator[Service]:
    admin_key = "tf-admin-" + secrets.token_urlsafe(24)
    build_tiny_bert(root / "models" / TINY_MODEL)
    env = {"DATA_DIR": root / "data", "MODELS_DIR": root / "models",
           "BOOTSTRAP_KEY": admin_key, **{k.upper(): v for k, v in overrides.items()}}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(f"TUNEFORGE_{name}", raising=False)
            else:
                patch.setenv(f"TUNEFORGE_{name}", str(value))
        get_settings.cache_clear()
        settings = get_settings()
        upgrade_database(settings)
        try:
            with TestClient(create_app(), raise_server_exceptions=False) as client:
                yield Service(client, settings, admin_key)
        finally:
            get_settings.cache_clear()
