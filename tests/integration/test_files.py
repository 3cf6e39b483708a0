"""Dataset uploads over HTTP: accepted files, rejected files, and file management."""

import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import DatasetInvalid
from app.services.files import ACCEPTED, DatasetLimits, parse_dataset
from tests.integration.helpers import (
    assert_error,
    csv_bytes,
    jsonl_bytes,
    upload,
    upload_rows,
)
from tests.unit.tiny_model import sentiment_rows

ROWS = sentiment_rows(12)


def artifact_leftovers(settings: Settings) -> list[Path]:
    root = settings.resolved_artifact_dir
    return [p for sub in ("files", "tmp") if (root / sub).is_dir()
            for p in (root / sub).rglob("*")]


def test_upload_jsonl(client: TestClient) -> None:
    content = jsonl_bytes(ROWS + [{"text": "the plot was dull", "label": "neutral",
                                   "source": "extra field"}])
    response = upload(client, content, "my train.jsonl")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "my train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["format"] == "jsonl"
    assert body["rows"] == 13
    assert body["fields"] == ["text", "label", "source"]
    assert body["detected_task"] == "text-classification"
    assert body["label_counts"] == {"negative": 6, "neutral": 1, "positive": 6}
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert isinstance(body["created_at"], int)


def test_upload_csv(client: TestClient) -> None:
    rows = [{"text": r["text"], "text_pair": "the story", "label": r["label"]} for r in ROWS]
    content = csv_bytes(rows)
    body = upload(client, content, "pairs.csv").json()
    assert body["format"] == "csv"
    assert body["rows"] == 12
    assert body["fields"] == ["text", "text_pair", "label"]
    assert body["label_counts"] == {"negative": 6, "positive": 6}
    assert body["detected_task"] == "text-classification"


def test_upload_sniffs_format_without_extension(client: TestClient) -> None:
    assert upload(client, jsonl_bytes(ROWS), "data").json()["format"] == "jsonl"
    assert upload(client, csv_bytes(ROWS), "data").json()["format"] == "csv"


def test_uploaded_filename_is_made_safe(client: TestClient) -> None:
    body = upload(client, jsonl_bytes(ROWS), "../../etc/<evil>.jsonl").json()
    assert "/" not in body["filename"] and "<" not in body["filename"]
    assert body["filename"].endswith(".jsonl")


def with_line(index: int, row: object) -> bytes:
    """ROWS as JSON lines with line `index` (1-based) replaced by `row` (bytes: verbatim)."""
    lines = jsonl_bytes(ROWS).splitlines(keepends=True)
    lines[index - 1] = row if isinstance(row, bytes) else jsonl_bytes([row])
    return b"".join(lines)


def gzipped() -> bytes:
    return gzip.compress(jsonl_bytes(ROWS))


def zipped() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.jsonl", jsonl_bytes(ROWS))
    return buffer.getvalue()


BAD_UPLOADS = [
    # id, filename, content, status, code, message fragments
    ("invalid-json", "t.jsonl", with_line(3, b'{"text": "good", "label": \n'), 422,
     "invalid_dataset", ["line 3", "not valid JSON"]),
    ("missing-label", "t.jsonl", with_line(4, {"text": "good film"}), 422,
     "invalid_dataset", ["line 4", "field 'label'", "is missing"]),
    ("label-not-string", "t.jsonl", with_line(2, {"text": "good", "label": 1}), 422,
     "invalid_dataset", ["line 2", "field 'label'", "must be a string"]),
    ("empty-text", "t.jsonl", with_line(5, {"text": "  ", "label": "positive"}), 422,
     "invalid_dataset", ["line 5", "field 'text'", "is empty"]),
    ("text-not-string", "t.jsonl", with_line(6, {"text": ["a"], "label": "positive"}), 422,
     "invalid_dataset", ["line 6", "field 'text'", "must be a string"]),
    ("not-an-object", "t.jsonl", with_line(7, b'["good", "positive"]\n'), 422,
     "invalid_dataset", ["line 7", "JSON object"]),
    ("nan", "t.jsonl", with_line(8, b'{"text": "good", "label": NaN}\n'), 422,
     "invalid_dataset", ["line 8", "NaN"]),
    ("nul-byte", "t.jsonl", with_line(2, b'{"text": "go\x00od", "label": "positive"}\n'), 422,
     "invalid_dataset", ["line 2", "NUL"]),
    ("utf16", "t.jsonl", jsonl_bytes(ROWS).decode().encode("utf-16"), 422,
     "invalid_dataset", ["line 1", "UTF-16"]),
    ("invalid-utf8", "t.jsonl", with_line(9, b'{"text": "caf\xe9", "label": "positive"}\n'), 422,
     "invalid_dataset", ["line 9", "UTF-8"]),
    ("gzip", "t.jsonl", gzipped(), 415, "unsupported_file_type", []),
    ("gzip-named-gz", "t.jsonl.gz", gzipped(), 415, "unsupported_file_type", []),
    ("zip", "t.csv", zipped(), 415, "unsupported_file_type", []),
    ("empty", "t.jsonl", b"", 422, "dataset_empty", []),
    ("blank-lines-only", "t.jsonl", b"\n\n  \n", 422, "dataset_empty", []),
    ("nine-rows", "t.jsonl", jsonl_bytes(ROWS[:9]), 422, "dataset_too_small",
     ["9 rows", "10"]),
    ("one-label", "t.jsonl", jsonl_bytes([{"text": "good", "label": "pos"}] * 12), 422,
     "invalid_dataset", ["field 'label'", "two distinct labels"]),
    ("mixed-pairs", "t.jsonl",
     jsonl_bytes([{**r, "text_pair": "x"} for r in ROWS[:5]] + ROWS[5:]), 422,
     "invalid_dataset", ["line 6", "field 'text_pair'"]),
    ("unknown-shape", "t.jsonl", jsonl_bytes([{"sentence": "a", "y": "b"}] * 12), 422,
     "invalid_dataset", ["line 1"]),
    ("multi-label-one-label", "t.jsonl", jsonl_bytes([{"text": "a", "labels": ["x"]}] * 12),
     422, "invalid_dataset", ["field 'labels'", "two distinct labels"]),
    ("csv-extra-cell", "t.csv", csv_bytes(ROWS) + b"good,positive,surplus\n", 422,
     "invalid_dataset", ["line 14", "more cells"]),
    ("csv-missing-label", "t.csv", csv_bytes(ROWS) + b"good film\n", 422,
     "invalid_dataset", ["line 14", "field 'label'"]),
]


