"""Run calls at the same moment, one thread each, as concurrent clients would."""

import threading
from collections.abc import Callable
from typing import Any


def at_once(calls: list[Callable[[], Any]], timeout: float = 120) -> list[Any]:
    """Each call's result, in order; all start together (a barrier), none is left running."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a call did not finish"
    return results
