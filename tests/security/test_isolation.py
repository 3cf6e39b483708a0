"""S2: each project sees only its own objects. A foreign id answers 404 on every route."""

import re
from dataclasses import dataclass

import pytest

from tests.security.service import Service


@dataclass
class Tenants:
    owner_key: str
    other_key: str
    ids: dict[str, str]


@pytest.fixture(scope="module")
def tenants(service: Service) -> Tenants:
    owner = service.new_key("owner")
    other = service.new_key("intruder")
    file_id = service.upload(owner)
    version = service.train(owner, file_id)
    response = service.client.put("/v1/registry/secret/aliases/production",
                                  json={"version": "1"}, headers=service.headers(owner))
    assert response.status_code == 200, response.text
    queued_job = service.create_job(owner, file_id, suffix="queued")
    # A public address, so no setting has to allow it; no job here fails, so nothing is sent.
    webhook = service.client.post("/v1/webhooks", headers=service.headers(owner), json={
        "url": "https://93.184.216.34/hooks", "events": ["fine_tuning.job.failed"]})
    assert webhook.status_code == 201, webhook.text
    return Tenants(owner, other, {"file_id": file_id, "job_id": queued_job,
                                  "model_id": version, "name": "secret",
                                  "alias": "production", "webhook_id": webhook.json()["id"]})


BODIES = {"/predict": {"inputs": "the film was good"}, "/aliases/": {"version": "1"}}


def id_taking_operations(service: Service) -> list[tuple[str, str]]:
    spec = service.client.get("/openapi.json").json()
    return [(method.upper(), path) for path, item in spec["paths"].items()
            if "{" in path and not path.startswith("/v1/admin") for method in item]


def _call(service: Service, key: str, method: str, template: str, ids: dict[str, str]):
    path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)
    body = next((b for marker, b in BODIES.items() if marker in template), None)
    return service.client.request(method, path, json=body, headers=service.headers(key))


def test_every_id_taking_route_hides_foreign_objects(service: Service, tenants: Tenants) -> None:
    operations = id_taking_operations(service)
    assert len(operations) >= 12, operations
    for method, template in operations:
        response = _call(service, tenants.other_key, method, template, tenants.ids)
        assert response.status_code == 404, (method, template, response.text)
        # The owner still has everything, deletes included: the intruder changed nothing.
        if method == "GET":
            owner_view = _call(service, tenants.owner_key, method, template, tenants.ids)
            assert owner_view.status_code == 200, (method, template, owner_view.text)


def test_the_owner_can_use_every_route(service: Service, tenants: Tenants) -> None:
    predict = _call(service, tenants.owner_key, "POST", "/v1/models/{model_id}/predict",
                    tenants.ids)
    assert predict.status_code == 200
    assert predict.headers["X-Tuneforge-Model-Version"] == tenants.ids["model_id"]


def test_lists_show_only_own_objects(service: Service, tenants: Tenants) -> None:
    for path in ("/v1/files", "/v1/fine_tuning/jobs"):
        own = service.client.get(path, headers=service.headers(tenants.owner_key)).json()
        foreign = service.client.get(path, headers=service.headers(tenants.other_key)).json()
        assert own["data"], path
        assert foreign["data"] == [], path
    models = service.client.get("/v1/models", headers=service.headers(tenants.other_key)).json()
    ids = {m["id"] for m in models["data"]}
    assert tenants.ids["model_id"] not in ids
    # Base models are shared, read-only.
    assert {"minilm-l6", "tiny-bert"} <= ids


def test_foreign_files_cannot_train_and_foreign_models_cannot_be_a_base(
        service: Service, tenants: Tenants) -> None:
    response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(
        tenants.other_key), json={"model": "tiny-bert", "training_file": tenants.ids["file_id"]})
    assert response.status_code == 404
    own_file = service.upload(tenants.other_key)
    response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(
        tenants.other_key), json={"model": tenants.ids["model_id"], "training_file": own_file})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "model_not_found"
