"""A job's events as Server-Sent Events: what is new since the last one sent, until the job
ends.

Each read is a short session of its own in a worker thread: a stream may last minutes, and
holding a session (or the event loop) across them would starve everyone else.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob, JobEvent
from app.db.session import session_scope
from app.domain.statuses import TERMINAL
from app.errors import NotFound
from app.schemas.jobs import EventPublic
from app.services.jobs import get_job

RESUME_HEADER = "Last-Event-ID"
# Events read per query; a longer backlog is read in several.
READ_BATCH = 100
KEEP_ALIVE = ": keep-alive\n\n"


def resume_point(session: Session, project_id: str, job_id: str,
                 last_event_id: str | None) -> int:
    """The position after which the stream starts (0: from the first event). The job is
    checked here, before the response starts, so an unknown one still answers 404."""
    get_job(session, project_id, job_id)
    if not last_event_id:
        return 0
    seq = session.scalar(select(JobEvent.seq).where(JobEvent.job_id == job_id,
                                                    JobEvent.id == last_event_id))
    if seq is None:
        raise NotFound(f"No event with id '{last_event_id}' in job '{job_id}'.",
                       param=RESUME_HEADER)
    return seq


def events_after(settings: Settings, job_id: str,
                 seq: int) -> tuple[Sequence[JobEvent], bool]:
    """Events after position `seq`, oldest first, and whether the job has ended with them."""
    with session_scope(settings) as session:
        # Status first: the events of the move that ended the job were committed with it,
        # so they are among those read next.
        status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                        JobEvent.seq > seq)
                                 .order_by(JobEvent.seq).limit(READ_BATCH)).all()
    return events, status in TERMINAL and len(events) < READ_BATCH


def as_message(event: JobEvent) -> str:
    return f"id: {event.id}\ndata: {json.dumps(EventPublic.of(event).model_dump())}\n\n"


async def stream_events(settings: Settings, job_id: str, seq: int) -> AsyncIterator[str]:
    """SSE messages from position `seq` on, a keep-alive comment when quiet; ends when the
    job has ended and its last events are sent, or the stream has lasted
    `events_stream_seconds` (the client resumes with Last-Event-ID).

    A client that hangs up cancels this generator where it waits: the streaming response
    listens for the disconnect (and a server on ASGI 2.4 fails the next write)."""
    started = last_sent = time.monotonic()
    while time.monotonic() - started < settings.events_stream_seconds:
        events, ended = await asyncio.to_thread(events_after, settings, job_id, seq)
        for event in events:
            yield as_message(event)
            seq, last_sent = event.seq, time.monotonic()
        if ended:
            return
        if time.monotonic() - last_sent >= settings.events_keepalive_seconds:
            yield KEEP_ALIVE
            last_sent = time.monotonic()
        if len(events) < READ_BATCH:
            await asyncio.sleep(settings.events_poll_seconds)
