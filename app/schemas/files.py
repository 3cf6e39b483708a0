from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict

from app.db.models import DatasetFile


class UploadForm(BaseModel):
    """The parts of an upload; any other part is refused (422), never ignored."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile
    purpose: Literal["fine-tune"]


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    format: str
    rows: int
    fields: list[str]
    detected_task: str
    label_counts: dict[str, int]
    sha256: str

    @classmethod
    def of(cls, record: DatasetFile) -> "FilePublic":
        return cls(id=record.id, bytes=record.bytes, created_at=int(record.created_at),
                   filename=record.filename, purpose=record.purpose, format=record.format,
                   rows=record.rows, fields=record.fields, detected_task=record.detected_task,
                   label_counts=record.label_counts, sha256=record.sha256)
