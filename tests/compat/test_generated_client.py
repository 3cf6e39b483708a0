"""A client generated from the served /openapi.json (openapi-python-client) drives one whole
flow: upload, create a job, poll it, list its events, predict. The spec is usable, not only
valid: every call goes through the generated models, and an error parses as the error body."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.live import LiveService, jsonl_bytes, live_service
from tests.security.fuzz import TINY_MODEL, service_env, tiny_models
from tests.unit.tiny_model import sentiment_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
PACKAGE = "tuneforge_client"
# No formatter run over the generated code: only what the generator itself writes is tested.
# The generator knows no media type of binary downloads but application/octet-stream: told
# to read the model archive's application/gzip as one, it returns the archive's bytes.
CONFIG = (f"post_hooks: []\npackage_name_override: {PACKAGE}\ncontent_type_overrides:\n"
          "  application/gzip: application/octet-stream\n")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    root = tmp_path_factory.mktemp("generated-client")
    env = service_env(tiny_models(root / "models"))
    with live_service(root / "service", env_overrides=env) as running:
        yield running


@pytest.fixture(scope="module")
def generated(service: LiveService, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ModuleType]:
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{service.base_url}/openapi.json", timeout=30).content)
    (root / "config.yaml").write_text(CONFIG, encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "openapi-python-client"), "generate",
         "--path", str(spec), "--config", str(root / "config.yaml"), "--meta", "none",
         "--output-path", str(root / PACKAGE)],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def part(generated: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{generated.__name__}.{name}")


def test_a_whole_flow_through_the_generated_client(service: LiveService,
                                                   generated: ModuleType) -> None:
    files = part(generated, "api.files")
    jobs = part(generated, "api.fine_tuning")
    models_api = part(generated, "api.models")
    models = part(generated, "models")
    types = part(generated, "types")
    for module in ("upload_file", "get_file"):
        importlib.import_module(f"{files.__name__}.{module}")
    for module in ("create_job", "get_job", "list_events"):
        importlib.import_module(f"{jobs.__name__}.{module}")
    for module in ("predict", "get_model_content"):
        importlib.import_module(f"{models_api.__name__}.{module}")
    client = generated.AuthenticatedClient(base_url=service.base_url, token=service.api_key,
                                           timeout=httpx.Timeout(120))

    uploaded = files.upload_file.sync(client=client, body=models.UploadForm(
        file=types.File(payload=BytesIO(jsonl_bytes(sentiment_rows(40))),
                        file_name="reviews.jsonl", mime_type="application/jsonl"),
        purpose="fine-tune"))
    assert isinstance(uploaded, models.FilePublic), uploaded
    assert uploaded.rows == 40 and uploaded.detected_task == "text-classification"

    request = models.JobCreate.from_dict({
        "model": TINY_MODEL, "training_file": uploaded.id, "suffix": "generated",
        "hyperparameters": {"n_epochs": 1, "batch_size": 8}})
    created = jobs.create_job.sync_detailed(client=client, body=request,
                                            idempotency_key="generated-1")
    assert created.status_code == 201 and isinstance(created.parsed, models.JobPublic)
    replayed = jobs.create_job.sync_detailed(client=client, body=request,
                                             idempotency_key="generated-1")
    assert replayed.status_code == 200 and replayed.parsed.id == created.parsed.id

    job = created.parsed
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        job = jobs.get_job.sync(job.id, client=client)
        assert isinstance(job, models.JobPublic), job
    assert job.status == "succeeded", job

    events = jobs.list_events.sync(job.id, client=client, limit=100)
    assert isinstance(events, models.ListPageEventPublic), events
    assert events.data and all(isinstance(e, models.EventPublic) for e in events.data)
    assert any("Created fine-tuning job" in e.message for e in events.data)

    predicted = models_api.predict.sync_detailed(
        job.fine_tuned_model, client=client,
        body=models.PredictRequest.from_dict({"inputs": ["good great fun", "bad awful dull"]}))
    assert predicted.status_code == 200, predicted.content
    assert [len(scores) for scores in predicted.parsed] == [2, 2]
    assert {s["label"] for s in predicted.parsed[0]} == {"positive", "negative"}

    archive = models_api.get_model_content.sync_detailed(job.fine_tuned_model, client=client)
    assert archive.status_code == 200 and archive.content[:2] == b"\x1f\x8b"  # gzip

    missing = files.get_file.sync("file-none", client=client)
    assert isinstance(missing, models.ErrorBody), missing
    assert missing.error.code == "not_found" and missing.error.param == "file_id"
