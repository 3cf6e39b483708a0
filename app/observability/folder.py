"""Where the processes of this host keep their Prometheus figures (multiprocess mode)."""

import os
import socket
from pathlib import Path

from app.config import Settings

FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def use_metrics_folder(settings: Settings) -> Path:
    """Name this process's metrics folder, before prometheus_client is first imported, and
    drop what dead processes of this host left there that only live ones may report.

    A folder already named (by the operator, a parent process, or an earlier app in this
    process) is kept: prometheus_client may have files open in it."""
    folder = Path(os.environ.setdefault(FOLDER_VARIABLE, str(host_folder(settings))))
    folder.mkdir(parents=True, exist_ok=True)
    forget_dead_processes(folder)
    return folder


def host_folder(settings: Settings) -> Path:
    # Files are named by process id, and ids repeat on other hosts and in other containers
    # that share the data dir: each host writes a folder of its own.
    return settings.resolved_metrics_dir / socket.gethostname()


def forget_dead_processes(folder: Path) -> None:
    """Remove the live-only gauges (bytes of loaded models) of processes that have exited.
    Their counters stay: a total must never go down."""
    from prometheus_client import multiprocess  # the folder is named by now

    for pid in {_pid(path) for path in folder.glob("gauge_live*_*.db")}:
        if pid is not None and not _running(pid):
            multiprocess.mark_process_dead(pid, str(folder))


def _pid(path: Path) -> int | None:
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
