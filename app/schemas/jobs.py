from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.db.models import FineTuningJob, JobCheckpoint, JobEvent, SearchTrial
from app.schemas.common import NO_NUL, StrictModel

Auto = Literal["auto"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Two ends of a range, as a JSON array of two numbers (in either order).
Pair = Field(min_length=2, max_length=2)
PositiveRange = Annotated[list[Annotated[float, Field(gt=0, le=1)]], Pair]
RatioRange = Annotated[list[Annotated[float, Field(ge=0, le=0.5)]], Pair]
DecayRange = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Pair]
EpochRange = Annotated[list[Annotated[int, Field(ge=1, le=50)]], Pair]


class SearchSpaceIn(StrictModel):
    """What a search varies. Ranges are [a, b] in either order, ends included; the learning
    rate is searched on a log scale, batch_size among the sizes listed."""

    learning_rate: PositiveRange | None = None
    n_epochs: EpochRange | None = None
    batch_size: Annotated[list[Annotated[int, Field(ge=1, le=1024)]],
                          Field(min_length=1, max_length=8)] | None = None
    warmup_ratio: RatioRange | None = None
    weight_decay: DecayRange | None = None


class SearchIn(StrictModel):
    """Hyperparameter search: `trials` runs with settings Optuna proposes; the best becomes
    the version. Without `space`, the learning rate, epochs and batch size are searched."""

    trials: Annotated[int, Field(ge=1, le=50)]
    space: SearchSpaceIn | None = None


class LoraIn(StrictModel):
    """Train low-rank adapters (LoRA) instead of every weight: rank `r`, scale `alpha / r`,
    dropout on the adapters' input. The version holds the adapter and the task head only."""

    r: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: Annotated[int, Field(ge=1, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


class HyperparametersIn(StrictModel):
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Auto | None = None
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    max_length: Annotated[int, Field(ge=8, le=512)] | None = None
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1)] | None = None
    # Gradients are scaled down to this norm before each update; 0 turns clipping off.
    max_grad_norm: Annotated[float, Field(ge=0, le=1000)] | None = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=64)] | None = None
    eval_steps: Annotated[int, Field(ge=1)] | None = None
    early_stopping_patience: Annotated[int, Field(ge=0, le=100)] | None = None
    search: SearchIn | None = None
    lora: LoraIn | None = None

    @model_validator(mode="after")
    def _searched_or_fixed(self) -> "HyperparametersIn":
        # A value both fixed and searched has no single meaning: say so rather than pick one.
        space = self.search.space if self.search else None
        for name in SearchSpaceIn.model_fields:
            if space is not None and getattr(space, name) is not None and \
                    getattr(self, name) not in (None, "auto"):
                raise ValueError(f"{name} is both fixed and in search.space; give one")
        return self


QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ComputeIn(StrictModel):
    """Where and how wide the job trains: the worker queue (a device class such as `cpu` or
    `gpu`) and the number of training processes (data parallel, under torchrun)."""

    queue: Annotated[str, Field(pattern=QUEUE_PATTERN)] | None = None
    processes: Annotated[int, Field(ge=1, le=64)] = 1


FileRef = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class JobCreate(StrictModel):
    model: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
    training_file: FileRef
    validation_file: FileRef | None = None
    hyperparameters: HyperparametersIn | None = None
    suffix: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    task: Literal["text-classification", "multi-label-classification",
                  "token-classification", "masked-lm", "causal-lm"] | None = None
    compute: ComputeIn | None = None


class Progress(BaseModel):
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    fraction: float = 0.0


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    status: str
    fine_tuned_model: str | None
    created_at: int
    finished_at: int | None
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    metadata: dict[str, str] | None
    organization_id: str
    result_files: list[str] = []
    task: str
    progress: Progress
    metrics: dict[str, float] | None
    worker: str | None
    attempt: int
    compute: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: FineTuningJob) -> "JobPublic":
        def stamp(value: float | None) -> int | None:
            return int(value) if value is not None else None

        return cls(
            id=job.id, model=job.model, status=job.status,
            fine_tuned_model=job.fine_tuned_model, created_at=int(job.created_at),
            finished_at=stamp(job.finished_at), training_file=job.training_file,
            validation_file=job.validation_file, hyperparameters=job.hyperparameters,
            trained_tokens=job.trained_tokens,
            error=JobError(**job.error) if job.error else None, seed=job.seed,
            estimated_finish=stamp(job.estimated_finish) if job.status == "running" else None,
            metadata=job.metadata_, organization_id=job.project_id, task=job.task,
            progress=Progress(**(job.progress or {})), metrics=job.metrics,
            worker=job.worker, attempt=job.attempt, compute=job.compute,
        )


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> "EventPublic":
        return cls(id=event.id, created_at=int(event.created_at), level=event.level,
                   message=event.message, type=event.type, data=event.data)


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int

    @classmethod
    def of(cls, checkpoint: JobCheckpoint) -> "CheckpointPublic":
        return cls(id=checkpoint.id, created_at=int(checkpoint.created_at),
                   fine_tuned_model_checkpoint=f"{checkpoint.job_id}:ckpt-step-"
                                               f"{checkpoint.step_number}",
                   fine_tuning_job_id=checkpoint.job_id, metrics=checkpoint.metrics,
                   step_number=checkpoint.step_number)


class TrialPublic(BaseModel):
    """One trial of a search job: the settings it trained with and its best evaluation."""

    id: str
    object: Literal["fine_tuning.job.trial"] = "fine_tuning.job.trial"
    fine_tuning_job_id: str
    number: int
    status: Literal["running", "interrupted", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    hyperparameters: dict[str, Any] | None
    metrics: dict[str, float] | None
    best_step: int | None
    error: str | None
    started_at: int
    finished_at: int | None

    @classmethod
    def of(cls, trial: SearchTrial) -> "TrialPublic":
        return cls(id=trial.id, fine_tuning_job_id=trial.job_id, number=trial.number,
                   status=trial.status, params=trial.params,  # type: ignore[arg-type]
                   hyperparameters=trial.hyperparameters, metrics=trial.metrics,
                   best_step=trial.best_step, error=trial.error,
                   started_at=int(trial.started_at),
                   finished_at=int(trial.finished_at) if trial.finished_at else None)
