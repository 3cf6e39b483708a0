"""Shapes shared by every resource."""

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
# Holds a character that str.strip() keeps: JSON Schema's \s, and the separators \x1c-\x1f
# that Python also strips.
NOT_BLANK = r"[^\s\x1c-\x1f]"
# No NUL character: PostgreSQL text cannot hold one.
NO_NUL = r"^[^\x00]*$"


class StrictModel(BaseModel):
    """Request bodies: unknown fields are an error, never silently ignored, and a value of
    the wrong JSON type is an error, never converted (`0` is not `false`, `"5"` not `5`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None
    type: str = "invalid_request_error"


class ErrorBody(BaseModel):
    error: ErrorDetail


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[T], has_more: bool = False) -> "ListPage[T]":
        ids = [getattr(item, "id", None) for item in data]
        return cls(data=data, has_more=has_more, first_id=ids[0] if ids else None,
                   last_id=ids[-1] if ids else None)


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
