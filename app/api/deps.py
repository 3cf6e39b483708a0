"""Dependencies shared by the routers: settings, a database session, the caller, stores."""

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.session import session_factory, session_scope
from app.errors import Forbidden
from app.ml.inference import ModelCache
from app.services import keys, ratelimit
from app.services.outbox import Send
from app.services.predictions import Predictor
from app.storage.artifacts import ArtifactStore

T = TypeVar("T")
SettingsDep = Annotated[Settings, Depends(get_settings)]
# auto_error=False: a missing key is our Unauthorized (401 + WWW-Authenticate, our body).
_bearer = HTTPBearer(auto_error=False, description="An API key: `tuneforge keys create`.")


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """The request's unit of work: committed once the route has returned, rolled back if
    it raised. Services only add and flush (app/db/session.py)."""
    with session_scope(settings) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a client never
# hears of a write that did not land.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_caller(request: Request,
                     _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                     ) -> keys.Principal:
    """The key's principal: from memory when verified in the last `key_cache_seconds`, else
    from the database (in a thread, off the event loop)."""
    verified: keys.VerifiedKeys = request.app.state.verified_keys
    authorization = request.headers.get("authorization")
    principal = verified.cached(authorization)
    if principal is None:
        principal = await run_in_threadpool(_verify, verified, authorization)
    return principal


def _verify(verified: keys.VerifiedKeys, authorization: str | None) -> keys.Principal:
    with session_factory(get_settings())() as session:
        return verified.verify(session, authorization)


CallerDep = Annotated[keys.Principal, Depends(get_caller)]


def get_principal(request: Request, principal: CallerDep,
                  settings: SettingsDep) -> keys.Principal:
    """The caller of a control-plane route, counted against the per-minute request limit
    (predict counts rows instead: app.services.predictions)."""
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


async def get_predictor(request: Request) -> Predictor:
    # Async: a plain function would cost the predict path a hop to the thread pool.
    predictor: Predictor = request.app.state.predictor
    return predictor


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, or cancel it if the client goes away first (None then): a request
    whose caller disconnected runs no further rows."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message is the disconnect (or the response's end).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def get_send(request: Request) -> Send:
    send: Send = request.app.state.send
    return send


StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
SendDep = Annotated[Send, Depends(get_send)]
ProjectDep = Annotated[str, Depends(get_project_id)]
AdminDep = Annotated[keys.Principal, Depends(get_admin)]
