"""S7/S8: every limit is a setting, and crossing it gets a clear 4xx."""

import secrets
import time
from pathlib import Path

import pytest

from app.errors import RateLimited
from app.services import ratelimit
from tests.security.service import running_service
from tests.unit.tiny_model import sentiment_rows


def _jsonl(rows: int) -> bytes:
    return "\n".join(f'{{"text": "{r["text"]}", "label": "{r["label"]}"}}'
                     for r in sentiment_rows(rows)).encode()


def test_upload_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with running_service(tmp_path, MAX_UPLOAD_BYTES=2_000) as service:
        body = _jsonl(200)
        response = service.client.post("/v1/files", headers=service.headers(),
                                       data={"purpose": "fine-tune"},
                                       files={"file": ("big.jsonl", body, "application/jsonl")})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        # A chunked body (no Content-Length) is cut off while streaming.
        def chunks():
            for _ in range(200):
                yield b"x" * 10_000

        response = service.client.post("/v1/files", headers={
            **service.headers(), "Content-Type": "multipart/form-data; boundary=b"},
            content=chunks())
        assert response.status_code == 413
        spool = service.settings.resolved_artifact_dir / "tmp"
        assert not spool.exists() or not any(spool.iterdir())


def test_line_and_row_limits_name_the_line(tmp_path: Path) -> None:
    with running_service(tmp_path, MAX_LINE_BYTES=200, MAX_ROWS=30) as service:
        long_line = _jsonl(12) + b'\n{"text": "' + b"a" * 300 + b'", "label": "positive"}'
        response = service.client.post("/v1/files", headers=service.headers(),
                                       data={"purpose": "fine-tune"},
                                       files={"file": ("long.jsonl", long_line)})
        assert response.status_code == 422
        assert "line 13" in response.json()["error"]["message"]
        response = service.client.post("/v1/files", headers=service.headers(),
                                       data={"purpose": "fine-tune"},
                                       files={"file": ("many.jsonl", _jsonl(40))})
        assert response.status_code == 422
        assert "more than 30 rows" in response.json()["error"]["message"]


def test_predict_caps_inputs_and_characters(tmp_path: Path) -> None:
    with running_service(tmp_path, MAX_PREDICT_INPUTS=4, MAX_PREDICT_CHARS=100) as service:
        version = service.train(service.admin_key, service.upload(service.admin_key))
        url = f"/v1/models/{version}/predict"
        ok = service.client.post(url, json={"inputs": ["good"] * 4}, headers=service.headers())
        assert ok.status_code == 200 and len(ok.json()) == 4
        many = service.client.post(url, json={"inputs": ["good"] * 5},
                                   headers=service.headers())
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_inputs"
        long = service.client.post(url, json={"inputs": "good " * 30},
                                   headers=service.headers())
        assert long.status_code == 413 and long.json()["error"]["code"] == "input_too_long"


def test_queued_and_running_jobs_are_capped_per_project(tmp_path: Path) -> None:
    with running_service(tmp_path, MAX_ACTIVE_JOBS_PER_PROJECT=2) as service:
        other = service.new_key("other-team")
        file_id = service.upload(service.admin_key)
        service.create_job(service.admin_key, file_id, suffix="one")
        service.create_job(service.admin_key, file_id, suffix="two")
        response = service.client.post("/v1/fine_tuning/jobs", headers=service.headers(), json={
            "model": "tiny-bert", "training_file": file_id})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        # Another project's cap is its own.
        service.create_job(other, service.upload(other), suffix="three")


def _away_from_a_window_edge() -> None:
    if time.time() % ratelimit.WINDOW_SECONDS > ratelimit.WINDOW_SECONDS - 5:
        time.sleep(6)


def test_rate_limit_per_key_with_retry_after(tmp_path: Path) -> None:
    with running_service(tmp_path, RATE_LIMIT_PER_MINUTE=5) as service:
        _away_from_a_window_edge()
        other = service.new_key("calm")  # the admin key's first request
        statuses = [service.client.get("/v1/files", headers=service.headers()).status_code
                    for _ in range(6)]
        assert statuses[:4] == [200] * 4 and statuses[-1] == 429, statuses
        limited = service.client.get("/v1/files", headers=service.headers())
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert service.client.get("/v1/files", headers=service.headers(other)).status_code == 200


def test_redis_counters_are_shared_between_api_processes() -> None:
    url = "redis://127.0.0.1:6379/13"
    first, second = ratelimit.RedisRateLimiter(url), ratelimit.RedisRateLimiter(url)
    key_id = "key-" + secrets.token_hex(8)
    _away_from_a_window_edge()
    for limiter in (first, second, first):
        ratelimit.enforce(limiter, key_id, per_minute=3)
    with pytest.raises(RateLimited):
        ratelimit.enforce(second, key_id, per_minute=3)
    ratelimit.enforce(first, "key-" + secrets.token_hex(8), per_minute=3)


def test_rate_limits_fail_open_when_redis_is_unreachable() -> None:
    unreachable = ratelimit.RedisRateLimiter("redis://127.0.0.1:1/0")
    ratelimit.enforce(unreachable, "key-any", per_minute=0)
