from typing import Literal

from pydantic import BaseModel

from app.db.models import DatasetFile


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
