"""Webhook endpoints of a project, and the deliveries a job's outcome enqueues.

Deliveries are an outbox: rows written in the transaction that moves the job, so an
outcome is reported exactly when it is stored, and a restart loses none. The dispatcher
(app/services/webhook_delivery.py) sends them.
"""

import base64
import json
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob, WebhookDelivery, WebhookEndpoint
from app.domain.statuses import JobStatus
from app.errors import NotFound
from app.ids import new_id, now
from app.schemas.webhooks import EVENT_TYPES, WebhookCreate
from app.services.destinations import resolve_destination
from app.services.pages import by_creation, newest_first

SECRET_PREFIX = "whsec_"
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def create_endpoint(session: Session, settings: Settings, project_id: str,
                    request: WebhookCreate) -> WebhookEndpoint:
    resolve_destination(request.url, settings.webhook_allow_private)
    endpoint = WebhookEndpoint(id=new_id("wh"), project_id=project_id, url=request.url,
                               events=request.events, secret=new_secret(), created_at=now())
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, project_id: str, webhook_id: str) -> WebhookEndpoint:
    endpoint = session.scalar(select(WebhookEndpoint).where(
        WebhookEndpoint.id == webhook_id, WebhookEndpoint.project_id == project_id))
    if endpoint is None:
        raise NotFound(f"No webhook with id '{webhook_id}'.", param="webhook_id")
    return endpoint


def list_endpoints(session: Session, project_id: str, after: str | None,
                   limit: int) -> tuple[Sequence[WebhookEndpoint], bool]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)
    cursor = get_endpoint(session, project_id, after) if after else None
    return newest_first(session, query, by_creation(WebhookEndpoint), cursor, limit)


def delete_endpoint(session: Session, project_id: str, webhook_id: str) -> None:
    """The endpoint and its delivery log; nothing more is sent to it."""
    session.delete(get_endpoint(session, project_id, webhook_id))
    session.flush()


def list_deliveries(session: Session, project_id: str, webhook_id: str, after: str | None,
                    limit: int) -> tuple[Sequence[WebhookDelivery], bool]:
    get_endpoint(session, project_id, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == webhook_id)
    cursor = None
    if after:
        cursor = session.scalar(query.where(WebhookDelivery.id == after))
        if cursor is None:
            raise NotFound(f"No delivery with id '{after}'.", param="after")
    return newest_first(session, query, by_creation(WebhookDelivery), cursor, limit)


def enqueue_job_event(session: Session, job: FineTuningJob, status: JobStatus) -> None:
    """A delivery for each of the project's endpoints that wants `fine_tuning.job.<status>`,
    in the caller's transaction: it is sent only if the move it reports is stored."""
    event_type = f"fine_tuning.job.{status}"
    if event_type not in EVENT_TYPES:
        return
    endpoints = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.project_id == job.project_id)).all()
    wanted = [e for e in endpoints if e.events is None or event_type in e.events]
    if not wanted:
        return
    moment = now()
    event_id = f"evt_{secrets.token_hex(12)}"
    payload = json.dumps({"id": event_id, "object": "event", "created_at": int(moment),
                          "type": event_type, "data": {"id": job.id, "status": str(status)}},
                         separators=(",", ":"))
    for endpoint in wanted:
        session.add(WebhookDelivery(
            id=new_id("whdel"), endpoint_id=endpoint.id, event_id=event_id,
            event_type=event_type, payload=payload, status=PENDING, attempt_count=0,
            next_attempt_at=moment, created_at=moment))
