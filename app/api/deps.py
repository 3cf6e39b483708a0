"""Dependencies shared by the routers: settings, a database session, the caller, stores."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.session import session_factory
from app.errors import Forbidden
from app.ml.inference import ModelCache
from app.services import keys, ratelimit
from app.services.outbox import Send
from app.storage.artifacts import ArtifactStore

SettingsDep = Annotated[Settings, Depends(get_settings)]
# auto_error=False: a missing key is our Unauthorized (401 + WWW-Authenticate, our body).
_bearer = HTTPBearer(auto_error=False, description="An API key: `tuneforge keys create`.")


def get_session(settings: SettingsDep) -> Iterator[Session]:
    # The service layer commits; anything left uncommitted (an error) is rolled back here.
    with session_factory(settings)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, session: SessionDep, settings: SettingsDep,
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                  ) -> keys.Principal:
    principal = keys.authenticate(session, request.headers.get("authorization"))
    ratelimit.enforce(request.app.state.rate_limiter, principal.key_id,
                      settings.rate_limit_per_minute)
    return principal


PrincipalDep = Annotated[keys.Principal, Depends(get_principal)]


def get_project_id(principal: PrincipalDep) -> str:
    return principal.project_id


def get_admin(principal: PrincipalDep) -> keys.Principal:
    if not principal.admin:
        raise Forbidden("This needs an admin key.")
    return principal


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_model_cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.model_cache
    return cache


def get_send(request: Request) -> Send:
    send: Send = request.app.state.send
    return send


StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
SendDep = Annotated[Send, Depends(get_send)]
ProjectDep = Annotated[str, Depends(get_project_id)]
AdminDep = Annotated[keys.Principal, Depends(get_admin)]
