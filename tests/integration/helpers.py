"""Helpers for the API tests: building dataset files and checking error bodies."""

import json
from collections.abc import Iterable
from typing import Any

import httpx

from tests.unit.tiny_model import sentiment_rows


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(row[k] for k in header) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def upload(client: Any, content: bytes, filename: str = "train.jsonl",
           purpose: str = "fine-tune") -> httpx.Response:
    return client.post("/v1/files", data={"purpose": purpose},
                       files={"file": (filename, content, "application/octet-stream")})


def upload_rows(client: Any, rows: list[dict[str, str]] | None = None,
                filename: str = "train.jsonl") -> dict[str, Any]:
    response = upload(client, jsonl_bytes(rows or sentiment_rows(40)), filename)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str | None = None,
                 param: str | None = None, *fragments: str) -> dict[str, Any]:
    """The response is an error in the contract's shape; returns its `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"code", "message", "param", "type"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], error
    return error
