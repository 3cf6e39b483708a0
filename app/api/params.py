"""Path and query parameters the routers share, with what the service enforces on them.

Ids and names are looked up in the database, and PostgreSQL text cannot hold a NUL
character, so no id or name has one: the spec says so, and such a value is refused (422)
before any lookup, on every database alike."""

from typing import Annotated

from fastapi import Path, Query

from app.schemas.common import NO_NUL

ResourceId = Annotated[str, Path(pattern=NO_NUL)]
After = Annotated[str | None, Query(pattern=NO_NUL,
                                    description="The last id of the previous page.")]
