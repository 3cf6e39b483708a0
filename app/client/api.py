"""A thin HTTP client of the Tuneforge REST API (../shared/design/API.md), one method a route."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# Long enough for an upload that the service parses in full, or a predict on a cold model.
TIMEOUT_S = 300.0


class ClientError(Exception):
    """A request that did not get the answer it asked for; the message is for the user."""


class ApiError(ClientError):
    """The service refused the request; its error body says why."""

    def __init__(self, status: int, code: str | None, message: str, param: str | None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class Unreachable(ClientError):
    """No answer from the service at all."""


class ServiceClient:
    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)
        except httpx.InvalidURL as exc:
            raise ClientError(f"{url} is not a URL the client can use ({exc})") from None

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def upload_file(self, path: Path, purpose: str) -> Any:
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ClientError(f"{path}: {exc.strerror or exc}") from None
        with handle:
            return self._call("POST", "/v1/files", data={"purpose": purpose},
                              files={"file": (path.name, handle)})

    def create_job(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/v1/fine_tuning/jobs", json=body)

    def list_jobs(self, limit: int, status: str | None) -> Any:
        params = {"limit": limit, **({"status": status} if status else {})}
        return self._call("GET", "/v1/fine_tuning/jobs", params=params)

    def get_job(self, job_id: str) -> Any:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def list_events(self, job_id: str, after: str | None = None, limit: int = 100) -> Any:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params)

    def change_job(self, job_id: str, verb: str) -> Any:
        """`verb` is cancel, pause or resume."""
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/{verb}")

    def predict(self, model: str, inputs: list[str]) -> Any:
        return self._call("POST", f"/v1/models/{model}/predict", json={"inputs": inputs})

    def list_models(self) -> Any:
        return self._call("GET", "/v1/models")

    def download_model(self, model: str, write: Callable[[bytes], object],
                       archive_format: str | None = None) -> str:
        """Stream a version's archive to `write`; the file name the service gave it."""
        params = {"format": archive_format} if archive_format else None
        try:
            with self._http.stream("GET", f"/v1/models/{model}/content",
                                   params=params) as response:
                if response.is_error:
                    response.read()
                    raise api_error(response)
                for chunk in response.iter_bytes():
                    write(chunk)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._unreachable(exc) from None
        return archive_filename(response.headers.get("content-disposition", ""), model)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise api_error(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{self.url} answered {method} {path} with something other "
                              "than JSON; is it a Tuneforge service?") from None


    def _unreachable(self, exc: httpx.TransportError | httpx.InvalidURL) -> Unreachable:
        return Unreachable(f"could not reach the Tuneforge service at {self.url} "
                           f"({_reason(exc)}); is it running? Set --url or TUNEFORGE_URL.")


def archive_filename(disposition: str, model: str) -> str:
    """The name in Content-Disposition, reduced to a plain file name in this folder."""
    match = re.search(r'filename="([^"]*)"', disposition)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(match.group(1) if match else model).name)
    name = name.strip("-.")
    return name if name.endswith(".tar.gz") else f"{name or 'model'}.tar.gz"


def api_error(response: httpx.Response) -> ApiError:
    """The service's {"error": {...}} body, or what there is of an answer from something else
    (a proxy's error page)."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error.get("code"), str(error["message"]),
                        error.get("param"))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ApiError(response.status_code, None, f"HTTP {response.status_code} from "
                        f"{response.request.url}: {text}", None)


def _reason(exc: httpx.TransportError | httpx.InvalidURL) -> str:
    # httpx's messages for refused connections are OS strings ("[Errno 111] Connection
    # refused"); the class says what kind of failure it was when the message is empty.
    return str(exc) or type(exc).__name__
