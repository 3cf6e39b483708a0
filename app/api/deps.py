"""Dependencies shared by the routers: settings, a database session, the project, stores."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.session import session_factory
from app.ml.inference import ModelCache
from app.services.outbox import Send
from app.storage.artifacts import ArtifactStore

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    # The service layer commits; anything left uncommitted (an error) is rolled back here.
    with session_factory(settings)() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_model_cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.model_cache
    return cache


def get_send(request: Request) -> Send:
    send: Send = request.app.state.send
    return send


def get_project_id(request: Request) -> str:
    project_id: str = request.app.state.default_project_id
    return project_id


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
SendDep = Annotated[Send, Depends(get_send)]
ProjectDep = Annotated[str, Depends(get_project_id)]
