"""Per-key rate limits: a fixed one-minute window, counted in Redis when shared.

Two counts per key: control-plane requests (files, jobs, registry, keys) and predict rows
(inputs), so a service calling predict all day is limited by the rows it sends, not by a
request budget meant for humans and scripts."""

import asyncio
import logging
import threading
import time
from typing import Protocol

import redis

from app.config import Settings
from app.errors import RateLimited

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


REQUESTS = "requests"
PREDICT_ROWS = "predict rows"


class RateLimiter(Protocol):
    # Whether hit() waits on the network (then async callers run it in a thread).
    blocking: bool

    def hit(self, key_id: str, amount: int = 1, kind: str = REQUESTS) -> int:
        """Count `amount` in the current window of `kind` and return the window's count."""
        ...


class InProcessRateLimiter:
    """The embedded default: one API process, so a dict is the shared state."""

    blocking = False

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._window = 0
        self._lock = threading.Lock()

    def hit(self, key_id: str, amount: int = 1, kind: str = REQUESTS) -> int:
        window = int(time.time() // WINDOW_SECONDS)
        with self._lock:
            if window != self._window:
                self._counts.clear()
                self._window = window
            count = self._counts.get((kind, key_id), 0) + amount
            self._counts[(kind, key_id)] = count
            return count


class RedisRateLimiter:
    """Counters every API replica shares."""

    blocking = True

    def __init__(self, url: str):
        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def hit(self, key_id: str, amount: int = 1, kind: str = REQUESTS) -> int:
        window = int(time.time() // WINDOW_SECONDS)
        prefix = "tuneforge:ratelimit" if kind == REQUESTS else "tuneforge:ratelimit:rows"
        name = f"{prefix}:{key_id}:{window}"
        pipe = self._redis.pipeline()
        pipe.incrby(name, amount)
        pipe.expire(name, WINDOW_SECONDS * 2)
        count, _ = pipe.execute()
        return int(count)


def rate_limiter(settings: Settings) -> RateLimiter:
    url = settings.resolved_rate_limit_url
    return RedisRateLimiter(url) if url else InProcessRateLimiter()


def enforce(limiter: RateLimiter, key_id: str, per_minute: int, amount: int = 1,
            kind: str = REQUESTS) -> None:
    """Count `amount` of `kind` for the key; RateLimited (with when to retry) past the limit."""
    try:
        count = limiter.hit(key_id, amount, kind)
    except redis.RedisError:
        # Availability beats strictness here: a Redis outage must not lock everyone out.
        log.warning("rate-limit store unavailable; request allowed")
        return
    if count > per_minute:
        retry_after = WINDOW_SECONDS - int(time.time()) % WINDOW_SECONDS
        raise RateLimited(f"More than {per_minute} {kind} a minute for this key.",
                          retry_after=max(1, retry_after))


async def enforce_rows(limiter: RateLimiter, key_id: str, per_minute: int, rows: int) -> None:
    """The predict-rows limit, from async code: a limiter on the network runs in a thread."""
    if limiter.blocking:
        await asyncio.to_thread(enforce, limiter, key_id, per_minute, rows, PREDICT_ROWS)
    else:
        enforce(limiter, key_id, per_minute, rows, PREDICT_ROWS)
