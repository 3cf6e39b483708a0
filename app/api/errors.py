"""Domain errors to HTTP, in one place. No response ever carries a traceback."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from app import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.TuneforgeError], int] = {
    errors.InvalidRequest: 422,
    errors.DatasetInvalid: 422,
    errors.IdempotencyMismatch: 422,
    errors.InvalidHeader: 400,
    errors.UnsupportedMediaType: 415,
    errors.PayloadTooLarge: 413,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ModelNotReady: 409,
    errors.JobNotCancellable: 409,
    errors.JobNotPausable: 409,
    errors.JobNotPaused: 409,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.RateLimited: 429,
    errors.StorageUnavailable: 503,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key",
               413: "payload_too_large", 400: "bad_request"}


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"code": code, "message": message, "param": param, "type": kind}}
    return JSONResponse(body, status_code=status, headers=headers)


def _status_of(exc: errors.TuneforgeError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.TuneforgeError)
    headers = {}
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, errors.StorageUnavailable):
        headers["Retry-After"] = "5"
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="tuneforge"'
    return error_response(_status_of(exc), exc.code, exc.message, exc.param, headers)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = first.get("loc", ())
    if len(where) > 1 and where[0] == "header":
        # A malformed header is a malformed request (400), named as clients spell it.
        header = "-".join(word.capitalize() for word in str(where[1]).split("-"))
        return error_response(400, errors.InvalidHeader.code,
                              f"{header}: {first.get('msg', 'invalid header')}", header)
    location = [str(part) for part in where if _is_field(part)]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request.")
    return error_response(422, "invalid_request", f"{param}: {message}" if param else message,
                          param)


def _is_field(part: object) -> bool:
    """Field names and list indexes, not pydantic's union-member tags or the request part."""
    if isinstance(part, int):
        return True
    text = str(part)
    return text.isidentifier() and text not in ("body", "query", "path", "header", "str",
                                                "int", "float", "list", "dict", "bool")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405 and (methods := allowed_methods(request)):
        # The router names the methods of the first route on the path, one of several.
        headers = {"Allow": ", ".join(methods)}
    return error_response(exc.status_code, code, str(exc.detail), None, headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the published spec lists at this request's path."""
    segments = request.url.path.rstrip("/").split("/")
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = template.split("/")
        if len(parts) == len(segments) and all(
                part == segment or (part.startswith("{") and part.endswith("}") and segment)
                for part, segment in zip(parts, segments, strict=True)):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    # The spec keeps such values out (no NUL in an id); should one get through, it is the
    # request's fault, not the server's.
    log.warning("value refused by the database on %s %s: %s", request.method,
                request.url.path, exc)
    return error_response(422, "invalid_value", "A value in this request cannot be stored "
                          "or looked up (text with a NUL character, or out of range).")


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(503, "database_unavailable", "The database is unavailable; retry "
                          "shortly.", None, {"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "The server hit an unexpected error; it has "
                          "been logged.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.TuneforgeError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(Exception, _unexpected)
