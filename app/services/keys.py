"""API keys: made random, shown once, stored as a hash, revocable."""

import hashlib
import logging
import os
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import ApiKey
from app.db.session import after_commit
from app.errors import InvalidRequest, NotFound, Unauthorized
from app.ids import new_id, now
from app.services.expiring import ExpiringCache
from app.services.projects import DEFAULT_PROJECT, ensure_project

log = logging.getLogger(__name__)
KEY_PREFIX = "tf-"
MIN_BOOTSTRAP_LENGTH = 16
ADMIN_KEY_FILE = "admin-key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's project, and whether it may manage keys."""

    key_id: str
    project_id: str
    admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _store_key(session: Session, project_id: str, key: str, admin: bool) -> ApiKey:
    record = ApiKey(id=new_id("key"), project_id=project_id, key_hash=hash_key(key),
                    prefix=key[:10], admin=admin, created_at=now())
    session.add(record)
    return record


def create_key(session: Session, project_name: str, admin: bool) -> tuple[ApiKey, str]:
    """A new key for the project (created if new). The plaintext is returned only here."""
    project = ensure_project(session, project_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = _store_key(session, project.id, key, admin)
    session.flush()
    return record, key


def presented_key_hash(authorization: str | None) -> str:
    """The hash of the key in an Authorization header (Unauthorized if there is none)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    return hash_key(token.strip())


def authenticate(session: Session, authorization: str | None) -> Principal:
    return _principal(session, presented_key_hash(authorization))


def _principal(session: Session, key_hash: str) -> Principal:
    # Looked up by hash: a caller cannot steer which bytes are compared, so no timing leak.
    record = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if record is None or record.revoked_at is not None:
        raise Unauthorized("The API key is not valid or has been revoked.")
    return Principal(record.id, record.project_id, record.admin)


# Every VerifiedKeys of this process (one per app), so a revocation here reaches them all.
_VERIFIED: "weakref.WeakSet[VerifiedKeys]" = weakref.WeakSet()


class VerifiedKeys:
    """Keys the database accepted within the last `ttl_seconds`, so most requests verify
    their key without a query. A revoked key keeps working here for at most that long;
    unknown and revoked keys are never remembered, so each costs a lookup."""

    def __init__(self, ttl_seconds: float):
        self._principals: ExpiringCache[Principal] = ExpiringCache(ttl_seconds)
        _VERIFIED.add(self)

    def forget(self, key_id: str) -> None:
        self._principals.discard_where(lambda _, principal: principal.key_id == key_id)

    def cached(self, authorization: str | None) -> Principal | None:
        return self._principals.get(presented_key_hash(authorization))

    def verify(self, session: Session, authorization: str | None) -> Principal:
        key_hash = presented_key_hash(authorization)
        principal = _principal(session, key_hash)
        self._principals.put(key_hash, principal)
        return principal


def list_keys(session: Session) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()


def revoke_key(session: Session, key_id: str) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
    if record.revoked_at is None:
        record.revoked_at = now()
    # Revoked through this process: refused here at once (elsewhere within the TTL). Only
    # once stored, or a request in between could remember the key as valid again.
    after_commit(session, lambda: _forget_everywhere(key_id))
    return record


def _forget_everywhere(key_id: str) -> None:
    for verified in list(_VERIFIED):
        verified.forget(key_id)


def bootstrap_admin_key(session: Session, settings: Settings) -> str | None:
    """Give the default project an admin key on first start.

    TUNEFORGE_BOOTSTRAP_KEY, when set, becomes that key unless its hash is already known
    (so a revoked bootstrap key stays revoked). Otherwise, if no admin key exists, a
    random key is made and written to <data dir>/admin-key (mode 0600); it is returned
    so the CLI can print it once.
    """
    project = ensure_project(session, DEFAULT_PROJECT)
    if settings.bootstrap_key is not None:
        key = settings.bootstrap_key.get_secret_value()
        if len(key) < MIN_BOOTSTRAP_LENGTH:
            raise InvalidRequest(f"TUNEFORGE_BOOTSTRAP_KEY must be at least "
                                 f"{MIN_BOOTSTRAP_LENGTH} characters.")
        if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))) is None:
            _store_key(session, project.id, key, admin=True)
        return None
    if session.scalar(select(ApiKey.id).where(ApiKey.admin.is_(True)).limit(1)) is not None:
        return None
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _store_key(session, project.id, key, admin=True)
    # The file names a key that works: written once the key is stored.
    after_commit(session, lambda: _write_private(settings.data_dir / ADMIN_KEY_FILE, key))
    return key


def _write_private(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
