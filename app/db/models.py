"""Tables. The database is the source of truth for every job, file and model version."""

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    # SHA-256 of the key: keys are 256-bit random, so a fast hash is enough and the
    # plaintext is never stored. The prefix lets people tell their keys apart.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class DatasetFile(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))
    rows: Mapped[int] = mapped_column(Integer)
    fields: Mapped[list[Any]] = mapped_column()
    detected_task: Mapped[str] = mapped_column(String(32))
    label_counts: Mapped[dict[str, Any]] = mapped_column()
    sha256: Mapped[str] = mapped_column(String(64))
    # Server-generated, never derived from a client-supplied value.
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class FineTuningJob(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(32))
    training_file: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    estimated_finish: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Folder of this job's checkpoints in the artifact store (server-made).
    artifact_key: Mapped[str] = mapped_column(String(200))
    # Lease: a worker owns the job while lease_expires_at is in the future.
    worker: Mapped[str | None] = mapped_column(String(200))
    # Every claim is a new attempt (the fencing token); attempts whose worker vanished
    # without recording an outcome are counted apart, for the poison-job cap.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    dispatched_at: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The job's MLflow run, when tracking is on: a later attempt goes on logging to it.
    tracking_run_id: Mapped[str | None] = mapped_column(String(64))
    # Where and how wide it trains ({"queue", "processes"}); None: the default queue, 1 process.
    compute: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobEvent(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobCheckpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class SearchTrial(Base):
    """One trial of a hyperparameter-search job: a child run with its own settings, checkpoints
    and metrics. A finished trial is never trained again, whatever happens to the worker."""

    __tablename__ = "search_trials"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    # running; interrupted (paused or handed back, until a later attempt resumes it);
    # succeeded, failed or cancelled (with its job)
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column()
    hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The trial's best checkpoint, in the artifact store.
    best_step: Mapped[int | None] = mapped_column(Integer)
    storage_key: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class RegisteredModel(Base):
    __tablename__ = "registered_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    # Highest version number ever given: a deleted version's number is never reused, so
    # an id like ft:name:v2 always means the same weights.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "id"),
        UniqueConstraint("registered_model_id", "version"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(120))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    registered_model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"))
    version: Mapped[int] = mapped_column(Integer)
    # One version per job, enforced by the database: a duplicate delivery cannot register twice.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(32))
    labels: Mapped[list[Any]] = mapped_column()
    metrics: Mapped[dict[str, Any]] = mapped_column()
    lineage: Mapped[dict[str, Any]] = mapped_column()
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    registered_model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_models.id"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("model_versions.pk", ondelete="CASCADE"))
    updated_at: Mapped[float] = mapped_column(Float)


class WebhookEndpoint(Base):
    """Where a project wants to hear of its jobs' outcomes."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    # Event types to send; None: every type.
    events: Mapped[list[Any] | None] = mapped_column(JSON)
    # Kept as given (whsec_…), unlike API keys: it must sign every delivery. Shown once.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row, written with the change it reports."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    # The exact body that is signed and sent, identical on every attempt.
    payload: Mapped[str] = mapped_column(Text)
    # pending, succeeded or failed (no attempts left)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # When it is next due; a dispatcher's claim moves it ahead by the claim's lease, so a
    # dispatcher that dies mid-send leaves it due again later.
    next_attempt_at: Mapped[float | None] = mapped_column(Float, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[list["WebhookAttempt"]] = relationship(
        order_by="WebhookAttempt.number", lazy="selectin", passive_deletes=True)


class WebhookAttempt(Base):
    """One POST of a delivery and how it went: the delivery log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
