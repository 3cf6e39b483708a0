"""The spec says what the service enforces: declared statuses, strict types, limits, Allow."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.integration.helpers import assert_error, jsonl_bytes
from tests.unit.tiny_model import sentiment_rows

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/openapi.json").json()
    return body


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, methods in spec["paths"].items()
            for method, operation in methods.items()]


def test_every_error_status_has_the_error_body(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and path != "/readyz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == ERROR_REF, (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


@pytest.mark.parametrize("method,path,statuses", [
    ("POST", "/v1/files", {"200", "400", "401", "413", "415", "422", "429", "503"}),
    ("POST", "/v1/fine_tuning/jobs",
     {"200", "201", "400", "401", "404", "409", "413", "422", "429", "503"}),
    ("GET", "/v1/fine_tuning/jobs", {"200", "401", "404", "422", "429", "503"}),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", {"200", "401", "404", "409", "422", "429",
                                                      "503"}),
    ("GET", "/v1/models", {"200", "401", "429", "503"}),
    ("POST", "/v1/admin/keys", {"201", "400", "401", "403", "413", "422", "429", "503"}),
    ("GET", "/healthz", {"200"}),
    ("GET", "/readyz", {"200", "503"}),
])
def test_declared_statuses(spec: dict[str, Any], method: str, path: str,
                           statuses: set[str]) -> None:
    assert set(spec["paths"][path][method.lower()]["responses"]) == statuses


def test_the_predict_caps_are_in_the_spec(spec: dict[str, Any], settings: Settings) -> None:
    inputs = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    text, texts = inputs["anyOf"]
    assert text["maxLength"] == settings.max_predict_chars
    assert texts["maxItems"] == settings.max_predict_inputs


def test_upload_parts_are_in_the_spec(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    form = spec["components"]["schemas"][
        body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert form["required"] == ["file", "purpose"]
    assert form["properties"]["purpose"]["const"] == "fine-tune"
    assert form["additionalProperties"] is False


@pytest.mark.parametrize("purpose", ["", "assistants"])
def test_upload_purpose_outside_the_spec_is_refused(client: TestClient, purpose: str) -> None:
    response = client.post("/v1/files", data={"purpose": purpose},
                           files={"file": ("a.jsonl", jsonl_bytes(sentiment_rows(20)))})
    assert_error(response, 422, "invalid_request", "purpose")


@pytest.mark.parametrize("admin", [0, 1, "true", None])
def test_admin_flag_must_be_a_boolean(client: TestClient, admin: Any) -> None:
    response = client.post("/v1/admin/keys", json={"project": "strict", "admin": admin})
    assert_error(response, 422, "invalid_request", "admin")
    assert all(k["project_id"] != "strict" for k in client.get("/v1/admin/keys").json()["data"])


@pytest.mark.parametrize("parameters,param", [
    ({"stride": "5"}, "parameters.stride"),
    ({"stride": 5.0}, "parameters.stride"),
    ({"stride": True}, "parameters.stride"),
    ({"top_k": "3"}, "parameters.top_k"),
    ({"truncation": 1}, "parameters.truncation"),
    ({"max_new_tokens": [4]}, "parameters.max_new_tokens"),
])
def test_predict_parameters_are_strictly_typed(client: TestClient, parameters: dict[str, Any],
                                               param: str) -> None:
    response = client.post("/v1/models/any-model/predict",
                           json={"inputs": "x", "parameters": parameters})
    assert_error(response, 422, "invalid_request", param)


ALLOW = {"/v1/files": "GET, POST", "/v1/files/file-x": "DELETE, GET",
         "/v1/admin/keys": "GET, POST", "/v1/models/m": "DELETE, GET",
         "/v1/fine_tuning/jobs/ftjob-x/cancel": "POST"}


@pytest.mark.parametrize("method,path,allow", [
    (method, path, allow) for path, allow in ALLOW.items()
    for method in ("OPTIONS", "DELETE", "PUT", "PATCH") if method not in allow])
def test_405_and_options_list_every_method(client: TestClient, method: str, path: str,
                                           allow: str) -> None:
    response = client.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/v1/files/file-a%00b", "/v1/files?after=file-a%00b",
                                  "/v1/fine_tuning/jobs/ftjob-%00/events",
                                  "/v1/registry/na%00me"])
def test_an_id_with_a_nul_is_refused_before_any_lookup(client: TestClient, path: str) -> None:
    # PostgreSQL text cannot hold NUL: the spec says so, and every database answers alike.
    assert_error(client.get(path), 422, "invalid_request")
