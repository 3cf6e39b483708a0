"""Thin Celery tasks: all the work is in app.services.training_runs."""

import os
import socket

from celery import shared_task

from app.config import get_settings


@shared_task(name="tuneforge.train_job")
def train_job(job_id: str) -> None:
    # Imported here so the parent worker process never loads torch; each job's child does.
    from app.services.training_runs import run_job

    run_job(get_settings(), job_id, worker=f"{socket.gethostname()}:{os.getpid()}")
