"""Newest-first pages with an `after` cursor, the OpenAI list shape."""

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, and_, false, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")
Order = tuple[InstrumentedAttribute[Any], ...]


def by_creation(table: Any) -> Order:
    """(created_at, id): rows made in the same instant still page stably."""
    return (table.created_at, table.id)


def newest_first(session: Session, query: Select[T], order: Order, cursor: Any | None,
                 limit: int) -> tuple[Sequence[T], bool]:
    """`limit` rows that come after `cursor` (a row) in descending `order`, and whether
    more follow. `order` must be unique, so that no two rows tie."""
    if cursor is not None:
        query = query.where(_before(order, cursor))
    rows = session.scalars(query.order_by(*(column.desc() for column in order))
                           .limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def _before(order: Order, cursor: Any) -> Any:
    """Rows strictly before the cursor in `order`, compared column by column."""
    condition: Any = false()
    for column in reversed(order):
        value = getattr(cursor, column.key)
        condition = or_(column < value, and_(column == value, condition))
    return condition
