"""HTTP requests counted and timed by route template, on every route including predict."""

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.instruments import HTTP_DURATION, HTTP_REQUESTS

# The method is the client's to choose: any other is counted as one, so a label's values
# stay few whatever is sent.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class RequestMetrics:
    """Pure ASGI, so it adds no task or body copy to the predict path: a clock, a dictionary
    lookup, and two writes per request. The route label is the template the router matched
    (`/v1/models/{model_id}/predict`), never the raw path, so no id or name reaches a label;
    paths that match no route count as `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            count, duration = self._series_of(scope, status)
            count.inc()
            duration.observe(time.perf_counter() - started)

    def _series_of(self, scope: Scope, status: int) -> tuple[Counter, Histogram]:
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = getattr(scope.get("route"), "path", None) or UNMATCHED
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (HTTP_REQUESTS.labels(method, route, str(status)),
                                          HTTP_DURATION.labels(method, route))
        return series
