"""Prediction: resolve a model reference to a version, load it (cached), run it."""

from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import ModelVersion
from app.errors import InvalidRequest, PayloadTooLarge
from app.ml.inference import ModelCache
from app.ml.tasks.registry import get_task
from app.services.registry import resolve_version
from app.storage.artifacts import ArtifactStore


def _check_limits(settings: Settings, inputs: list[str]) -> None:
    if len(inputs) > settings.max_predict_inputs:
        raise PayloadTooLarge(f"At most {settings.max_predict_inputs} inputs per request; got "
                              f"{len(inputs)}.", param="inputs", code="too_many_inputs")
    if sum(len(text) for text in inputs) > settings.max_predict_chars:
        raise PayloadTooLarge(f"At most {settings.max_predict_chars} characters per request.",
                              param="inputs", code="input_too_long")
    if any(not text.strip() for text in inputs):
        raise InvalidRequest("Inputs must not be empty or whitespace.", param="inputs",
                             code="empty_input")


def predict(session: Session, settings: Settings, store: ArtifactStore, cache: ModelCache,
            project_id: str, ref: str, inputs: list[str],
            parameters: dict[str, Any], batched: bool = True) -> tuple[ModelVersion, Any]:
    _check_limits(settings, inputs)
    version = resolve_version(session, project_id, ref)
    task = get_task(version.task)
    max_length = int(version.lineage.get("hyperparameters", {}).get("max_length") or 128)
    loaded = cache.get(version.storage_key, task, store.local_path(version.storage_key),
                       max_length)
    return version, task.response(loaded.predict(inputs, parameters), batched)
