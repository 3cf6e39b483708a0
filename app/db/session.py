"""Engine and sessions. One engine per process, built from the settings."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings


def _make_sqlite_concurrent(engine: Engine) -> None:
    # WAL lets pollers read while the worker writes; busy_timeout waits instead of
    # failing with "database is locked" when two writers meet.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _make_sqlite_concurrent(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(engine_for(settings.resolved_database_url), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A short session for one unit of work: commits on success, rolls back on error."""
    with session_factory(settings)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
