"""The one settings object. Every option is an environment variable with the TUNEFORGE_ prefix."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The names a job's `compute.queue` may take (app/schemas/jobs.py).
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore")

    data_dir: Path = Path("./tuneforge-data")
    # Unset URLs and folders derive from data_dir: the embedded default needs no server.
    database_url: str | None = None
    broker_url: str | None = None
    artifact_dir: Path | None = None
    # s3://bucket/prefix: artifacts in an S3-compatible bucket (boto3 reads the endpoint and
    # credentials from AWS_*), artifact_dir then being this machine's cache. Unset: the folder.
    artifact_url: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}"
                                                           r"[a-z0-9](/[A-Za-z0-9_./-]*)?$")
    models_dir: Path | None = None
    allow_network: bool = Field(
        default=False, description="Allow base models given as hub ids to be downloaded."
    )

    # Made the default project's admin key on start, if no key has that value yet.
    bootstrap_key: SecretStr | None = None
    rate_limit_per_minute: int = 600
    # Where per-key rate-limit counters live; defaults to the broker when that is Redis,
    # so every API process shares them. Unset with a non-Redis broker: in-process counters.
    rate_limit_url: str | None = None
    max_active_jobs_per_project: int = 8
    max_request_bytes: int = 4 * 1024 * 1024

    host: str = "127.0.0.1"
    port: int = 8000
    # One log line per request; off by default, since /metrics counts requests by route.
    access_log: bool = False

    # Uploads and datasets.
    max_upload_bytes: int = 200 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_rows: int = 2_000_000
    min_rows: int = 10

    # Prediction.
    max_predict_inputs: int = 256
    max_predict_chars: int = 100_000
    # Predict rows (inputs) per key per minute, counted apart from the requests above; the
    # default is above what one machine serves, so one caller can use all of it.
    predict_rows_per_minute: int = 3_000_000
    # Loaded versions are kept while their weights fit in this many bytes per API process
    # (least recently used unloaded first); model_cache_size, if set, also caps the count.
    model_cache_bytes: int = 2 * 1024**3
    model_cache_size: int | None = None
    # auto: bf16 where the hardware computes it natively, else fp32; or fp32, bf16, int8.
    serve_precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    # Dynamic batching: rows of concurrent requests to one version share forward passes of
    # at most this many (padded) tokens and rows; under load the runner waits for more rows
    # at most this long, and at most a quarter of its last round's time (app/ml/serving.py).
    max_batch_tokens: int = 8192
    max_batch_rows: int = 256
    batch_wait_ms: float = 50.0
    # CPU threads for serving's forward passes in this process; unset: torch's own count (the
    # cores, or OMP_NUM_THREADS). Set it when several API processes share a machine.
    serve_threads: int | None = Field(default=None, ge=1)
    # How long a verified API key and a resolved model reference are trusted in memory: a
    # revoked key stops working, and an alias move takes effect, within this many seconds.
    key_cache_seconds: float = 5.0
    version_cache_seconds: float = 5.0

    # Jobs.
    # Longest one attempt may train; then the job fails with time_limit_exceeded. The
    # broker's redelivery timeout is set above it (worker/celery_app.py).
    max_job_seconds: int = 24 * 3600
    # Train with bf16 autocast where the hardware computes bf16 natively (about twice as
    # fast; weights and optimizer stay fp32). False trains in fp32 everywhere.
    mixed_precision: bool = True
    lease_seconds: int = 90
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    dispatch_retry_seconds: float = 30.0
    sweep_seconds: float = 15.0
    # A job still queued this long after its message was sent is sent again: a broker
    # restarted without persistence loses messages. Extra copies are harmless (claims).
    redispatch_seconds: float = 300.0
    # Worker queues (README, "Queues and scaling workers"), comma-separated. `queues`: those a
    # job may name in compute.queue (others are refused); the first takes jobs that name
    # none. `worker_queues`: those a worker takes jobs from; unset, all of `queues`.
    queues: Annotated[list[str], NoDecode] = ["default"]
    worker_queues: Annotated[list[str] | None, NoDecode] = None

    # Prometheus figures at GET /metrics, without a key (README, "Metrics"); false removes
    # the route. The processes of one host share their counters through files in a folder
    # of their own under metrics_dir (default <data_dir>/metrics).
    metrics_enabled: bool = True
    metrics_dir: Path | None = None

    # Live job events (?stream=true): how often the database is read for new events, how
    # long a quiet stream waits before a keep-alive comment, and how long one stream lasts
    # before it ends (the client reconnects with Last-Event-ID; proxies cut longer ones).
    events_poll_seconds: float = Field(default=0.5, gt=0)
    events_keepalive_seconds: float = Field(default=15.0, gt=0)
    events_stream_seconds: float = Field(default=50.0, gt=0)

    # Webhooks. Private, loopback and link-local destinations are refused unless allowed
    # (a receiver on the same network). A failed delivery is retried after
    # webhook_retry_seconds, doubling each time, until webhook_max_attempts.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_seconds: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)

    # MLflow tracking (README, "Tracking with MLflow"): set, each job is a run of this
    # experiment; unset, mlflow is never imported. Needs the mlflow extra.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "tuneforge"

    @field_validator("queues", "worker_queues", mode="before")
    @classmethod
    def _queue_names(cls, value: object, info: ValidationInfo) -> object:
        given = value.split(",") if isinstance(value, str) else value
        if not isinstance(given, list | tuple):
            return value  # None, or a type pydantic refuses itself
        names = [str(name).strip() for name in given if str(name).strip()]
        if not names and info.field_name == "worker_queues":
            return None  # set but empty: as if unset
        bad = [name for name in names if not QUEUE_NAME.match(name)]
        if bad or not names:
            raise ValueError(f"queue names are lower-case letters, digits, '_' and '-', "
                             f"comma-separated; got {value!r}")
        return names

    @property
    def default_queue(self) -> str:
        """Where a job that names no queue goes."""
        return self.queues[0]

    @property
    def listened_queues(self) -> list[str]:
        """The queues this process takes jobs from, if it is a worker."""
        return self.worker_queues or self.queues

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'tuneforge.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        # A host named, though the transport ignores it, so kombu does not warn on connect.
        return self.broker_url or "filesystem://localhost/"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()

    @property
    def resolved_metrics_dir(self) -> Path:
        return (self.metrics_dir or self.data_dir / "metrics").resolve()

    @property
    def broker_folder(self) -> Path:
        """Queue folder for Celery's filesystem transport (embedded default only)."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_rate_limit_url(self) -> str | None:
        if self.rate_limit_url:
            return self.rate_limit_url
        broker = self.resolved_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @property
    def is_embedded(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
