"""The FastAPI application: routers, error handlers, and the process-wide parts they share."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.api import admin, files, health, jobs, models, webhooks
from app.api.deps import get_caller, get_principal
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.metrics import install_metrics
from app.api.spec import operation_id, publish_spec
from app.api.ui import install_dashboard
from app.config import get_settings
from app.db.session import session_scope
from app.services.keys import VerifiedKeys, bootstrap_admin_key
from app.services.outbox import Sweeper
from app.services.predictions import Predictor
from app.services.ratelimit import rate_limiter
from app.services.webhook_delivery import WebhookDispatcher
from app.storage.artifacts import artifact_store
from worker.celery_app import TRAIN_TASK, broker_reachable, create_celery

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    celery = create_celery(settings)

    def send(job_id: str, queue: str) -> None:
        celery.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    app.state.store = artifact_store(settings.resolved_artifact_dir, settings.artifact_url)
    app.state.send = send
    app.state.broker_ok = lambda: broker_reachable(celery)
    app.state.rate_limiter = rate_limiter(settings)
    app.state.verified_keys = VerifiedKeys(settings.key_cache_seconds)
    app.state.predictor = Predictor(settings, app.state.store, app.state.rate_limiter,
                                    observer=app.state.serving_observer)
    app.state.model_cache = app.state.predictor.models
    with session_scope(settings) as session:
        bootstrap_admin_key(session, settings)
    sweeper = Sweeper(settings, send, settings.sweep_seconds)
    sweeper.start()
    dispatcher = WebhookDispatcher(settings)
    dispatcher.start()
    log.info("API ready on http://%s:%s (dashboard at /ui)", settings.host, settings.port)
    try:
        yield
    finally:
        dispatcher.stop()
        sweeper.stop()
        app.state.model_cache.close()


def create_app() -> FastAPI:
    app = FastAPI(title="Tuneforge", version="0.1.0", lifespan=lifespan,
                  description="Fine-tune and serve transformer models on your own text.",
                  generate_unique_id_function=operation_id)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, settings=get_settings())
    # Added last, so outermost: it times and counts every answer, the body limit's 413 included.
    app.state.serving_observer = install_metrics(app, get_settings())
    app.include_router(health.router)
    # Every other route needs a key; declared here once so no route can forget it.
    for router in (files.router, jobs.router, models.router, admin.router, webhooks.router):
        app.include_router(router, dependencies=[Depends(get_principal)])
    app.include_router(models.predict_router, dependencies=[Depends(get_caller)])
    install_dashboard(app)
    publish_spec(app, get_settings())
    return app
