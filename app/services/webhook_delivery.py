"""Sending webhook deliveries: claim what is due, sign it, POST it, log the attempt.

A claim is a conditional UPDATE that moves the delivery's due time ahead by a lease, so
several API processes never send one delivery twice at once, and a process that dies
mid-send leaves the delivery due again once the lease runs out. Failures are retried with
exponential backoff until `webhook_max_attempts`, then the delivery is failed.
Signatures follow Standard Webhooks, as OpenAI's webhooks do.
"""

import base64
import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.db.session import session_scope
from app.errors import InvalidRequest
from app.ids import now
from app.services.destinations import resolve_destination
from app.services.webhooks import FAILED, PENDING, SECRET_PREFIX, SUCCEEDED

log = logging.getLogger(__name__)
# Deliveries claimed per round: a burst of outcomes is sent over a few rounds.
CLAIM_BATCH = 20


@dataclass(frozen=True)
class Outgoing:
    delivery_id: str
    event_id: str
    url: str
    secret: str
    payload: str


@dataclass(frozen=True)
class Outcome:
    started_at: float
    duration_ms: float
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature(secret: str, event_id: str, timestamp: int, payload: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{event_id}.{timestamp}.{payload}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def claim_due(session: Session, lease_seconds: float) -> list[Outgoing]:
    moment = now()
    due = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= moment)
        .order_by(WebhookDelivery.next_attempt_at).limit(CLAIM_BATCH)).all()
    return [Outgoing(delivery.id, delivery.event_id, endpoint.url, endpoint.secret,
                     delivery.payload)
            for delivery, endpoint in due if _claim(session, delivery, moment + lease_seconds)]


def _claim(session: Session, delivery: WebhookDelivery, until: float) -> bool:
    # Only if nobody claimed it since we read it: its due time is still the one we saw.
    claimed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == PENDING,
               WebhookDelivery.next_attempt_at == delivery.next_attempt_at)
        .values(next_attempt_at=until).execution_options(synchronize_session=False))
    return claimed.rowcount == 1  # type: ignore[attr-defined]


def post(settings: Settings, outgoing: Outgoing) -> Outcome:
    """One signed POST, to the address checked just now; redirects are not followed."""
    started, clock = now(), time.monotonic()
    try:
        destination = resolve_destination(outgoing.url, settings.webhook_allow_private)
        status = _send(settings, outgoing, destination.address, destination.host)
    except InvalidRequest as exc:
        return Outcome(started, _since(clock), error=exc.message)
    except httpx.HTTPError as exc:
        return Outcome(started, _since(clock), error=f"{type(exc).__name__}: {exc}"[:500])
    return Outcome(started, _since(clock), status_code=status)


def _send(settings: Settings, outgoing: Outgoing, address: str, host: str) -> int:
    url = httpx.URL(outgoing.url)
    timestamp = int(now())
    headers = {"Host": url.netloc.decode(), "Content-Type": "application/json",
               "User-Agent": "Tuneforge-Webhooks/1", "webhook-id": outgoing.event_id,
               "webhook-timestamp": str(timestamp),
               "webhook-signature": signature(outgoing.secret, outgoing.event_id, timestamp,
                                              outgoing.payload)}
    # Connect to the checked address; TLS still verifies the certificate for the host name.
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False,
                      trust_env=False) as client, \
            client.stream("POST", url.copy_with(host=address), content=outgoing.payload,
                          headers=headers, extensions={"sni_hostname": host}) as response:
        return response.status_code  # the body is never read: receivers owe us nothing


def _since(clock: float) -> float:
    return round((time.monotonic() - clock) * 1000, 1)


def record_attempt(session: Session, settings: Settings, delivery_id: str,
                   outcome: Outcome) -> None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:  # its endpoint was deleted meanwhile
        return
    delivery.attempt_count += 1
    session.add(WebhookAttempt(delivery_id=delivery_id, number=delivery.attempt_count,
                               started_at=outcome.started_at, duration_ms=outcome.duration_ms,
                               status_code=outcome.status_code, error=outcome.error))
    if outcome.delivered or delivery.attempt_count >= settings.webhook_max_attempts:
        delivery.status = SUCCEEDED if outcome.delivered else FAILED
        delivery.finished_at, delivery.next_attempt_at = now(), None
    else:
        backoff = settings.webhook_retry_seconds * 2 ** (delivery.attempt_count - 1)
        delivery.next_attempt_at = now() + backoff
    session.flush()


def deliver_due(settings: Settings) -> int:
    """Send every delivery due now; how many were sent."""
    lease = settings.webhook_timeout_seconds * 2 + 30
    with session_scope(settings) as session:
        claimed = claim_due(session, lease)
    for outgoing in claimed:
        outcome = post(settings, outgoing)
        with session_scope(settings) as session:
            record_attempt(session, settings, outgoing.delivery_id, outcome)
    return len(claimed)


class WebhookDispatcher:
    """Runs deliver_due periodically in a background thread of the API process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_seconds):
            try:
                deliver_due(self.settings)
            except Exception:
                log.warning("webhook delivery round failed; retrying next round",
                            exc_info=True)
