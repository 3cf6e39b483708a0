"""`tuneforge serve | worker | db upgrade | keys`, and the client commands of app/client.

Options are written to TUNEFORGE_* environment variables before a command runs, so the
settings object (and any worker subprocess) sees exactly what the command line said, and
nothing reads the settings before then.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import version as package_version

from app.client.commands import add_client_commands
from app.config import Settings, get_settings

log = logging.getLogger("tuneforge")

# Libraries that narrate their start-up at INFO (Alembic's plugins and each migration,
# the broker connection); their warnings and errors still show.
CHATTY_LOGGERS = ("alembic", "celery.worker.consumer.connection", "httpx")


# The options that are settings: each is written to TUNEFORGE_<NAME> when given.
SETTING_OPTIONS = ("data_dir", "host", "port", "queues", "worker_queues")


def apply_settings_options(args: argparse.Namespace) -> None:
    for name in SETTING_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"TUNEFORGE_{name.upper()}"] = str(value)
    get_settings.cache_clear()


class WorkerSupervisor:
    """Keeps one worker subprocess alive, restarting it with backoff if it dies."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker",
                                                 "--exit-with-parent", str(os.getpid())])
                outcome = f"exited with {self.process.wait()}"
            except OSError as exc:  # the start itself failed: try again, never go on without
                outcome = f"could not start ({exc})"
            if self._stopping.is_set():
                return
            # A worker that ran a while before dying gets a quick restart; a crash loop backs off.
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 60.0)
            log.warning("worker %s; restarting in %.0fs", outcome, backoff)
            self._stopping.wait(backoff)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.db.migrate import upgrade_database
    from app.main import create_app

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings)
    log.info("database ready: %s", _redacted(settings.resolved_database_url))
    _bootstrap_key(settings)
    supervisor = WorkerSupervisor() if not args.no_worker else None
    if supervisor:
        supervisor.start()
    try:
        # uvicorn's own start-up lines are warnings-only; the app logs one line when it is up.
        uvicorn.run(create_app(), host=settings.host, port=settings.port, log_level="warning",
                    access_log=settings.access_log)
    finally:
        if supervisor:
            supervisor.stop()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _bootstrap_key(settings: Settings) -> None:
    from app.db.session import session_scope
    from app.services.keys import ADMIN_KEY_FILE, bootstrap_admin_key

    with session_scope(settings) as session:
        key = bootstrap_admin_key(session, settings)
    if key:
        # Shown once, here, on the terminal of whoever started the service.
        print(f"Admin key for the default project (also in "
              f"{settings.data_dir / ADMIN_KEY_FILE}, mode 0600):\n{key}", flush=True)


def _database_ready() -> Settings:
    from app.db.migrate import upgrade_database

    settings = get_settings()
    upgrade_database(settings)
    return settings


def keys_create(args: argparse.Namespace) -> None:
    from app.db.session import session_scope
    from app.services.keys import create_key

    with session_scope(_database_ready()) as session:
        record, key = create_key(session, args.project, args.admin)
    print(f"created key {record.id} for project '{args.project}'"
          f"{' (admin)' if record.admin else ''}; it is shown once:")
    print(key)  # alone on the last line, so scripts can capture it


def keys_list(args: argparse.Namespace) -> None:
    from app.db.models import Project
    from app.db.session import session_scope
    from app.services.keys import list_keys

    with session_scope(_database_ready()) as session:
        names = {p.id: p.name for p in session.query(Project)}
        for record in list_keys(session):
            state = "revoked" if record.revoked_at else "active"
            print(f"{record.id}  {record.prefix}…  project={names.get(record.project_id)}  "
                  f"{'admin  ' if record.admin else ''}{state}")


def keys_revoke(args: argparse.Namespace) -> None:
    from app.db.session import session_scope
    from app.services.keys import revoke_key

    with session_scope(_database_ready()) as session:
        revoke_key(session, args.key_id)
    print(f"revoked {args.key_id}")


def _exit_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies, however the parent dies.

    `tuneforge serve` can be killed in ways that skip its cleanup (SIGKILL, or uvicorn
    re-raising SIGTERM); its worker must not live on without it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before we asked
        sys.exit(0)


def worker(args: argparse.Namespace) -> None:
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent)
    from worker.celery_app import create_celery

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from app.db.migrate import schema_is_current

    if not schema_is_current(settings):
        # Training against an older schema would fail jobs one by one; refuse up front.
        sys.exit("tuneforge worker: the database schema is not at the latest migration; "
                 "run `tuneforge db upgrade` first.")
    app = create_celery(settings)
    queues = ",".join(settings.listened_queues)
    log.info("worker taking jobs from queues: %s", queues)
    # One job at a time, in this process (solo pool): SIGTERM reaches the training loop
    # directly, so the job checkpoints and re-queues. Scale with more worker processes.
    # --quiet drops the start-up banner: the worker's "ready." line says it is up.
    app.worker_main(["--quiet", "worker", "--loglevel=INFO", "--pool=solo",
                     # The filesystem transport has no broadcast; no worker needs gossip here.
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "--queues", queues,
                     "-n", f"tuneforge-{os.getpid()}@%h"])


def db_upgrade(args: argparse.Namespace) -> None:
    _database_ready()
    print("database is at the latest revision")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"tuneforge {package_version('tuneforge')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="default ./tuneforge-data (TUNEFORGE_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the API and one worker",
                                    parents=[common])
    serve_cmd.add_argument("--host", help="default 127.0.0.1 (TUNEFORGE_HOST)")
    serve_cmd.add_argument("--port", type=int, help="default 8000 (TUNEFORGE_PORT)")
    serve_cmd.add_argument("--no-worker", action="store_true",
                           help="run the API only; workers run elsewhere")
    serve_cmd.add_argument("--queues", metavar="NAMES",
                           help="worker queues jobs may name, comma-separated; the first takes "
                                "jobs that name none (TUNEFORGE_QUEUES; default 'default')")
    serve_cmd.set_defaults(func=serve)
    worker_cmd = commands.add_parser("worker", help="run a training worker", parents=[common])
    worker_cmd.add_argument("--exit-with-parent", type=int, metavar="PID",
                            help=argparse.SUPPRESS)
    worker_cmd.add_argument("--queues", dest="worker_queues", metavar="NAMES",
                            help="take jobs from these queues, comma-separated, e.g. gpu,default "
                                 "(TUNEFORGE_WORKER_QUEUES; default: all of TUNEFORGE_QUEUES)")
    worker_cmd.set_defaults(func=worker)
    db_cmd = commands.add_parser("db", help="database maintenance")
    db_sub = db_cmd.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations", parents=[common]).set_defaults(
        func=db_upgrade)
    keys_cmd = commands.add_parser("keys", help="API keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create_cmd = keys_sub.add_parser("create", help="make a key; printed once, last line",
                                     parents=[common])
    create_cmd.add_argument("--project", required=True, help="project name (made if new)")
    create_cmd.add_argument("--admin", action="store_true", help="may manage keys")
    create_cmd.set_defaults(func=keys_create)
    keys_sub.add_parser("list", help="list keys (never the keys themselves)",
                        parents=[common]).set_defaults(func=keys_list)
    revoke_cmd = keys_sub.add_parser("revoke", help="revoke a key by id", parents=[common])
    revoke_cmd.add_argument("key_id")
    revoke_cmd.set_defaults(func=keys_revoke)
    add_client_commands(commands)
    return parser


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = build_parser().parse_args(argv)
    apply_settings_options(args)
    args.func(args)


if __name__ == "__main__":
    main()
