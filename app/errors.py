"""Domain errors with stable codes.

Raised by services and app.ml; mapped to HTTP once, in app.api.errors."""


class TuneforgeError(Exception):
    """Base class: `code` is stable and documented, `param` names the offending field."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(TuneforgeError):
    code = "invalid_request"


class DatasetInvalid(TuneforgeError):
    """A dataset row is malformed; the message names the line and the field."""

    code = "invalid_dataset"

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None,
                 param: str = "file", code: str | None = None):
        where = f"line {line}" if line is not None else ""
        if field:
            where = f"{where}, field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message, param=param, code=code)
        self.line = line
        self.field = field


class UnsupportedMediaType(TuneforgeError):
    code = "unsupported_file_type"


class PayloadTooLarge(TuneforgeError):
    code = "payload_too_large"


class NotFound(TuneforgeError):
    code = "not_found"


class Conflict(TuneforgeError):
    code = "conflict"


class ModelNotReady(Conflict):
    code = "model_not_ready"


class JobNotCancellable(Conflict):
    """The job has already ended."""

    code = "job_not_cancellable"


class JobNotPausable(Conflict):
    """Only a queued or running job can be paused."""

    code = "job_not_pausable"


class JobNotPaused(Conflict):
    """Only a paused job can be resumed."""

    code = "job_not_paused"


class IdempotencyMismatch(TuneforgeError):
    code = "idempotency_key_reused"


class InvalidHeader(TuneforgeError):
    """A request header is malformed: the request itself is wrong, not a field of its body."""

    code = "invalid_header"


class Unauthorized(TuneforgeError):
    code = "invalid_api_key"


class Forbidden(TuneforgeError):
    code = "permission_denied"


class RateLimited(TuneforgeError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class StorageUnavailable(TuneforgeError):
    """The artifact store (an S3-compatible bucket) cannot be reached right now."""

    code = "storage_unavailable"
