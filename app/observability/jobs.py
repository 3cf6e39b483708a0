"""Job figures, read from the database when scraped. The database is the source of truth for
every job, so these are right whichever API process is scraped and wherever the workers
run; every process reports the same values (aggregate them with max, not sum)."""

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import FineTuningJob, JobEvent
from app.db.session import session_factory
from app.domain.statuses import TERMINAL, JobStatus
from app.ids import now

log = logging.getLogger(__name__)

# A minute to a day: jobs range from a quick fine-tune to a long pretraining run.
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
RUNNING_LABELS = ["job", "worker"]


class JobFigures(Collector):
    """A custom collector: jobs by status, the queue, finished jobs' durations, and for each
    running job its training speed and the age of its worker's last heartbeat."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        try:
            with session_factory(self.settings)() as session:
                families = [*status_counts(session), durations(session),
                            *running_jobs(session, self.settings.lease_seconds)]
            read = True
        except SQLAlchemyError:
            # The process figures are still worth a scrape while the database is away.
            log.warning("job figures skipped: database unavailable", exc_info=True)
            read = False
        yield GaugeMetricFamily("tuneforge_database_up",
                                "1 if this scrape could read the job figures from the database.",
                                value=1 if read else 0)
        yield from families


def status_counts(session: Session) -> list[Metric]:
    counts = dict(session.execute(select(FineTuningJob.status, func.count())
                                  .group_by(FineTuningJob.status)).all())
    jobs = GaugeMetricFamily("tuneforge_jobs", "Jobs in each status.", labels=["status"])
    for status in JobStatus:
        jobs.add_metric([status.value], counts.get(status.value, 0))
    queued = GaugeMetricFamily("tuneforge_job_queue_depth", "Jobs queued, waiting for a worker.",
                               value=counts.get(JobStatus.QUEUED.value, 0))
    return [jobs, queued]


def durations(session: Session) -> Metric:
    """Finished jobs, from their first start to their end, bucketed by the database."""
    seconds = FineTuningJob.finished_at - FineTuningJob.started_at
    within = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    rows = session.execute(
        select(FineTuningJob.status, func.count(), func.sum(seconds), *within)
        .where(FineTuningJob.status.in_([status.value for status in TERMINAL]),
               FineTuningJob.started_at.is_not(None), FineTuningJob.finished_at.is_not(None))
        .group_by(FineTuningJob.status)).all()
    by_status = {row[0]: row[1:] for row in rows}
    family = HistogramMetricFamily(
        "tuneforge_job_duration_seconds",
        "Finished jobs' time from their first start to their end, by final status.",
        labels=["status"])
    for status in sorted(TERMINAL):
        count, total, *counts = by_status.get(status.value) or (0, 0.0, *[0] * len(within))
        buckets = [(floatToGoString(bound), n or 0) for bound, n in zip(DURATION_BUCKETS, counts,
                                                                          strict=True)]
        family.add_metric([status.value], [*buckets, ("+Inf", count)], total or 0.0)
    return family


def running_jobs(session: Session, lease_seconds: float) -> list[Metric]:
    speed = GaugeMetricFamily(
        "tuneforge_job_training_samples_per_second",
        "Training samples per second a running job last reported.", labels=RUNNING_LABELS)
    heartbeat = GaugeMetricFamily(
        "tuneforge_job_heartbeat_age_seconds",
        "Seconds since a running job's worker last renewed its lease (a renewal sets the "
        "lease to end lease_seconds later; workers are assumed to use this API's setting).",
        labels=RUNNING_LABELS)
    speeds = latest_speeds(session)
    moment = now()
    jobs = session.execute(select(FineTuningJob.id, FineTuningJob.worker,
                                  FineTuningJob.lease_expires_at)
                           .where(FineTuningJob.status == JobStatus.RUNNING.value)).all()
    for job_id, worker, lease_expires_at in jobs:
        labels = [job_id, worker or ""]
        if job_id in speeds:
            speed.add_metric(labels, speeds[job_id])
        if lease_expires_at is not None:
            renewed_at = lease_expires_at - lease_seconds
            heartbeat.add_metric(labels, max(0.0, moment - renewed_at))
    return [speed, heartbeat]


def latest_speeds(session: Session) -> dict[str, float]:
    """Each running job's samples/s from its latest progress event."""
    value = JobEvent.data["samples_per_s"].as_float()
    latest = (select(func.max(JobEvent.seq).label("seq"))
              .join(FineTuningJob, FineTuningJob.id == JobEvent.job_id)
              .where(FineTuningJob.status == JobStatus.RUNNING.value,
                     JobEvent.type == "metrics", value.is_not(None))
              .group_by(JobEvent.job_id).subquery())
    rows = session.execute(select(JobEvent.job_id, value)
                           .join(latest, JobEvent.seq == latest.c.seq)).all()
    return {job_id: speed for job_id, speed in rows if speed is not None}
