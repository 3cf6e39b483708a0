"""Newest-first pages with an `after` cursor, the OpenAI list shape."""

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

T = TypeVar("T")


def newest_first(session: Session, query: Select[T], table: Any, cursor: Any | None,
                 limit: int) -> tuple[Sequence[T], bool]:
    """`limit` rows of `table` older than `cursor` (a row of it), and whether more follow.

    Ordered by (created_at, id), so rows made in the same instant still page stably.
    """
    if cursor is not None:
        query = query.where((table.created_at < cursor.created_at)
                            | ((table.created_at == cursor.created_at) & (table.id < cursor.id)))
    rows = session.scalars(query.order_by(table.created_at.desc(), table.id.desc())
                           .limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit
