from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.db.models import ModelVersion
from app.schemas.common import NO_NUL, StrictModel


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str | None = None
    base_model: str | None = None
    version: int | None = None
    metrics: dict[str, Any] | None = None

    @classmethod
    def of_version(cls, version: ModelVersion) -> "ModelPublic":
        return cls(id=version.id, created=int(version.created_at), owned_by=version.project_id,
                   task=version.task, base_model=version.base_model, version=version.version,
                   metrics=version.metrics)


class VersionPublic(BaseModel):
    id: str
    version: int
    created_at: int
    task: str
    labels: list[str]
    metrics: dict[str, Any]
    lineage: dict[str, Any]

    @classmethod
    def of(cls, version: ModelVersion) -> "VersionPublic":
        return cls(id=version.id, version=version.version, created_at=int(version.created_at),
                   task=version.task, labels=version.labels, metrics=version.metrics,
                   lineage=version.lineage)


class RegisteredModelPublic(BaseModel):
    object: Literal["registered_model"] = "registered_model"
    name: str
    created_at: int
    versions: list[VersionPublic]
    aliases: dict[str, str]


# A name (as NAME_PATTERN) that does not look like a version: not `v` and digits.
ALIAS_PATTERN = r"^(?:[A-Za-uw-z0-9][A-Za-z0-9_.-]*|v|v[0-9]*[A-Za-z_.-][A-Za-z0-9_.-]*)$"


class AliasUpdate(StrictModel):
    version: Annotated[str, Field(min_length=1, max_length=120, pattern=NO_NUL)]


class AliasPublic(BaseModel):
    object: Literal["model_alias"] = "model_alias"
    name: str
    alias: str
    version: str
