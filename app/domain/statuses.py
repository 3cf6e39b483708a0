"""What state a job is in, and why a training run stops: plain values, free of the database,
so the training loop (app/ml) can speak of them too. How a job moves between them is
app/domain/lifecycle.py."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StopReason(StrEnum):
    """Why a training run ends before its last step."""

    CANCEL = "cancel"  # the user cancelled the job
    PAUSE = "pause"  # the user paused it; resume continues from the checkpoint
    REQUEUE = "requeue"  # the worker is shutting down; another worker resumes it
    TIMEOUT = "timeout"  # the attempt ran past max_job_seconds
    LOST = "lost"  # another attempt owns the job now; this one writes nothing

    @property
    def keeps_progress(self) -> bool:
        """Whether the run saves a checkpoint before it stops, so the job can continue."""
        return self in (StopReason.PAUSE, StopReason.REQUEUE)


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Active: queued or training now. It is what counts against a project's job limit; a
# paused job holds no worker and no slot until it is resumed.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
