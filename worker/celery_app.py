"""The Celery app. The broker carries job ids only; the database holds every job's state."""

from celery import Celery
from celery.signals import worker_init, worker_shutting_down

from app.config import Settings, get_settings
from app.observability.folder import use_metrics_folder
from app.services.leases import WORKER_DRAINING

TRAIN_TASK = "tuneforge.train_job"


def create_celery(settings: Settings) -> Celery:
    app = Celery("tuneforge", broker=settings.resolved_broker_url, include=["worker.tasks"])
    # Redis redelivers unacked messages after the visibility timeout: it must exceed the
    # longest job, or a long job would be handed to a second worker while the first trains.
    transport: dict[str, object] = {"visibility_timeout": settings.max_job_seconds + 3600}
    if settings.is_embedded:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport |= {"data_folder_in": str(folder / "queue"),
                      "data_folder_out": str(folder / "queue"),
                      "processed_folder": str(folder / "processed"),
                      # Without this, control messages land in ./control of the cwd.
                      "control_folder": str(folder / "control"),
                      "store_processed": False}
    app.conf.update(
        # JSON only: nothing on the wire is ever unpickled.
        task_serializer="json", accept_content=["json"], result_serializer="json",
        # State lives in SQL; a result backend would be a second, weaker source of truth.
        task_ignore_result=True,
        # Ack after the task ends, so a worker that dies mid-job leaves the message to redeliver.
        task_acks_late=True,
        # Under a prefork pool, a child killed by the OOM killer or SIGKILL re-queues; the
        # lost-attempt cap in the DB stops a poison job from looping forever.
        task_reject_on_worker_lost=True,
        # A Python exception is recorded as a failed job in the DB: final, never redelivered.
        task_acks_on_failure_or_timeout=True,
        # A message sent without a queue goes where jobs that name none go.
        task_default_queue=settings.default_queue,
        # Reserve nothing beyond the job being trained; others stay free for other workers.
        worker_prefetch_multiplier=1,
        # If run with a prefork pool: a fresh process per job returns all the memory a
        # training run took. (`tuneforge worker` uses the solo pool; see app/cli.py.)
        worker_max_tasks_per_child=1,
        # Under a prefork pool, a hard backstop a little past our own limit. The solo pool
        # `tuneforge worker` uses has no Celery time limits: the training loop enforces
        # max_job_seconds itself (app/services/leases.py), cleanly, between steps.
        task_time_limit=settings.max_job_seconds + 600,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # After losing Redis, stop running tasks: the redelivered message resumes from a
        # checkpoint, and the DB lease stops two trainers running at once.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    return app


@worker_init.connect
def _name_metrics_folder(**_: object) -> None:
    # Before anything in the worker imports prometheus_client: a figure a task records then
    # lands in this host's folder, beside the API processes', and a scrape adds it up.
    settings = get_settings()
    if settings.metrics_enabled:
        use_metrics_folder(settings)


@worker_shutting_down.connect
def _drain_on_shutdown(**_: object) -> None:
    # SIGTERM: the running job checkpoints at the next step and goes back to the queue,
    # instead of the worker either waiting an hour or dying mid-step.
    WORKER_DRAINING.set()


def broker_reachable(app: Celery) -> bool:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False


def __getattr__(name: str) -> Celery:
    # `celery -A worker.celery_app` looks up `celery` here. Built on first lookup, from the
    # settings in force then, so that importing this module (as the API does) creates no
    # broker folder and reads no settings before the CLI has applied its flags.
    if name == "celery":
        return create_celery(get_settings())
    raise AttributeError(name)
