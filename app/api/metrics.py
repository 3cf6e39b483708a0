"""GET /metrics: Prometheus's text format, without a key (README, "Metrics")."""

from fastapi import APIRouter, FastAPI, Request, Response

from app.config import Settings
from app.ml.serving import ServingObserver
from app.observability.folder import use_metrics_folder

# Not in the OpenAPI spec: it is for Prometheus, not for API clients, and answers text.
router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.scrape_metrics()
    return Response(body, media_type=content_type)


def install_metrics(app: FastAPI, settings: Settings) -> ServingObserver:
    """Count requests, serve /metrics, and return what the predict path reports to; with
    metrics turned off, none of it (an observer that records nothing)."""
    if not settings.metrics_enabled:
        return ServingObserver()
    use_metrics_folder(settings)
    # Imported only now: prometheus_client chooses its multiprocess mode on first import,
    # from the folder just named.
    from app.observability.exposition import Scraper
    from app.observability.instruments import ServingMetrics
    from app.observability.middleware import RequestMetrics

    app.add_middleware(RequestMetrics)
    app.state.scrape_metrics = Scraper(settings)
    app.include_router(router)
    return ServingMetrics()
