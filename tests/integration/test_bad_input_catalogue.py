"""Cases from the bad-input catalogue not covered elsewhere: each gets a 4xx with a code."""

from fastapi.testclient import TestClient

from tests.integration.conftest import BASE_MODEL
from tests.integration.helpers import assert_error, upload_rows


def test_too_many_multipart_parts(client: TestClient) -> None:
    boundary = "b0undary"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'
                    for i in range(1_100))
    body = (parts + f"--{boundary}--\r\n").encode()
    response = client.post("/v1/files", content=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code in (400, 413), response.text
    assert_error(response, response.status_code)


def test_wrong_method_says_what_is_allowed(client: TestClient) -> None:
    response = client.put("/v1/fine_tuning/jobs")
    assert_error(response, 405, "method_not_allowed")
    allowed = set(response.headers["Allow"].replace(" ", "").split(","))
    assert allowed and allowed <= {"GET", "POST"}, allowed


def test_validation_file_identical_to_training_file(client: TestClient) -> None:
    training = upload_rows(client, filename="train.jsonl")
    same_again = upload_rows(client, filename="copy.jsonl")
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL, "training_file": training["id"],
        "validation_file": same_again["id"]})
    assert_error(response, 422, "validation_overlaps_training", "validation_file")


def test_json_body_with_the_wrong_content_type(client: TestClient) -> None:
    response = client.post("/v1/fine_tuning/jobs", content=b"model=minilm-l6",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code in (415, 422), response.text
    assert_error(response, response.status_code)
