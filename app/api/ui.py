"""The web dashboard at /ui: static files only, outside the OpenAPI spec.

The page holds no data of its own. It signs in with an API key kept in the browser's
sessionStorage and calls the same /v1 routes as any client, so the key never travels in a
URL or a cookie and these routes need none.
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "ui" / "static"
# Scripts and styles from this origin only: an injected inline script could read the key.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


def install_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
