from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import ProjectDep, SessionDep, SettingsDep, StoreDep
from app.errors import InvalidRequest
from app.schemas.common import Deleted, ListPage
from app.schemas.files import FilePublic
from app.services import files

router = APIRouter(prefix="/v1/files", tags=["files"])


UPLOAD_FIELDS = {"file", "purpose"}


@router.post("", response_model=FilePublic)
async def upload_file(request: Request, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form()], session: SessionDep,
                      settings: SettingsDep, store: StoreDep,
                      project_id: ProjectDep) -> FilePublic:
    unknown = set((await request.form()).keys()) - UPLOAD_FIELDS
    if unknown:
        raise InvalidRequest(f"Unknown form field(s): {', '.join(sorted(unknown))}.",
                             param=sorted(unknown)[0], code="unknown_field")
    # Parsing and validating every row is CPU work: keep it off the event loop.
    record = await run_in_threadpool(files.create_file, session, settings, store, project_id,
                                     file.filename or "upload", purpose, file.file)
    return FilePublic.of(record)


@router.get("", response_model=ListPage[FilePublic])
def list_files(session: SessionDep, project_id: ProjectDep, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000) -> ListPage[FilePublic]:
    rows, has_more = files.list_files(session, project_id, after, limit)
    return ListPage.of([FilePublic.of(f) for f in rows], has_more)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, session: SessionDep, project_id: ProjectDep) -> FilePublic:
    return FilePublic.of(files.get_file(session, project_id, file_id))


@router.get("/{file_id}/content", response_class=FileResponse)
def get_file_content(file_id: str, session: SessionDep, store: StoreDep,
                     project_id: ProjectDep) -> FileResponse:
    record = files.get_file(session, project_id, file_id)
    media = "application/jsonl" if record.format == "jsonl" else "text/csv"
    return FileResponse(store.local_path(record.storage_key), media_type=media,
                        filename=record.filename)


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(file_id: str, session: SessionDep, store: StoreDep,
                project_id: ProjectDep) -> Deleted:
    files.delete_file(session, store, project_id, file_id)
    return Deleted(id=file_id, object="file")
