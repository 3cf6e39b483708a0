"""Prediction: resolve a model reference to a version, load it (cached), run it.

The hot path touches no database: model references resolve from memory (re-read after
`version_cache_seconds`), loaded models come from the cache, and rows go to the model's
batch runner, which merges them with other callers' rows into shared forward passes."""

import asyncio
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.db.models import ModelVersion
from app.db.session import session_factory
from app.errors import InvalidRequest, PayloadTooLarge
from app.ml.inference import LoadedModel, ModelCache
from app.ml.serving import BatchLimits, RunnerClosed, ServingObserver
from app.ml.tasks.catalog import get_task
from app.services import ratelimit, registry
from app.services.expiring import ExpiringCache
from app.services.keys import Principal
from app.storage.artifacts import ArtifactStore

DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class ServedVersion:
    """What serving needs of a version, kept in memory apart from any database session."""

    id: str
    task: str
    storage_key: str
    max_length: int
    # A LoRA version: where its base model's weights are (it holds only its adapter).
    base_source: str | None = None

    @classmethod
    def of(cls, version: ModelVersion, base_source: str | None = None) -> "ServedVersion":
        hyperparameters = version.lineage.get("hyperparameters", {})
        return cls(version.id, version.task, version.storage_key,
                   int(hyperparameters.get("max_length") or DEFAULT_MAX_LENGTH), base_source)


@dataclass(frozen=True)
class Prediction:
    version: ServedVersion
    precision: str
    body: Any


def check_limits(settings: Settings, inputs: list[str]) -> None:
    if len(inputs) > settings.max_predict_inputs:
        raise PayloadTooLarge(f"At most {settings.max_predict_inputs} inputs per request; got "
                              f"{len(inputs)}.", param="inputs", code="too_many_inputs")
    if sum(len(text) for text in inputs) > settings.max_predict_chars:
        raise PayloadTooLarge(f"At most {settings.max_predict_chars} characters per request.",
                              param="inputs", code="input_too_long")
    if any(not text.strip() for text in inputs):
        raise InvalidRequest("Inputs must not be empty or whitespace.", param="inputs",
                             code="empty_input")


def model_cache(settings: Settings, observer: ServingObserver | None = None) -> ModelCache:
    return ModelCache(settings.model_cache_bytes, settings.model_cache_size,
                      settings.serve_precision,
                      BatchLimits(settings.max_batch_tokens, settings.max_batch_rows,
                                  settings.batch_wait_ms / 1000, settings.serve_threads),
                      observer)


class Predictor:
    """The predict path of one API process."""

    def __init__(self, settings: Settings, store: ArtifactStore, limiter: ratelimit.RateLimiter,
                 models: ModelCache | None = None, observer: ServingObserver | None = None):
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.models = models or model_cache(settings, observer)
        self.versions: ExpiringCache[ServedVersion] = ExpiringCache(
            settings.version_cache_seconds)

    async def predict(self, principal: Principal, ref: str, inputs: list[str],
                      parameters: dict[str, Any], batched: bool = True) -> Prediction:
        check_limits(self.settings, inputs)
        await ratelimit.enforce_rows(self.limiter, principal.key_id,
                                     self.settings.predict_rows_per_minute, len(inputs))
        version = await self.resolve(principal.project_id, ref)
        task = get_task(version.task)
        loaded = await self.loaded(version)
        try:
            outputs = await self._run(loaded, inputs, parameters)
        except RunnerClosed:  # unloaded between lookup and submit: load it again
            outputs = await self._run(await self.loaded(version), inputs, parameters)
        return Prediction(version, loaded.precision, task.response(outputs, batched))

    async def resolve(self, project_id: str, ref: str) -> ServedVersion:
        """The version a reference names; at most `version_cache_seconds` stale."""
        version = self.versions.get((project_id, ref))
        if version is None:
            version = await asyncio.to_thread(self._resolve_now, project_id, ref)
            self.versions.put((project_id, ref), version)
        return version

    def _resolve_now(self, project_id: str, ref: str) -> ServedVersion:
        with session_factory(self.settings)() as session:
            version = registry.resolve_version(session, project_id, ref)
            base = registry.adapter_base_source(session, self.settings, self.store, version) \
                if registry.is_adapter_version(version) else None
            return ServedVersion.of(version, base)

    async def loaded(self, version: ServedVersion) -> LoadedModel:
        """A hot model at once; a cold one loads in a thread, so hot ones keep serving."""
        loaded = self.models.peek(version.storage_key)
        if loaded is None:
            loaded = await asyncio.to_thread(self._load_now, version)
        return loaded

    def _load_now(self, version: ServedVersion) -> LoadedModel:
        # local_path may download the version from a bucket: in this thread, never on the
        # event loop, where it would hold up every request of this process.
        return self.models.get(version.storage_key, get_task(version.task),
                               self.store.local_path(version.storage_key), version.max_length,
                               version.base_source)

    @staticmethod
    async def _run(loaded: LoadedModel, inputs: list[str],
                   parameters: dict[str, Any]) -> list[Any]:
        if loaded.runner is None:
            raise RunnerClosed("model has no runner")
        return await loaded.runner.predict(inputs, parameters)

    def forget_name(self, project_id: str, name: str) -> None:
        """Re-read a registered model's name and aliases on next use (an alias moved through
        this process takes effect here at once; elsewhere within the time to live)."""
        self.versions.discard_where(
            lambda key, _: key[0] == project_id and key[1].partition("@")[0] == name)

    def forget(self, version_id: str) -> None:
        """Drop a deleted version from this process at once (other processes: within the
        version cache's time to live)."""
        self.versions.discard_where(lambda _, version: version.id == version_id)
