"""One live, embedded Tuneforge with one fine-tuned SST-2 model, shared by the compat modules.

The model is trained over plain HTTP, so a client library's problem shows up in that
client's tests rather than as a setup error everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.live import LiveService, expect, live_service, upload_jsonl, wait_for_job


@dataclass(frozen=True)
class TrainedServer:
    service: LiveService
    training_file: dict[str, Any]
    job: dict[str, Any]

    @property
    def model(self) -> str:
        model: str = self.job["fine_tuned_model"]
        return model

    @property
    def predict_url(self) -> str:
        return f"{self.service.api_url}/models/{quote(self.model, safe='')}/predict"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, sst2_train: list[dict[str, Any]],
            sst2_dev: list[dict[str, Any]]) -> Iterator[TrainedServer]:
    root = tmp_path_factory.mktemp("compat")
    # A short heartbeat makes cancel and pause of a running job take effect within seconds.
    with live_service(root, env_overrides={"TUNEFORGE_HEARTBEAT_SECONDS": "1"}) as service, \
            service.client() as client:
        training = upload_jsonl(client, "sst2-train.jsonl", sst2_train)
        validation = upload_jsonl(client, "sst2-dev.jsonl", sst2_dev)
        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": training["id"],
            "validation_file": validation["id"], "suffix": "compat",
            "hyperparameters": {"n_epochs": 1, "learning_rate": 2e-4}}), 201)
        job = wait_for_job(service, client, created["id"])
        yield TrainedServer(service, training, job)
