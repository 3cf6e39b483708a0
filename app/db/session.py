"""Engine and sessions. One engine per process, built from the settings.

Who commits: the unit of work, never the code inside it. A request's session (the
`SessionDep` dependency) and `session_scope` commit once at the end if nothing failed,
and roll back otherwise; services add and flush. What must happen only once the data is
stored (a job id sent to the broker, a deleted version's files removed) is registered
with `after_commit`.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def retry_on_outage(settings: Settings, work: Callable[[Session], T], *,
                    give_up_after: float, what: str) -> T:
    """Run `work` in its own session, retrying while the database is unreachable.

    A worker mid-training outlives a database restart: it keeps training and writes its
    state once the database is back, instead of failing a job that is fine.
    """
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    while True:
        try:
            with session_scope(settings) as session:
                return work(session)
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable while %s; retrying in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once this session's transaction has committed; never if it rolls back."""
    if _LISTENING not in session.info:
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_rollback", _drop_after_commit)
        session.info[_LISTENING] = True
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


_LISTENING, _AFTER_COMMIT = "tuneforge.listening", "tuneforge.after_commit"


def _run_after_commit(session: Session) -> None:
    # The change is stored: a follow-up that fails (a bucket down while deleting a version's
    # files) is logged, and neither undoes the answer nor skips the follow-ups after it.
    for action in session.info.pop(_AFTER_COMMIT, []):
        try:
            action()
        except Exception:
            log.exception("a follow-up to a committed change failed")


def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


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
