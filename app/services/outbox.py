"""Getting queued jobs to a worker: dispatch after commit, and a sweep for what was missed.

The job row is written before its message is sent. If the broker is down the row stays
undispatched and the sweep sends it later; if a worker dies its lease expires and the
sweep puts the job back in the queue. Claims in the database make repeats harmless.
"""

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob
from app.db.session import session_scope
from app.ids import now
from app.services.jobs import jobs_to_dispatch, mark_dispatched, record_event

log = logging.getLogger(__name__)
Send = Callable[[str], None]


def dispatch(session: Session, job_id: str, send: Send) -> None:
    try:
        send(job_id)
    except Exception:  # broker down: the sweep retries; the client still gets its job
        log.warning("could not send job %s to the broker; will retry", job_id, exc_info=True)
        return
    mark_dispatched(session, job_id)
    session.commit()


def requeue_expired(session: Session, max_attempts: int) -> list[str]:
    """Running jobs whose worker stopped renewing the lease go back to the queue.

    A job that has lost its worker `max_attempts` times fails instead: it is likely what
    kills the worker, and the queue behind it must keep moving.
    """
    moment = now()
    expired = session.scalars(select(FineTuningJob).where(
        FineTuningJob.status == "running", FineTuningJob.lease_expires_at < moment)).all()
    for job in expired:
        lost = job.lost_attempts + 1
        poisoned = lost >= max_attempts
        moved = session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job.id, FineTuningJob.attempt == job.attempt,
                   FineTuningJob.status == "running", FineTuningJob.lease_expires_at < moment)
            .values(status="failed" if poisoned else "queued", dispatched_at=None,
                    lost_attempts=lost, lease_expires_at=None,
                    finished_at=moment if poisoned else None,
                    error={"code": "worker_lost_repeatedly", "param": None,
                           "message": f"The job's worker was lost {lost} times."}
                    if poisoned else None)
            .execution_options(synchronize_session=False))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            continue  # its worker renewed the lease meanwhile
        if poisoned:
            record_event(session, job.id, f"The worker was lost {lost} times; job failed.",
                         level="error")
        else:
            record_event(session, job.id, f"The worker's lease expired (lost {lost} of "
                         f"{max_attempts}); job re-queued to resume from its last checkpoint.",
                         level="warn")
    session.commit()
    return [job.id for job in expired]


def sweep_once(settings: Settings, send: Send) -> None:
    with session_scope(settings) as session:
        requeue_expired(session, settings.max_attempts)
    with session_scope(settings) as session:
        for job_id in jobs_to_dispatch(session, settings):
            dispatch(session, job_id, send)


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
