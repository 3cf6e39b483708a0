"""LoRA end to end, over HTTP, against real processes (`tuneforge serve`): a LoRA job on a few
hundred SST-2 rows from the real MiniLM learns, and its version is an adapter of a few MB,
served over the base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import live

TRAIN_ROWS = 400
MIN_ACCURACY = 0.70
DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.1}
# MiniLM's weights take 91 MB in fp32; its adapter at r 8 with the head, about 2.6 MB.
MAX_VERSION_BYTES = 4_000_000


@pytest.mark.e2e
def test_lora_job_learns_and_its_version_is_an_adapter(tmp_path: Path,
                                                       sst2_train: list[dict[str, Any]],
                                                       sst2_dev: list[dict[str, Any]]) -> None:
    with live.live_service(tmp_path) as service, service.client() as client:
        training = live.upload_jsonl(client, "sst2.jsonl", sst2_train[:TRAIN_ROWS])
        created = live.expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": training["id"], "suffix": "sst2-lora",
            "hyperparameters": {"n_epochs": 2, "lora": {}}}), 201)
        assert created["hyperparameters"]["lora"] == DEFAULTS
        job = live.wait_for_job(service, client, created["id"])
        assert job["hyperparameters"]["lora"] == DEFAULTS
        messages = [e["message"] for e in live.all_events(client, job["id"])]
        assert any(m.startswith("auto: learning_rate 2e-03 because LoRA adapters")
                   for m in messages), messages

        accuracy = _accuracy(client, job["fine_tuned_model"], sst2_dev)
        folder = _version_folder(service.data_dir)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        print(f"E2E LoRA: dev accuracy {accuracy:.3f} (bar {MIN_ACCURACY}), version "
              f"{size / 1e6:.2f} MB")
        assert accuracy >= MIN_ACCURACY, accuracy
        assert (folder / "adapter_model.safetensors").is_file()
        assert not (folder / "model.safetensors").exists()
        assert size < MAX_VERSION_BYTES, size


def _accuracy(client: Any, model: str, rows: list[dict[str, Any]]) -> float:
    outputs = live.predict_labels(client, model, [row["text"] for row in rows])
    best = [max(scores, key=lambda s: s["score"])["label"] for scores in outputs]
    return sum(b == row["label"] for b, row in zip(best, rows, strict=True)) / len(rows)


def _version_folder(data_dir: Path) -> Path:
    adapters = list((data_dir / "artifacts" / "models").glob("*/adapter_config.json"))
    assert len(adapters) == 1, adapters
    return adapters[0].parent
