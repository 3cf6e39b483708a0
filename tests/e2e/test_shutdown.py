"""`tuneforge serve` stops its embedded worker when it is itself stopped with SIGTERM.

uvicorn re-raises SIGTERM after its own graceful shutdown, so cleanup code after
`uvicorn.run()` never runs; the worker has to go some other way, and this checks it does.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.live import group_members, live_service


@pytest.mark.e2e
def test_sigterm_to_serve_stops_its_worker(tmp_path: Path) -> None:
    with live_service(tmp_path) as service:
        serve = service.processes[0]
        service.wait_for_log(serve, "ready.", 120)  # the embedded Celery worker is up
        assert serve.popen is not None
        serve.popen.terminate()  # what systemd, docker stop or Ctrl-C send: the leader only
        serve.popen.wait(timeout=60)
        deadline = time.monotonic() + 10
        while group_members(serve.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(serve.pid)
        assert not left, f"processes outlived `tuneforge serve`: {left}\n{serve.log_tail()}"
