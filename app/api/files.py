from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import ProjectDep, SessionDep, SettingsDep, StoreDep
from app.api.params import After, ResourceId
from app.api.spec import errors, links
from app.schemas.common import Deleted, ListPage
from app.schemas.files import FilePublic, UploadForm
from app.services import files

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FilePublic, responses={
    **errors(415), 200: links("file_id", "get_file", "get_file_content", "delete_file")})
async def upload_file(form: Annotated[UploadForm, Form(media_type="multipart/form-data")],
                      session: SessionDep, settings: SettingsDep, store: StoreDep,
                      project_id: ProjectDep) -> FilePublic:
    # Parsing and validating every row is CPU work: keep it off the event loop.
    record = await run_in_threadpool(files.create_file, session, settings, store, project_id,
                                     form.file.filename or "upload", form.purpose,
                                     form.file.file)
    return FilePublic.of(record)


# 404: an `after` that names no file.
@router.get("", response_model=ListPage[FilePublic], responses=errors(404))
def list_files(session: SessionDep, project_id: ProjectDep, after: After = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000) -> ListPage[FilePublic]:
    rows, has_more = files.list_files(session, project_id, after, limit)
    return ListPage.of([FilePublic.of(f) for f in rows], has_more)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: ResourceId, session: SessionDep, project_id: ProjectDep) -> FilePublic:
    return FilePublic.of(files.get_file(session, project_id, file_id))


@router.get("/{file_id}/content", response_class=FileResponse, responses={200: {
    "description": "The file as it was uploaded.",
    "content": {"application/jsonl": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}}}}})
def get_file_content(file_id: ResourceId, session: SessionDep, store: StoreDep,
                     project_id: ProjectDep) -> Response:
    record = files.get_file(session, project_id, file_id)
    media = "application/jsonl" if record.format == "jsonl" else "text/csv"
    content = files.file_content(store, record)
    if isinstance(content, Path):
        return FileResponse(content, media_type=media, filename=record.filename)
    # The stored name holds only [A-Za-z0-9._ -]: safe inside the quotes as it is.
    return StreamingResponse(content, media_type=media, headers={
        "Content-Length": str(record.bytes),
        "Content-Disposition": f'attachment; filename="{record.filename}"'})


# 409: a job's lineage still needs the file.
@router.delete("/{file_id}", response_model=Deleted, responses=errors(409))
def delete_file(file_id: ResourceId, session: SessionDep, store: StoreDep,
                project_id: ProjectDep) -> Deleted:
    files.delete_file(session, store, project_id, file_id)
    return Deleted(id=file_id, object="file")
