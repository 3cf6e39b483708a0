"""Service-level behaviour: health, unknown routes, wrong methods, and the API key."""

import pytest
from fastapi.testclient import TestClient

from tests.integration.helpers import assert_error


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": True, "broker": True}}


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/files/x/y/z", "/v2/models"])
def test_unknown_route_is_404_in_error_format(client: TestClient, path: str) -> None:
    error = assert_error(client.get(path), 404, "not_found")
    assert error["param"] is None


@pytest.mark.parametrize("method,path", [("DELETE", "/v1/files"), ("PUT", "/v1/fine_tuning/jobs"),
                                         ("GET", "/v1/models/x/predict"),
                                         ("POST", "/healthz")])
def test_wrong_method_is_405_in_error_format(client: TestClient, method: str,
                                             path: str) -> None:
    response = client.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]


def test_openapi_schema_is_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/fine_tuning/jobs" in schema["paths"]
    assert "/v1/models/{model_id}/predict" in schema["paths"]


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong-key-0123456789",
                                           "Basic dXNlcjpwYXNz"])
def test_v1_routes_need_a_valid_key(client: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    # The client sends the bootstrap key by default; override or drop it.
    client.headers.pop("Authorization", None)
    try:
        for method, path in (("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"),
                             ("GET", "/v1/models"), ("POST", "/v1/models/x/predict")):
            response = client.request(method, path, headers=headers)
            assert_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
    finally:
        from tests.integration.conftest import AUTH

        client.headers.update(AUTH)
    assert client.get("/v1/files").status_code == 200
