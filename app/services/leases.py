"""A worker's claim on a job: a conditional update, renewed by heartbeats, fenced by attempt."""

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from app.config import Settings
from app.db.models import FineTuningJob
from app.db.session import session_scope
from app.domain.lifecycle import transition
from app.domain.statuses import JobStatus, StopReason
from app.ids import now

log = logging.getLogger(__name__)

# Set when the worker is asked to shut down (SIGTERM): the running job checkpoints,
# goes back to the queue, and the worker exits without losing the work done.
WORKER_DRAINING = threading.Event()


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int


def claim_job(settings: Settings, job_id: str, worker: str) -> Claim | None:
    """Take the job if it is queued. None: someone else has it, or it is finished.

    A running job whose lease expired is not taken here: the sweep re-queues it first,
    counting the lost attempt, so there is one recovery path and one place to cap it.
    """
    moment = now()
    with session_scope(settings) as session:
        job = session.get(FineTuningJob, job_id)
        if job is None or job.status != JobStatus.QUEUED or job.cancel_requested:
            return None
        attempt = job.attempt + 1
        # Conditional on the job still being queued: of two workers given the same
        # message, one claims it.
        claimed = transition(
            session, job, JobStatus.RUNNING, message=f"Attempt {attempt} started on {worker}.",
            only_if=[FineTuningJob.attempt == job.attempt,
                     FineTuningJob.lease_expires_at.is_(None)
                     | (FineTuningJob.lease_expires_at < moment)],
            worker=worker, attempt=attempt, lease_expires_at=moment + settings.lease_seconds)
    return Claim(job_id, attempt) if claimed else None


class Heartbeat:
    """Renews the lease in the background and reads the job's stop flags.

    The training loop only reads `stop_reason`, so a step never waits on the database.
    """

    def __init__(self, settings: Settings, claim: Claim):
        self.settings = settings
        self.claim = claim
        self.stop_reason: StopReason | None = None
        self._deadline = time.monotonic() + settings.max_job_seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        with session_scope(self.settings) as session:
            renewed = session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == self.claim.job_id,
                       FineTuningJob.attempt == self.claim.attempt,
                       FineTuningJob.status == JobStatus.RUNNING)
                .values(lease_expires_at=now() + self.settings.lease_seconds)
                .execution_options(synchronize_session=False))
            flags = session.execute(select(FineTuningJob.cancel_requested,
                                           FineTuningJob.pause_requested)
                                    .where(FineTuningJob.id == self.claim.job_id)).one()
        if renewed.rowcount != 1:  # type: ignore[attr-defined]
            # Another attempt owns the job now (fencing): stop without writing anything.
            self.stop_reason = StopReason.LOST
        elif flags.cancel_requested:
            self.stop_reason = StopReason.CANCEL
        elif flags.pause_requested:
            self.stop_reason = StopReason.PAUSE

    def stop_requested(self) -> StopReason | None:
        if self.stop_reason is None and WORKER_DRAINING.is_set():
            return StopReason.REQUEUE
        if self.stop_reason is None and time.monotonic() > self._deadline:
            return StopReason.TIMEOUT
        return self.stop_reason

    def _run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception:  # a database blip must not kill training; the lease has slack
                log.warning("heartbeat for %s failed; will retry", self.claim.job_id,
                            exc_info=True)
