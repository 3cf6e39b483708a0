from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.db.session import engine_for
from app.schemas.common import Readiness

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {
    "model": Readiness, "description": "Not ready: the database or the broker is down."}})
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    checks = {"database": _database_ok(settings), "broker": request.app.state.broker_ok()}
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


def _database_ok(settings: SettingsDep) -> bool:
    try:
        with engine_for(settings.resolved_database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
