"""S1: only keys get in. Keys are stored hashed, shown once, revocable."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.security.service import Service, running_service

OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect",
               "/redoc"}


def guarded_operations(service: Service) -> list[tuple[str, str]]:
    spec = service.client.get("/openapi.json").json()
    return [(method.upper(), path.replace("{", "").replace("}", ""))
            for path, item in spec["paths"].items() if path not in OPEN_ROUTES
            for method in item]


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer wrong-key",
                                           "Basic Zm9vOmJhcg==", "tf-not-bearer"])
def test_every_route_but_health_needs_a_valid_key(service: Service,
                                                  authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    operations = guarded_operations(service)
    assert len(operations) >= 15
    for method, path in operations:
        response = service.client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_health_needs_no_key(service: Service) -> None:
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get("/readyz").status_code == 200


def test_keys_are_stored_hashed_and_shown_once(service: Service) -> None:
    key = service.new_key("hashing")
    engine = create_engine(service.settings.resolved_database_url)
    with engine.connect() as connection:
        dump = " ".join(str(row) for row in connection.execute(text("SELECT * FROM api_keys")))
    assert key not in dump and service.admin_key not in dump
    listed = service.client.get("/v1/admin/keys", headers=service.headers()).text
    assert key not in listed and service.admin_key not in listed


def test_revoked_key_is_refused(service: Service) -> None:
    key = service.new_key("revoking")
    assert service.client.get("/v1/files", headers=service.headers(key)).status_code == 200
    key_id = next(k["id"] for k in service.client.get(
        "/v1/admin/keys", headers=service.headers()).json()["data"] if key.startswith(k["prefix"]))
    assert service.client.delete(f"/v1/admin/keys/{key_id}",
                                 headers=service.headers()).status_code == 200
    response = service.client.get("/v1/files", headers=service.headers(key))
    assert response.status_code == 401


def test_admin_routes_need_an_admin_key(service: Service) -> None:
    key = service.new_key("plain")
    response = service.client.post("/v1/admin/keys", json={"project": "x"},
                                   headers=service.headers(key))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_generated_admin_key_is_private_and_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_DATA_DIR"] = str(tmp_path)
    created = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--project",
                              "scripted"], env=env, capture_output=True, text=True, check=True)
    scripted_key = created.stdout.strip().splitlines()[-1]
    assert scripted_key.startswith("tf-") and " " not in scripted_key
    # No admin key yet: the first start makes one, writes it 0600, and it is an admin key.
    with running_service(tmp_path / "svc", DATA_DIR=tmp_path, BOOTSTRAP_KEY=None):
        pass
    key_file = tmp_path / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    admin_key = key_file.read_text().strip()
    with running_service(tmp_path / "svc2", DATA_DIR=tmp_path, BOOTSTRAP_KEY=None) as service:
        assert service.client.get("/v1/admin/keys",
                                  headers=service.headers(admin_key)).status_code == 200
        assert service.client.get("/v1/files",
                                  headers=service.headers(scripted_key)).status_code == 200
        assert service.client.get("/v1/admin/keys",
                                  headers=service.headers(scripted_key)).status_code == 403
