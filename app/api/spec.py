"""What /openapi.json promises beyond what FastAPI derives from the routes.

Clients are generated from the spec, so every status an operation can answer is declared,
each error with the error body. The statuses that follow from an operation's shape (a key,
a path id, parameters, a body) are derived here, once, from the operation itself; routes
declare only the ones their domain adds (`errors(409)`). Limits that come from the
settings (the predict caps) are written in at startup."""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.config import Settings
from app.schemas.common import ErrorBody

Responses = dict[int | str, dict[str, Any]]

REASONS = {
    400: "A body that does not parse, or a malformed header (`param` names it).",
    401: "No API key, or one that is unknown or revoked.",
    403: "The key is not an admin key.",
    404: "No such resource in the caller's project; `param` says which.",
    409: "The resource is not in a state that allows this.",
    413: "The body, the file or the predict request is over its limit.",
    415: "Not a JSON lines or CSV file.",
    422: "A field, parameter or dataset row is invalid; `param` names it.",
    429: "Too many requests (or active jobs) for this key; retry after `Retry-After`.",
    503: "The database is unavailable; retry after `Retry-After`.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "How to authenticate: a bearer key.",
                               "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# FastAPI's own 422 body, which our validation handler never sends.
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


def errors(*statuses: int) -> Responses:
    """A route's own error statuses, for its `responses=`."""
    return {status: {"model": ErrorBody, "description": REASONS[status],
                     **({"headers": HEADERS[status]} if status in HEADERS else {})}
            for status in statuses}


def links(parameter: str, *operation_ids: str, field: str = "id") -> dict[str, Any]:
    """OpenAPI links: the response's `field` is the `parameter` of each operation named."""
    return {"links": {operation_id: {"operationId": operation_id,
                                     "parameters": {parameter: f"$response.body#/{field}"}}
                      for operation_id in operation_ids}}


def operation_id(route: APIRoute) -> str:
    """The handler's name (`create_job`): what generated clients call the operation."""
    return route.name


def publish_spec(app: FastAPI, settings: Settings) -> None:
    """Make app.openapi() return the spec with every error status and the live limits."""
    generate = app.openapi
    published: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, cached until the routes change
        if not published or published[0] is not schema:
            declare_errors(schema)
            declare_file_parts(schema)
            declare_predict_limits(schema, settings)
            declare_queues(schema, settings)
            published[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def declare_errors(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body_schema.pop("$defs", {}))
    components["ErrorBody"] = body_schema
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            for status in sorted(statuses_of(operation)):
                if status == 422 or str(status) not in responses:
                    responses[str(status)] = _error_response(status)
    for name in _FASTAPI_422:
        components.pop(name, None)


def statuses_of(operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer because of its shape."""
    parameters = operation.get("parameters", [])
    body = operation.get("requestBody")
    statuses = set()
    if operation.get("security"):
        # The key check, the per-key rate limit, and the database behind both.
        statuses |= {401, 429, 503}
    if any(p["in"] == "path" for p in parameters):
        statuses.add(404)
    if parameters or body:
        statuses.add(422)
    if body:
        # 400: a body that does not parse (bytes that are not UTF-8, broken multipart).
        statuses |= {400, 413}
    if any(p["in"] == "header" for p in parameters):
        statuses.add(400)
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"description": REASONS[status],
                                "content": {"application/json": {"schema": ERROR_REF}}}
    if status in HEADERS:
        response["headers"] = HEADERS[status]
    return response


def declare_file_parts(schema: dict[str, Any]) -> None:
    """File parts of multipart bodies as `format: binary` too, beside OpenAPI 3.1's
    `contentMediaType`: the spelling client generators read as a file (openapi-python-client
    would otherwise send the file as a plain text part, without a filename)."""
    components = schema["components"]["schemas"]
    for operations in schema["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("multipart/form-data", {}).get("schema", {}).get("$ref", "")
            form = components.get(ref.rsplit("/", 1)[-1], {})
            for part in form.get("properties", {}).values():
                if part.get("type") == "string" and "contentMediaType" in part:
                    part["format"] = "binary"


def declare_predict_limits(schema: dict[str, Any], settings: Settings) -> None:
    """The caps predict enforces (413 beyond them), as this deployment has them set."""
    request = schema["components"]["schemas"].get("PredictRequest")
    if request is None:
        return
    inputs = request["properties"]["inputs"]
    for variant in inputs.get("anyOf", [inputs]):
        if variant.get("type") == "array":
            variant["maxItems"] = settings.max_predict_inputs
            variant.setdefault("items", {})["maxLength"] = settings.max_predict_chars
        elif variant.get("type") == "string":
            variant["maxLength"] = settings.max_predict_chars
    inputs["description"] = (f"One text, or a list of at most {settings.max_predict_inputs}; "
                             f"at most {settings.max_predict_chars} characters in all.")


def declare_queues(schema: dict[str, Any], settings: Settings) -> None:
    """The worker queues a job may name, as this deployment offers them (422 for others)."""
    compute = schema["components"]["schemas"].get("ComputeIn", {})
    queue = compute.get("properties", {}).get("queue")
    if queue is not None:
        names = [variant for variant in queue.get("anyOf", [queue])
                 if variant.get("type") == "string"]
        for variant in names:
            variant["enum"] = list(settings.queues)
        queue["description"] = (f"The worker queue to train on: one of "
                                f"{', '.join(settings.queues)}; none: {settings.default_queue}.")
