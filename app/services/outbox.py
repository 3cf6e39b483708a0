"""Getting queued jobs to a worker: dispatch after commit, and a sweep for what was missed.

The job row is written before its message is sent. If the broker is down the row stays
undispatched and the sweep sends it later; if a worker dies its lease expires and the
sweep puts the job back in the queue. Claims in the database make repeats harmless.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob
from app.db.session import after_commit, session_scope
from app.domain.lifecycle import JobFailure, transition
from app.domain.statuses import JobStatus
from app.ids import now
from app.services.jobs import jobs_to_dispatch, mark_dispatched

log = logging.getLogger(__name__)
# Sends a job id to the broker, on the named worker queue.
Send = Callable[[str, str], None]


def dispatch(session: Session, settings: Settings, job_id: str, send: Send) -> None:
    """Send the job to its queue once this session has committed it: a worker given the
    id must find the job in the database."""
    queue = job_queue(settings, session.get_one(FineTuningJob, job_id))
    after_commit(session, lambda: _send(settings, job_id, queue, send))


def job_queue(settings: Settings, job: FineTuningJob) -> str:
    """The queue the job's compute request names, else the deployment's default queue."""
    queue = str((job.compute or {}).get("queue") or settings.default_queue)
    if queue not in settings.queues:
        # Accepted when the deployment offered it; sent there still, for a worker that may
        # listen on it, rather than trained on hardware the job did not ask for.
        log.warning("job %s asks for queue %r, which TUNEFORGE_QUEUES no longer lists",
                    job.id, queue)
    return queue


def _send(settings: Settings, job_id: str, queue: str, send: Send) -> None:
    try:
        send(job_id, queue)
    except Exception:  # broker down: the sweep retries; the client still gets its job
        log.warning("could not send job %s to the broker; will retry", job_id, exc_info=True)
        return
    try:
        with session_scope(settings) as session:
            mark_dispatched(session, job_id)
    except (OperationalError, InterfaceError):  # the sweep sends it again; claims dedupe
        log.warning("could not mark job %s as sent", job_id, exc_info=True)


def requeue_expired(session: Session, max_attempts: int) -> list[str]:
    """Running jobs whose worker stopped renewing the lease go back to the queue.

    A job that has lost its worker `max_attempts` times fails instead: it is likely what
    kills the worker, and the queue behind it must keep moving.
    """
    moment = now()
    expired = session.scalars(select(FineTuningJob).where(
        FineTuningJob.status == JobStatus.RUNNING, FineTuningJob.lease_expires_at < moment)).all()
    for job in expired:
        # Conditional on the same attempt's lease still being expired: a worker that
        # renewed it meanwhile keeps the job.
        still_lost = [FineTuningJob.attempt == job.attempt,
                      FineTuningJob.lease_expires_at < moment]
        _give_up_lease(session, job, job.lost_attempts + 1, max_attempts, still_lost)
    return [job.id for job in expired]


def _give_up_lease(session: Session, job: FineTuningJob, lost: int, max_attempts: int,
                   only_if: list[Any]) -> None:
    if lost >= max_attempts:
        transition(session, job, JobStatus.FAILED, only_if=only_if, lost_attempts=lost,
                   message=f"The worker was lost {lost} times; job failed.",
                   error=JobFailure("worker_lost_repeatedly",
                                    f"The job's worker was lost {lost} times."))
    else:
        transition(session, job, JobStatus.QUEUED, only_if=only_if, lost_attempts=lost,
                   level="warn", message=f"The worker's lease expired (lost {lost} of "
                   f"{max_attempts}); job re-queued to resume from its last checkpoint.")


def sweep_once(settings: Settings, send: Send) -> None:
    with session_scope(settings) as session:
        requeue_expired(session, settings.max_attempts)
    with session_scope(settings) as session:
        for job_id in jobs_to_dispatch(session, settings):
            dispatch(session, settings, job_id, send)


class Sweeper:
    """Runs sweep_once periodically in a background thread of the API process."""

    def __init__(self, settings: Settings, send: Send, interval: float):
        self.settings, self.send, self.interval = settings, send, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep_once(self.settings, self.send)
            except Exception:
                log.warning("job sweep failed; retrying next round", exc_info=True)
