"""S3/S9: clients cannot set server-owned fields; errors never leak internals."""

import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.security.service import TINY_MODEL, Service, running_service

LEAKS = ("Traceback", "File \"", "SELECT ", "sqlite", "psycopg", "/tmp/", "/work/")


def assert_clean(response, *secrets: str) -> None:
    body = response.text
    for marker in (*LEAKS, *secrets):
        assert marker not in body, (marker, body)
    assert set(response.json()["error"]) >= {"code", "message", "param"}


@pytest.mark.parametrize("field", ["status", "project_id", "organization_id", "attempt",
                                   "fine_tuned_model", "artifact_key", "worker", "lease"])
def test_server_owned_job_fields_are_rejected(service: Service, field: str) -> None:
    file_id = service.upload(service.admin_key)
    response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(), json={
        "model": TINY_MODEL, "training_file": file_id, field: "x"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == field
    assert_clean(response)


def test_unknown_fields_are_rejected_everywhere(service: Service) -> None:
    file_id = service.upload(service.admin_key)
    cases = [
        ("/v1/fine_tuning/jobs", {"model": TINY_MODEL, "training_file": file_id,
                                  "hyperparameters": {"n_epochs": 1, "epochs": 3}}),
        ("/v1/models/anything/predict", {"inputs": "x", "model_path": "/etc"}),
        ("/v1/models/anything/predict", {"inputs": "x", "parameters": {"device": "cuda"}}),
        ("/v1/admin/keys", {"project": "p", "key_hash": "00"}),
    ]
    for path, body in cases:
        response = service.client.post(path, json=body, headers=service.headers())
        assert response.status_code == 422, (path, response.text)
        assert_clean(response)
    response = service.client.post("/v1/files", headers=service.headers(),
                                   data={"purpose": "fine-tune", "status": "processed"},
                                   files={"file": ("a.jsonl", b'{"text":"a","label":"b"}')})
    assert response.status_code == 422 and response.json()["error"]["param"] == "status"


def test_error_bodies_carry_no_internals(service: Service) -> None:
    responses = [
        service.client.get("/v1/files/file-nope", headers=service.headers()),
        service.client.get("/v1/nowhere", headers=service.headers()),
        service.client.put("/v1/files", headers=service.headers()),
        service.client.post("/v1/fine_tuning/jobs", content=b"{not json",
                            headers={**service.headers(), "Content-Type": "application/json"}),
        service.client.post("/v1/files", headers=service.headers(), data={"purpose": "x"},
                            files={"file": ("a.jsonl", b"\x00\x01")}),
        service.client.post("/v1/files", headers=service.headers(),
                            data={"purpose": "fine-tune"},
                            files={"file": ("a.jsonl", b'{"text": "a", "label": NaN}')}),
        service.client.get("/v1/files", headers={"Authorization": "Bearer " + "k" * 40}),
    ]
    assert [r.status_code for r in responses] == [404, 404, 405, 422, 422, 422, 401]
    for response in responses:
        assert_clean(response, service.admin_key, "k" * 40)


def test_database_fault_is_a_clean_503(tmp_path: Path) -> None:
    with running_service(tmp_path) as service:
        engine = create_engine(service.settings.resolved_database_url)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE job_events"))
        file_id = service.upload(service.admin_key)
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(),
                                       json={"model": TINY_MODEL, "training_file": file_id})
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert_clean(response, service.admin_key)


def test_keys_never_reach_the_logs(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = service.new_key("quiet")
    service.client.get("/v1/files", headers=service.headers(key))
    service.client.get("/v1/files", headers=service.headers("tf-wrong-" + "x" * 30))
    assert key not in caplog.text and service.admin_key not in caplog.text
    assert "x" * 30 not in caplog.text
