"""The model registry: named models, immutable numbered versions, movable aliases."""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import DatasetFile, FineTuningJob, ModelAlias, ModelVersion, RegisteredModel
from app.db.session import after_commit
from app.domain.statuses import TERMINAL
from app.errors import Conflict, InvalidRequest, ModelNotReady, NotFound
from app.ids import now
from app.ml.base_models import resolve_base_model
from app.storage.artifacts import ArtifactStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_ID = re.compile(r"^ft:(?P<name>[^:@]+):v(?P<version>[0-9]+)$")


def version_id(name: str, version: int) -> str:
    return f"ft:{name}:v{version}"


def derived_name(job: FineTuningJob, training_filename: str) -> str:
    """The model name when the job gave no suffix: the training file's name, made safe."""
    if job.suffix:
        return job.suffix
    stem = Path(training_filename).stem
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "model"
    return slug[:64]


def _registered(session: Session, project_id: str, name: str) -> RegisteredModel | None:
    return session.scalar(select(RegisteredModel).where(
        RegisteredModel.project_id == project_id, RegisteredModel.name == name))


def find_version(session: Session, project_id: str, ref: str) -> ModelVersion | None:
    """A version by id (`ft:name:vN`), `name@alias`, or `name` (the latest version)."""
    base = select(ModelVersion).where(ModelVersion.project_id == project_id)
    if _VERSION_ID.match(ref):
        return session.scalar(base.where(ModelVersion.id == ref))
    name, _, alias = ref.partition("@")
    model = _registered(session, project_id, name)
    if model is None:
        return None
    if alias:
        return session.scalar(base.join(ModelAlias, ModelAlias.version_pk == ModelVersion.pk)
                              .where(ModelAlias.registered_model_id == model.id,
                                     ModelAlias.alias == alias))
    return session.scalar(base.where(ModelVersion.registered_model_id == model.id)
                          .order_by(ModelVersion.version.desc()).limit(1))


def resolve_version(session: Session, project_id: str, ref: str) -> ModelVersion:
    version = find_version(session, project_id, ref)
    if version is not None:
        return version
    training = session.scalar(select(FineTuningJob.id).where(
        FineTuningJob.project_id == project_id, FineTuningJob.suffix == ref.partition("@")[0],
        FineTuningJob.status.not_in(TERMINAL)))
    if training is not None:
        raise ModelNotReady(f"Model '{ref}' is still being trained by job '{training}'.",
                            param="model")
    raise NotFound(f"No model '{ref}'.", param="model")


def is_adapter_version(version: ModelVersion) -> bool:
    """A LoRA version: it holds an adapter and a head, and serves over its base model."""
    return bool(version.lineage.get("hyperparameters", {}).get("lora"))


def model_source(session: Session, settings: Settings, store: ArtifactStore, project_id: str,
                 ref: str) -> str:
    """Where a model's whole weights are: one of the project's versions, or a base model.
    An adapter version has none of its own, so it cannot be the base of another job."""
    version = find_version(session, project_id, ref)
    if version is None:
        return resolve_base_model(ref, settings.resolved_models_dir,
                                  settings.allow_network).source
    check_trainable_base(version, ref)
    return str(store.local_path(version.storage_key))


def check_trainable_base(version: ModelVersion, ref: str) -> None:
    """A job starts from whole weights: an adapter version has none of its own."""
    if is_adapter_version(version):
        raise InvalidRequest(f"Model '{ref}' is a LoRA adapter of '{version.base_model}'; start "
                             "the job from that base model, or from a full fine-tune.",
                             param="model", code="adapter_as_base")


def adapter_base_source(session: Session, settings: Settings, store: ArtifactStore,
                        version: ModelVersion) -> str:
    """Where an adapter version's base weights are. Its base is pinned: a version id, or a
    base model's id that a project model of the same name must not shadow."""
    if _VERSION_ID.match(version.base_model):
        base = find_version(session, version.project_id, version.base_model)
        if base is not None:
            return str(store.local_path(base.storage_key))
    return resolve_base_model(version.base_model, settings.resolved_models_dir,
                              settings.allow_network).source


def _pinned_base(session: Session, job: FineTuningJob, base_model: str) -> str:
    """An adapter's base as a version id, not a name or alias that may later name another
    version: the adapter only fits the weights it was trained on."""
    if not job.hyperparameters.get("lora"):
        return base_model
    version = find_version(session, job.project_id, base_model)
    return version.id if version is not None else base_model


