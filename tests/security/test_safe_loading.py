"""S4-S6: no unpickling of user bytes, no paths from ids, no URL fetching."""

import pickle
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.security.service import TINY_MODEL, Service, running_service

REPO = Path(__file__).resolve().parents[2]


class _Sentinel:
    """Unpickling this creates a file: proof that something unpickled user bytes."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_service_code_never_unpickles_or_runs_remote_code() -> None:
    sources = {p: p.read_text() for folder in ("app", "worker")
               for p in (REPO / folder).rglob("*.py")}
    for path, source in sources.items():
        assert not re.search(r"trust_remote_code\s*=\s*True", source), path
        assert not re.search(r"pickle\.loads?\(", source), path
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, (path, call)


def test_pickle_uploaded_as_dataset_is_refused(service: Service, tmp_path: Path) -> None:
    sentinel = tmp_path / "unpickled"
    for protocol in (2, 4, 5):
        payload = pickle.dumps(_Sentinel(sentinel), protocol=protocol)
        response = service.client.post("/v1/files", headers=service.headers(),
                                       data={"purpose": "fine-tune"},
                                       files={"file": ("data.jsonl", payload)})
        assert response.status_code in (415, 422), response.text
    assert not sentinel.exists()


def test_pickle_weights_are_never_loaded(tmp_path: Path) -> None:
    sentinel = tmp_path / "unpickled"
    with running_service(tmp_path) as service:
        models = service.settings.resolved_models_dir
        # A model folder with only pickle weights is not a base model at all.
        pickled_only = models / "pickled-only"
        pickled_only.mkdir()
        shutil.copy(models / TINY_MODEL / "config.json", pickled_only)
        (pickled_only / "pytorch_model.bin").write_bytes(pickle.dumps(_Sentinel(sentinel)))
        # A folder with both loads the safetensors and ignores the pickle beside it.
        both = models / "both-formats"
        shutil.copytree(models / TINY_MODEL, both)
        (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Sentinel(sentinel)))
        listed = {m["id"] for m in service.client.get(
            "/v1/models", headers=service.headers()).json()["data"]}
        assert "pickled-only" not in listed and "both-formats" in listed
        file_id = service.upload(service.admin_key)
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(),
                                       json={"model": "pickled-only", "training_file": file_id})
        assert response.status_code == 422
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(), json={
            "model": "both-formats", "training_file": file_id, "suffix": "safe",
            "hyperparameters": {"n_epochs": 1}})
        assert response.status_code == 201
        from app.services.training_runs import run_job
        run_job(service.settings, response.json()["id"], worker="security-tests")
        job = service.client.get(f"/v1/fine_tuning/jobs/{response.json()['id']}",
                                 headers=service.headers()).json()
        assert job["status"] == "succeeded", job
    assert not sentinel.exists()


TRAVERSALS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc",
              "..%5c..%5cwindows", "%2Fetc%2Fpasswd", "name%00.safetensors"]


@pytest.mark.parametrize("evil", TRAVERSALS)
def test_ids_in_urls_are_never_paths(service: Service, evil: str) -> None:
    for method, path in (("GET", f"/v1/files/{evil}"), ("GET", f"/v1/files/{evil}/content"),
                         ("DELETE", f"/v1/files/{evil}"), ("GET", f"/v1/models/{evil}"),
                         ("GET", f"/v1/fine_tuning/jobs/{evil}"),
                         ("GET", f"/v1/registry/{evil}")):
        response = service.client.request(method, path, headers=service.headers())
        assert response.status_code in (404, 405, 422), (method, path, response.status_code)
        assert "root:" not in response.text
    response = service.client.post(f"/v1/models/{evil}/predict", headers=service.headers(),
                                   json={"inputs": "x"})
    assert response.status_code in (404, 422)


@pytest.mark.parametrize("model", ["../../etc", "/etc", "..\\..\\windows", f"{TINY_MODEL}/..",
                                   f"../{TINY_MODEL}", "name\x00.safetensors", "tiny-bert/../../x"])
def test_model_names_are_never_paths(service: Service, model: str) -> None:
    file_id = service.upload(service.admin_key)
    response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(),
                                   json={"model": model, "training_file": file_id})
    assert response.status_code == 422, response.text


def test_names_chosen_by_clients_cannot_escape(service: Service) -> None:
    file_id = service.upload(service.admin_key, name="../../../../tmp/escaped.jsonl")
    record = service.client.get(f"/v1/files/{file_id}", headers=service.headers()).json()
    assert "/" not in record["filename"]
    assert not Path("/tmp/escaped.jsonl").exists()
    for suffix in ("../x", "/abs", "a/b", ".hidden"):
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(),
                                       json={"model": TINY_MODEL, "training_file": file_id,
                                             "suffix": suffix})
        assert response.status_code == 422, suffix
    response = service.client.put("/v1/registry/secret/aliases/..%2F..", headers=service.headers(),
                                  json={"version": "1"})
    assert response.status_code in (404, 422)


def test_no_field_fetches_a_url(service: Service) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    file_id = service.upload(service.admin_key)
    attempts = [{"model": url, "training_file": file_id},
                {"model": "file:///etc/passwd", "training_file": file_id},
                {"model": TINY_MODEL, "training_file": url},
                {"model": TINY_MODEL, "training_file": file_id, "validation_file": url},
                {"model": TINY_MODEL, "training_file": file_id, "dataset_url": url}]
    for body in attempts:
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(),
                                       json=body)
        assert response.status_code in (404, 422), (body, response.text)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
