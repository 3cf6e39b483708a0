"""Webhook endpoints and their delivery log."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.domain.statuses import TERMINAL
from app.schemas.common import StrictModel

# A job's outcomes: what a caller waits for. The moves in between (queued, running, paused)
# are the job's events and its live stream.
EVENT_TYPES = tuple(sorted(f"fine_tuning.job.{status}" for status in TERMINAL))
_ALTERNATIVES = "|".join(t.replace(".", "[.]") for t in EVENT_TYPES)
EventType = Annotated[str, Field(pattern=f"^({_ALTERNATIVES})$")]


class WebhookCreate(StrictModel):
    url: Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://[^\x00\s]+$",
                              description="http or https; the host must resolve to public "
                                          "addresses only (unless the deployment allows "
                                          "private ones).")]
    events: Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))] | None \
        = Field(default=None, description="Event types to send; omitted: all of them.")


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None
    created_at: int

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> "WebhookPublic":
        return cls(id=endpoint.id, url=endpoint.url, events=endpoint.events,
                   created_at=int(endpoint.created_at))


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="whsec_… : verifies each delivery's webhook-signature. "
                                    "Shown once.")


class AttemptPublic(BaseModel):
    number: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None

    @classmethod
    def of(cls, attempt: WebhookAttempt) -> "AttemptPublic":
        return cls(number=attempt.number, started_at=attempt.started_at,
                   duration_ms=attempt.duration_ms, status_code=attempt.status_code,
                   error=attempt.error)


class DeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    created_at: int
    next_attempt_at: float | None
    finished_at: float | None
    attempts: list[AttemptPublic]

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> "DeliveryPublic":
        return cls(id=delivery.id, event_id=delivery.event_id, event_type=delivery.event_type,
                   status=delivery.status,  # type: ignore[arg-type]
                   created_at=int(delivery.created_at),
                   next_attempt_at=delivery.next_attempt_at,
                   finished_at=delivery.finished_at,
                   attempts=[AttemptPublic.of(a) for a in delivery.attempts])
