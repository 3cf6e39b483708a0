from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.db.models import ApiKey
from app.schemas.common import StrictModel
from app.schemas.jobs import NAME_PATTERN


class KeyCreate(StrictModel):
    project: Annotated[str, Field(pattern=NAME_PATTERN)]
    admin: bool = False


class KeyPublic(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    project_id: str
    prefix: str
    admin: bool
    created_at: int
    revoked_at: int | None

    @classmethod
    def of(cls, record: ApiKey) -> "KeyPublic":
        return cls(id=record.id, project_id=record.project_id, prefix=record.prefix,
                   admin=record.admin, created_at=int(record.created_at),
                   revoked_at=int(record.revoked_at) if record.revoked_at else None)


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself. Shown once; only its hash is stored.")
