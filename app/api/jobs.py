from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import ProjectDep, SendDep, SessionDep, SettingsDep
from app.api.params import After, ResourceId
from app.api.spec import errors, links
from app.domain.statuses import JobStatus
from app.schemas.common import NO_NUL, NOT_BLANK, ListPage
from app.schemas.jobs import CheckpointPublic, EventPublic, JobCreate, JobPublic, TrialPublic
from app.services import event_stream, jobs, outbox
from app.services.event_stream import RESUME_HEADER
from app.services.jobs import IDEMPOTENCY_HEADER

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=100)]
# Absent, or up to 200 characters with at least one that is not blank (400 otherwise).
IdempotencyKey = Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=200, pattern=NOT_BLANK,
                        description="Makes a retried create return the job the first request "
                                    "made (200) instead of a second job.")
StatusFilter = Annotated[str | None, Query(pattern=f"^({'|'.join(JobStatus)})$")]


# Links: the new job's id is what every /{job_id} operation takes.
JOB_LINKS = links("job_id", "get_job", "cancel_job", "pause_job", "resume_job", "list_events",
                  "list_checkpoints", "list_trials")


@router.post("", response_model=JobPublic, status_code=201, responses={
    **errors(404, 409),
    201: JOB_LINKS,
    200: {"model": JobPublic, "description": "The job an earlier request with this "
                                             "Idempotency-Key made.", **JOB_LINKS}})
def create_job(body: JobCreate, response: Response, session: SessionDep, settings: SettingsDep,
               send: SendDep, project_id: ProjectDep,
               idempotency_key: Annotated[str | None, IdempotencyKey] = None
               ) -> JobPublic:
    job, created = jobs.create_job(session, settings, project_id, body, idempotency_key)
    if created:
        outbox.dispatch(session, settings, job.id, send)
    else:
        response.status_code = 200
    return JobPublic.of(job)


# 404: an `after` that names no job.
@router.get("", response_model=ListPage[JobPublic], responses=errors(404))
def list_jobs(session: SessionDep, project_id: ProjectDep, after: After = None,
              limit: Limit = 20, status: StatusFilter = None) -> ListPage[JobPublic]:
    rows, has_more = jobs.list_jobs(session, project_id, after, limit, status)
    return ListPage.of([JobPublic.of(j) for j in rows], has_more)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: ResourceId, session: SessionDep, project_id: ProjectDep) -> JobPublic:
    return JobPublic.of(jobs.get_job(session, project_id, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(409))
def cancel_job(job_id: ResourceId, session: SessionDep, project_id: ProjectDep) -> JobPublic:
    return JobPublic.of(jobs.cancel_job(session, project_id, job_id))


@router.post("/{job_id}/pause", response_model=JobPublic, responses=errors(409))
def pause_job(job_id: ResourceId, session: SessionDep, project_id: ProjectDep) -> JobPublic:
    return JobPublic.of(jobs.pause_job(session, project_id, job_id))


@router.post("/{job_id}/resume", response_model=JobPublic, responses=errors(409))
def resume_job(job_id: ResourceId, session: SessionDep, settings: SettingsDep, send: SendDep,
               project_id: ProjectDep) -> JobPublic:
    job = jobs.resume_job(session, settings, project_id, job_id)
    outbox.dispatch(session, settings, job.id, send)
    return JobPublic.of(job)


# With stream=true: the events as Server-Sent Events, oldest first, live until the job ends.
# One event, as OpenAPI 3.1 tools (schemathesis among them) read `schema` under an event stream.
SSE_EVENT = {"type": "object", "required": ["id", "data"], "properties": {
    "id": {"type": "string"}, "event": {"type": "string"},
    "data": {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"$ref": "#/components/schemas/EventPublic"}}}}
EVENT_STREAM = {"description": "With `stream=true`: Server-Sent Events, each with `id:` (the "
                               "event id) and `data:` (the event object); `: keep-alive` "
                               "comments while quiet; the stream ends once the job has ended.",
                "content": {"text/event-stream": {"schema": SSE_EVENT}}}
Stream = Annotated[bool, Query(description="Send the events as Server-Sent Events.")]
LastEventId = Header(alias=RESUME_HEADER, min_length=1, max_length=200, pattern=NO_NUL,
                     description="With stream=true: resume after this event.")


@router.get("/{job_id}/events", response_model=ListPage[EventPublic],
            responses={200: EVENT_STREAM})
def list_events(job_id: ResourceId, session: SessionDep,
                settings: SettingsDep, project_id: ProjectDep, after: After = None,
                limit: Limit = 20, stream: Stream = False,
                last_event_id: Annotated[str | None, LastEventId] = None) -> Any:
    if stream:
        seq = event_stream.resume_point(session, project_id, job_id, last_event_id)
        return StreamingResponse(
            event_stream.stream_events(settings, job_id, seq),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows, has_more = jobs.list_events(session, project_id, job_id, after, limit)
    return ListPage.of([EventPublic.of(e) for e in rows], has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointPublic])
def list_checkpoints(job_id: ResourceId, session: SessionDep, project_id: ProjectDep,
                     after: After = None, limit: Limit = 10
                     ) -> ListPage[CheckpointPublic]:
    rows, has_more = jobs.list_checkpoints(session, project_id, job_id, after, limit)
    return ListPage.of([CheckpointPublic.of(c) for c in rows], has_more)



# A search job's trials (hyperparameters.search); any other job has none.
@router.get("/{job_id}/trials", response_model=ListPage[TrialPublic])
def list_trials(job_id: ResourceId, session: SessionDep,
                project_id: ProjectDep) -> ListPage[TrialPublic]:
    return ListPage.of([TrialPublic.of(t) for t in jobs.list_trials(session, project_id, job_id)])
