from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import (
    CallerDep,
    ModelCacheDep,
    PredictorDep,
    ProjectDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    cancel_on_disconnect,
)
from app.api.params import ResourceId
from app.api.spec import errors
from app.db.session import after_commit
from app.errors import Conflict, NotFound
from app.ml.base_models import local_base_models
from app.schemas.common import Deleted, ListPage
from app.schemas.models import (
    ALIAS_PATTERN,
    AliasPublic,
    AliasUpdate,
    ModelPublic,
    RegisteredModelPublic,
    VersionPublic,
)
from app.schemas.predict import PredictRequest
from app.services import export, registry

router = APIRouter(tags=["models"])
# Predict has a router of its own: it counts rows against its own limit, not requests.
predict_router = APIRouter(tags=["models"])
BASE_OWNER = "tuneforge"
VERSION_HEADER = "X-Tuneforge-Model-Version"
PRECISION_HEADER = "X-Tuneforge-Precision"
# What a server logs for a client that closed the connection before the answer (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


def _base_models(settings: SettingsDep) -> list[ModelPublic]:
    return [ModelPublic(id=m.id, created=0, owned_by=BASE_OWNER)
            for m in local_base_models(settings.resolved_models_dir).values()]


@router.get("/v1/models", response_model=ListPage[ModelPublic])
def list_models(session: SessionDep, settings: SettingsDep,
                project_id: ProjectDep) -> ListPage[ModelPublic]:
    tuned = [ModelPublic.of_version(v) for v in registry.list_versions(session, project_id)]
    return ListPage.of(_base_models(settings) + tuned)


@router.get("/v1/models/{model_id}", response_model=ModelPublic)
def get_model(model_id: ResourceId, session: SessionDep, settings: SettingsDep,
              project_id: ProjectDep) -> ModelPublic:
    version = registry.find_version(session, project_id, model_id)
    if version is not None:
        return ModelPublic.of_version(version)
    for base in _base_models(settings):
        if base.id == model_id:
            return base
    raise NotFound(f"No model '{model_id}'.", param="model")


# 409: a base model, or a name or alias rather than one version.
@router.delete("/v1/models/{model_id}", response_model=Deleted, responses=errors(409))
def delete_model(model_id: ResourceId, session: SessionDep, settings: SettingsDep, store: StoreDep,
                 cache: ModelCacheDep, predictor: PredictorDep,
                 project_id: ProjectDep) -> Deleted:
    if model_id in local_base_models(settings.resolved_models_dir):
        raise Conflict("Base models are shared and cannot be deleted.", param="model",
                       code="base_model_not_deletable")
    version = registry.delete_version(session, store, project_id, model_id)
    # After the commit: a request in between would otherwise cache the old state again.
    storage_key, version_id = version.storage_key, version.id

    def unload() -> None:
        cache.evict(storage_key)
        predictor.forget(version_id)

    after_commit(session, unload)
    return Deleted(id=model_id, object="model")


# A LoRA version: merged into its base (a plain model), or its adapter alone (for peft).
ExportFormat = Annotated[Literal["merged", "adapter"], Query(
    description="LoRA versions: `merged` (default) folds the adapter into its base model; "
                "`adapter` sends the adapter and head alone. A full fine-tune is always "
                "`merged`.")]


# 409: a base model (shared, not exported), or a model still being trained.
@router.get("/v1/models/{model_id}/content", response_class=StreamingResponse, responses={
    **errors(409),
    200: {"description": "The version as a gzipped tar of one folder: safetensors weights, "
                         "config.json, tokenizer files, labels.json and a model card.",
          "content": {export.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
def get_model_content(model_id: ResourceId, session: SessionDep, settings: SettingsDep,
                      store: StoreDep, project_id: ProjectDep,
                      format: ExportFormat = "merged") -> StreamingResponse:
    archive = export.export_version(session, settings, store, project_id, model_id, format)
    return StreamingResponse(archive.chunks(), media_type=export.MEDIA_TYPE, headers={
        "Content-Disposition": f'attachment; filename="{archive.filename}"'})


# 409: the model is still being trained.
@predict_router.post("/v1/models/{model_id}/predict", responses=errors(409))
async def predict(model_id: ResourceId, body: PredictRequest, request: Request, response: Response,
                  principal: CallerDep, predictor: PredictorDep) -> Any:
    # Async, with no database session: the hot path runs on the event loop and in the
    # model's batch runner only (app.services.predictions).
    prediction = await cancel_on_disconnect(request, predictor.predict(
        principal, model_id, body.as_list(), body.parameter_dict(), batched=body.batched))
    if prediction is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    response.headers[VERSION_HEADER] = prediction.version.id
    response.headers[PRECISION_HEADER] = prediction.precision
    return prediction.body


@router.get("/v1/registry/{name}", response_model=RegisteredModelPublic)
def get_registered_model(name: ResourceId, session: SessionDep,
                         project_id: ProjectDep) -> RegisteredModelPublic:
    view = registry.registry_view(session, project_id, name)
    return RegisteredModelPublic(name=view["model"].name,
                                 created_at=int(view["model"].created_at),
                                 versions=[VersionPublic.of(v) for v in view["versions"]],
                                 aliases=view["aliases"])


@router.put("/v1/registry/{name}/aliases/{alias}", response_model=AliasPublic)
def set_alias(name: ResourceId, alias: Annotated[str, Path(max_length=64, pattern=ALIAS_PATTERN)],
              body: AliasUpdate, session: SessionDep,
              predictor: PredictorDep, project_id: ProjectDep) -> AliasPublic:
    version = registry.set_alias(session, project_id, name, alias, body.version)
    after_commit(session, lambda: predictor.forget_name(project_id, name))
    return AliasPublic(name=name, alias=alias, version=version.id)