@pytest.mark.parametrize("filename,content,status,code,fragments",
                         [case[1:] for case in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS])
def test_bad_upload_is_rejected_and_leaves_nothing(app_env: tuple[TestClient, Settings],
                                                   filename: str, content: bytes, status: int,
                                                   code: str, fragments: list[str]) -> None:
    client, settings = app_env
    response = upload(client, content, filename)
    error = assert_error(response, status, code, "file", *fragments)
    assert error["type"] == "invalid_request_error"
    assert artifact_leftovers(settings) == []
    assert client.get("/v1/files").json()["data"] == []


def test_empty_csv_is_dataset_empty(client: TestClient) -> None:
    assert_error(upload(client, b"", "t.csv"), 422, "dataset_empty", "file")


def test_purpose_must_be_fine_tune(app_env: tuple[TestClient, Settings]) -> None:
    client, settings = app_env
    response = upload(client, jsonl_bytes(ROWS), purpose="assistants")
    assert_error(response, 422, "invalid_request", "purpose", "fine-tune")
    assert artifact_leftovers(settings) == []


def test_upload_needs_a_file(client: TestClient) -> None:
    response = client.post("/v1/files", data={"purpose": "fine-tune"})
    assert_error(response, 422, None, "file")


def test_upload_over_size_limit(tmp_path: Path, models_dir: Path) -> None:
    from tests.integration.conftest import running_app

    with running_app(tmp_path / "data", models_dir, max_upload_bytes="2000") as (client, s):
        content = jsonl_bytes(sentiment_rows(100))
        assert len(content) > 2000
        assert_error(upload(client, content), 413, "payload_too_large", "file")
        assert artifact_leftovers(s) == []
        small = jsonl_bytes(ROWS)
        assert len(small) < 2000
        assert upload(client, small).status_code == 200


def test_get_list_content_and_delete(app_env: tuple[TestClient, Settings]) -> None:
    client, settings = app_env
    content = jsonl_bytes(ROWS)
    first = upload(client, content, "first.jsonl").json()
    second = upload(client, csv_bytes(ROWS), "second.csv").json()

    assert client.get(f"/v1/files/{first['id']}").json() == first
    listing = client.get("/v1/files").json()
    assert listing["object"] == "list"
    assert {f["id"] for f in listing["data"]} == {first["id"], second["id"]}

    raw = client.get(f"/v1/files/{first['id']}/content")
    assert raw.status_code == 200
    assert raw.content == content
    assert raw.headers["content-type"].startswith("application/jsonl")
    csv_raw = client.get(f"/v1/files/{second['id']}/content")
    assert csv_raw.content == csv_bytes(ROWS)
    assert csv_raw.headers["content-type"].startswith("text/csv")

    stored = list((settings.resolved_artifact_dir / "files").iterdir())
    assert len(stored) == 2
    deleted = client.delete(f"/v1/files/{first['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert len(list((settings.resolved_artifact_dir / "files").iterdir())) == 1
    assert_error(client.get(f"/v1/files/{first['id']}"), 404, "not_found")
    assert_error(client.get(f"/v1/files/{first['id']}/content"), 404, "not_found")
    assert_error(client.delete(f"/v1/files/{first['id']}"), 404, "not_found")
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [second["id"]]


def test_unknown_file_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/files/file-doesnotexist"), 404, "not_found", "file_id")


def test_file_used_by_a_job_cannot_be_deleted(client: TestClient) -> None:
    from tests.integration.conftest import BASE_MODEL

    file = upload_rows(client)
    job = client.post("/v1/fine_tuning/jobs",
                      json={"model": BASE_MODEL, "training_file": file["id"]})
    assert job.status_code == 201, job.text
    assert_error(client.delete(f"/v1/files/{file['id']}"), 409, "file_in_use", "file_id",
                 job.json()["id"])
    assert client.get(f"/v1/files/{file['id']}").status_code == 200
    # Cancelling the job does not free the file: the job's lineage still names it.
    client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
    assert_error(client.delete(f"/v1/files/{file['id']}"), 409, "file_in_use")


def test_list_files_pages_newest_first(client: TestClient) -> None:
    ids = [upload(client, jsonl_bytes(ROWS), f"part-{i}.jsonl").json()["id"] for i in range(5)]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", params={"limit": 10, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    assert client.get("/v1/files", params={"limit": 0}).status_code == 422


def test_a_limit_lowered_after_upload_does_not_refuse_the_accepted_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl_bytes(sentiment_rows(30)))
    lowered = DatasetLimits(max_line_bytes=10, max_rows=20, min_rows=50)
    with pytest.raises(DatasetInvalid):
        parse_dataset(path, "rows.jsonl", lowered)
    assert len(parse_dataset(path, "rows.jsonl", ACCEPTED).rows) == 30