def register_version(session: Session, store: ArtifactStore, job: FineTuningJob,
                     checkpoint: Path, labels: list[str], metrics: dict[str, Any],
                     base_model: str) -> ModelVersion:
    files = {f.id: f for f in session.scalars(select(DatasetFile).where(
        DatasetFile.id.in_([job.training_file, job.validation_file])))}
    name = derived_name(job, files[job.training_file].filename)
    model = _registered(session, job.project_id, name)
    if model is None:
        model = RegisteredModel(project_id=job.project_id, name=name, created_at=now(),
                                last_version=0)
        session.add(model)
        session.flush()
    # One atomic increment: two jobs finishing at once still get distinct numbers.
    number = session.execute(
        update(RegisteredModel).where(RegisteredModel.id == model.id)
        .values(last_version=RegisteredModel.last_version + 1)
        .returning(RegisteredModel.last_version)).scalar_one()
    key = store.new_key("models")
    store.put_tree(checkpoint, key)
    version = ModelVersion(
        id=version_id(name, number), project_id=job.project_id, registered_model_id=model.id,
        version=number, job_id=job.id, base_model=_pinned_base(session, job, base_model),
        task=job.task, labels=labels,
        metrics=metrics, storage_key=key, created_at=now(),
        lineage={
            "base_model": job.model, "job": job.id, "hyperparameters": job.hyperparameters,
            "seed": job.seed,
            "files": [{"id": f.id, "filename": f.filename, "sha256": f.sha256, "rows": f.rows}
                      for f in files.values()],
        },
    )
    session.add(version)
    session.flush()
    return version


def _check_no_adapters_on(session: Session, version: ModelVersion) -> None:
    adapters = session.scalars(select(ModelVersion.id).where(
        ModelVersion.project_id == version.project_id,
        ModelVersion.base_model == version.id)).all()
    if adapters:
        raise Conflict(f"LoRA versions {', '.join(adapters)} serve over '{version.id}'; delete "
                       "them first.", param="model", code="base_of_adapters")


def list_versions(session: Session, project_id: str) -> Sequence[ModelVersion]:
    return session.scalars(select(ModelVersion).where(ModelVersion.project_id == project_id)
                           .order_by(ModelVersion.created_at)).all()


def registry_view(session: Session, project_id: str, name: str) -> dict[str, Any]:
    model = _registered(session, project_id, name)
    if model is None:
        raise NotFound(f"No registered model '{name}'.", param="name")
    versions = session.scalars(select(ModelVersion).where(
        ModelVersion.registered_model_id == model.id).order_by(ModelVersion.version)).all()
    aliases = session.execute(select(ModelAlias.alias, ModelVersion.id).join(
        ModelVersion, ModelAlias.version_pk == ModelVersion.pk).where(
        ModelAlias.registered_model_id == model.id)).all()
    return {"model": model, "versions": versions, "aliases": dict(aliases)}


def _as_version_id(name: str, ref: str) -> str:
    """Alias targets may be written `ft:name:v2`, `v2` or `2`."""
    number = ref.removeprefix("v")
    return version_id(name, int(number)) if _is_number(number) else ref


def _is_number(text: str) -> bool:
    # str.isdigit() is true for '¹' and other digits int() refuses; versions are ASCII.
    return text.isascii() and text.isdigit()


def set_alias(session: Session, project_id: str, name: str, alias: str,
              ref: str) -> ModelVersion:
    if not NAME.match(alias) or alias.startswith("v") and _is_number(alias[1:]):
        raise InvalidRequest("Alias names use letters, digits, '_', '.', '-' and may not look "
                             "like a version (v1).", param="alias")
    model = _registered(session, project_id, name)
    if model is None:
        raise NotFound(f"No registered model '{name}'.", param="name")
    target = find_version(session, project_id, _as_version_id(name, ref))
    if target is None or target.registered_model_id != model.id:
        raise NotFound(f"Model '{name}' has no version '{ref}'.", param="version")
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        row = ModelAlias(registered_model_id=model.id, alias=alias, version_pk=target.pk,
                         updated_at=now())
        session.add(row)
    else:
        row.version_pk, row.updated_at = target.pk, now()
    session.flush()
    return target


def delete_version(session: Session, store: ArtifactStore, project_id: str,
                   ref: str) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(
        ModelVersion.project_id == project_id, ModelVersion.id == ref))
    if version is None:
        if find_version(session, project_id, ref) is not None:
            raise Conflict("Delete a specific version id (ft:name:vN), not a name or alias.",
                           param="model")
        raise NotFound(f"No fine-tuned model '{ref}'.", param="model")
    _check_no_adapters_on(session, version)
    for alias in session.scalars(select(ModelAlias).where(ModelAlias.version_pk == version.pk)):
        session.delete(alias)
    session.delete(version)
    session.flush()
    # Weights go once the version is gone for good: a failed commit leaves both in place.
    after_commit(session, lambda: store.delete(version.storage_key))
    return version
