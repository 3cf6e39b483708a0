"""Per-key request rate limits: a fixed one-minute window, counted in Redis when shared."""

import logging
import threading
import time
from typing import Protocol

import redis

from app.config import Settings
from app.errors import RateLimited

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    def hit(self, key_id: str) -> int:
        """Count one request in the current window and return the window's count."""
        ...


class InProcessRateLimiter:
    """The embedded default: one API process, so a dict is the shared state."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, key_id: str) -> int:
        window = int(time.time() // WINDOW_SECONDS)
        with self._lock:
            for stale in [k for k in self._counts if k[1] < window]:
                del self._counts[stale]
            self._counts[(key_id, window)] = self._counts.get((key_id, window), 0) + 1
            return self._counts[(key_id, window)]


class RedisRateLimiter:
    """Counters every API replica shares."""

    def __init__(self, url: str):
        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def hit(self, key_id: str) -> int:
        window = int(time.time() // WINDOW_SECONDS)
        name = f"tuneforge:ratelimit:{key_id}:{window}"
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, WINDOW_SECONDS * 2)
        count, _ = pipe.execute()
        return int(count)


def rate_limiter(settings: Settings) -> RateLimiter:
    url = settings.resolved_rate_limit_url
    return RedisRateLimiter(url) if url else InProcessRateLimiter()


def enforce(limiter: RateLimiter, key_id: str, per_minute: int) -> None:
    try:
        count = limiter.hit(key_id)
    except redis.RedisError:
        # Availability beats strictness here: a Redis outage must not lock everyone out.
        log.warning("rate-limit store unavailable; request allowed")
        return
    if count > per_minute:
        retry_after = WINDOW_SECONDS - int(time.time()) % WINDOW_SECONDS
        raise RateLimited(f"More than {per_minute} requests a minute for this key.",
                          retry_after=max(1, retry_after))
