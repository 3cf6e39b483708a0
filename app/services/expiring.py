"""A small in-memory map whose entries are trusted for a bounded time.

The predict path reads API keys and model references from here rather than from the
database; each entry is re-read after `ttl_seconds`, which is the most a change (a revoked
key, a moved alias) can take to be seen by this process.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")
DEFAULT_MAX_ENTRIES = 10_000


class ExpiringCache(Generic[V]):
    def __init__(self, ttl_seconds: float, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value, while younger than the time to live."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        if self.ttl_seconds <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_seconds, value)
            self._entries.move_to_end(key)
            # Bounded: many one-off keys (or references) push out the oldest entries.
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def discard_where(self, matches: Callable[[Any, V], bool]) -> None:
        """Drop every entry for which matches(key, value) holds."""
        with self._lock:
            for key in [k for k, (_, value) in self._entries.items() if matches(k, value)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
