"""The FastAPI application: routers, error handlers, and the process-wide parts they share."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import files, health, jobs, models
from app.api.errors import install_error_handlers
from app.config import get_settings
from app.db.session import session_scope
from app.ml.inference import ModelCache
from app.services.outbox import Sweeper
from app.services.projects import DEFAULT_PROJECT, ensure_project
from app.storage.artifacts import artifact_store
from worker.celery_app import TRAIN_TASK, broker_reachable, create_celery

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    celery = create_celery(settings)

    def send(job_id: str) -> None:
        celery.send_task(TRAIN_TASK, args=[job_id])

    app.state.store = artifact_store(settings.resolved_artifact_dir)
    app.state.model_cache = ModelCache(settings.model_cache_size)
    app.state.send = send
    app.state.broker_ok = lambda: broker_reachable(celery)
    with session_scope(settings) as session:
        app.state.default_project_id = ensure_project(session, DEFAULT_PROJECT).id
    sweeper = Sweeper(settings, send, settings.sweep_seconds)
    sweeper.start()
    try:
        yield
    finally:
        sweeper.stop()


def create_app() -> FastAPI:
    app = FastAPI(title="Tuneforge", version="0.1.0", lifespan=lifespan,
                  description="Fine-tune and serve transformer models on your own text.")
    install_error_handlers(app)
    for router in (health.router, files.router, jobs.router, models.router):
        app.include_router(router)
    return app
