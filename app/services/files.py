"""Dataset files: stream to disk, validate every row, then keep (or discard) the whole file."""

import hashlib
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import DatasetFile, FineTuningJob
from app.db.session import after_commit
from app.errors import Conflict, DatasetInvalid, InvalidRequest, NotFound, PayloadTooLarge
from app.ids import new_id, now
from app.ml.datasets import detect_format, read_rows
from app.ml.tasks.base import Row, TaskAdapter
from app.ml.tasks.catalog import PLAIN_TEXT_TASK, detect_task, get_task, is_plain_text
from app.services.pages import by_creation, newest_first
from app.storage.artifacts import ArtifactStore

CHUNK = 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


@dataclass
class ParsedDataset:
    format: str
    task: str
    rows: list[Row]
    lines: list[int]
    fields: list[str]


def _spool(stream: BinaryIO, target: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The file is larger than the {limit}-byte limit.",
                                      param="file")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class DatasetLimits:
    max_line_bytes: int
    max_rows: int
    min_rows: int

    @classmethod
    def of(cls, settings: Settings) -> "DatasetLimits":
        return cls(settings.max_line_bytes, settings.max_rows, settings.min_rows)


# A file is held to the limits in force when it was uploaded, once: lowering a limit later
# must not fail a job whose file was already accepted.
ACCEPTED = DatasetLimits(max_line_bytes=sys.maxsize, max_rows=sys.maxsize, min_rows=0)


def parse_dataset(path: Path, filename: str, limits: DatasetLimits) -> ParsedDataset:
    with path.open("rb") as handle:
        fmt = detect_format(filename, handle.read(8))
    rows: list[Row] = []
    lines: list[int] = []
    fields: dict[str, None] = {}

    def keep(adapter: TaskAdapter, line: int, raw: Row) -> None:
        rows.append(adapter.validate_row(raw, line))
        lines.append(line)

    adapter = None
    # Plain-text rows fit every task's text field: until a row shows the file's task, they
    # wait, so a classification file whose first rows lack a label is told so, by line.
    waiting: list[tuple[int, Row]] = []
    for line, raw in read_rows(path, fmt, limits.max_line_bytes):
        fields.update(dict.fromkeys(raw))
        if len(rows) + len(waiting) >= limits.max_rows:
            raise DatasetInvalid(f"the file has more than {limits.max_rows} rows", line=line)
        if adapter is None and is_plain_text(raw):
            waiting.append((line, raw))
            continue
        adapter = adapter or detect_task(raw, line)
        for earlier in waiting:
            keep(adapter, *earlier)
        waiting = []
        keep(adapter, line, raw)
    if adapter is None and waiting:
        adapter = get_task(PLAIN_TEXT_TASK)  # every row is plain text: continued pretraining
        for earlier in waiting:
            keep(adapter, *earlier)
    if adapter is None:
        raise DatasetInvalid("the file has no rows", code="dataset_empty")
    if len(rows) < limits.min_rows:
        raise DatasetInvalid(f"the file has {len(rows)} rows; at least {limits.min_rows} are "
                             "needed", code="dataset_too_small")
    adapter.validate_dataset(rows, lines)
    return ParsedDataset(fmt, adapter.name, rows, lines, list(fields))


def create_file(session: Session, settings: Settings, store: ArtifactStore, project_id: str,
                filename: str, purpose: str, stream: BinaryIO) -> DatasetFile:
    if purpose != "fine-tune":
        raise InvalidRequest("purpose must be 'fine-tune'.", param="purpose")
    display_name = _SAFE_NAME.sub("_", filename or "upload")[-255:]
    spool_dir = store.work_dir("tmp")
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False) as tmp:
        spool = Path(tmp.name)
    try:
        size, sha256 = _spool(stream, spool, settings.max_upload_bytes)
        parsed = parse_dataset(spool, display_name, DatasetLimits.of(settings))
        key = store.new_key("files")
        store.put_file(spool, key)
    finally:
        spool.unlink(missing_ok=True)  # whatever failed, no half-written file stays behind
    record = DatasetFile(
        id=new_id("file"), project_id=project_id, filename=display_name, purpose=purpose,
        bytes=size, format=parsed.format, rows=len(parsed.rows), fields=parsed.fields,
        detected_task=parsed.task, label_counts=get_task(parsed.task).label_counts(parsed.rows),
        sha256=sha256, storage_key=key, created_at=now(),
    )
    session.add(record)
    session.flush()
    return record


def get_file(session: Session, project_id: str, file_id: str) -> DatasetFile:
    record = session.scalar(select(DatasetFile).where(
        DatasetFile.id == file_id, DatasetFile.project_id == project_id))
    if record is None:
        raise NotFound(f"No file with id '{file_id}'.", param="file_id")
    return record


def list_files(session: Session, project_id: str, after: str | None,
               limit: int) -> tuple[Sequence[DatasetFile], bool]:
    """Newest first, `limit` at a time; `after` is the last id of the previous page."""
    query = select(DatasetFile).where(DatasetFile.project_id == project_id)
    cursor = get_file(session, project_id, after) if after else None
    return newest_first(session, query, by_creation(DatasetFile), cursor, limit)


def delete_file(session: Session, store: ArtifactStore, project_id: str, file_id: str) -> None:
    record = get_file(session, project_id, file_id)
    user = session.scalar(select(FineTuningJob.id).where(
        (FineTuningJob.training_file == file_id) | (FineTuningJob.validation_file == file_id)))
    if user is not None:
        raise Conflict(f"File '{file_id}' is used by job '{user}'; its lineage needs it.",
                       param="file_id", code="file_in_use")
    session.delete(record)
    session.flush()
    # Files go once the row is gone for good: a failed commit leaves both in place.
    after_commit(session, lambda: store.delete(record.storage_key))


def file_content(store: ArtifactStore, record: DatasetFile) -> Path | Iterator[bytes]:
    """The file as uploaded: its local copy where this machine has one, else streamed from
    the store (a bucket), never held whole in memory."""
    return store.cached_path(record.storage_key) or store.chunks(record.storage_key)


def load_rows(store: ArtifactStore, record: DatasetFile) -> list[Row]:
    """Rows in canonical form, for training; the file was fully validated at upload."""
    return parse_dataset(store.local_path(record.storage_key), record.filename, ACCEPTED).rows
