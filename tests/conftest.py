"""Fixtures shared by the live suites: the SST-2 data, a throwaway PostgreSQL database, and a
Redis database number nobody else is using.

PostgreSQL and Redis are expected on 127.0.0.1 (override with TUNEFORGE_TEST_PG_ADMIN_URL and
TUNEFORGE_TEST_REDIS_HOST/PORT). When they are absent the tests that need them fail with a
message saying so; deselect them with `-m "not postgres"`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import data_root, read_jsonl
from tests.s3 import S3Bucket, S3Server, new_bucket

PG_ADMIN_URL = os.environ.get("TUNEFORGE_TEST_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("TUNEFORGE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TUNEFORGE_TEST_REDIS_PORT", "6379"))
TRAIN_ROWS = 800
DEV_ROWS = 200


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    folder = data_root() / "sst2"
    if not (folder / "train.jsonl").is_file() or not (folder / "dev.jsonl").is_file():
        pytest.fail(f"SST-2 data not found in {folder}: the repository expects ../shared/data "
                    "next to it, or TUNEFORGE_TEST_DATA pointing at a folder with sst2/")
    return folder


@pytest.fixture(scope="session")
def sst2_train(sst2_dir: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(sst2_dir / "train.jsonl", TRAIN_ROWS)
    assert len(rows) == TRAIN_ROWS
    return rows


@pytest.fixture(scope="session")
def sst2_dev(sst2_dir: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(sst2_dir / "dev.jsonl", DEV_ROWS)
    assert len(rows) == DEV_ROWS
    return rows


def _admin_connect() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it or "
                    "deselect these tests with -m 'not postgres'")


def _sqlalchemy_url(admin_url: str, database: str) -> str:
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database (random name) as a SQLAlchemy URL; dropped afterwards."""
    name = "tuneforge_test_" + secrets.token_hex(6)
    with _admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _sqlalchemy_url(PG_ADMIN_URL, name)
    finally:
        with _admin_connect() as admin:
            # FORCE: a process that outlived its test must not keep the database alive.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """redis://host:port/<n> for an empty database number; flushed afterwards."""
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        admin.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT} ({exc}); start it or "
                    "deselect these tests with -m 'not postgres'")
    number = None
    for candidate in secrets.SystemRandom().sample(range(1, 16), 15):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=candidate, socket_timeout=5)
        # Claim the number with a marker key, so a parallel run picks another one.
        if client.dbsize() == 0 and client.set("tuneforge-test-claim", "1", nx=True):
            number = candidate
            break
    if number is None:
        pytest.fail(f"no empty Redis database number on {REDIS_HOST}:{REDIS_PORT}")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    finally:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=5).flushdb()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server (tests/s3.py) for the session; only tests that ask for it start it."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """An empty bucket of this test's own on the moto server."""
    return new_bucket(s3_server)


# ------------------------------------------------------------------ CI rotation
# The slowest fault and end-to-end suites of features that have settled are marked
# `rotating`. `pytest` runs them all. CI sets TUNEFORGE_TEST_ROTATION=K/N (.ci/run: K is the
# commit count of HEAD modulo N) and runs the K-th of N shards of them, so N consecutive
# submissions run every one of them; every other test runs every time.
ROTATION_ENV = "TUNEFORGE_TEST_ROTATION"


def _rotation() -> tuple[int, int] | None:
    value = os.environ.get(ROTATION_ENV, "").strip()
    if not value:
        return None
    shard, _, shards = value.partition("/")
    return int(shard), int(shards)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rotation = _rotation()
    if rotation is None:
        return
    shard, shards = rotation
    # Dealt out in name order, so the shards stay even.
    rotating = sorted(item.nodeid for item in items if item.get_closest_marker("rotating"))
    later = {nodeid for i, nodeid in enumerate(rotating) if i % shards != shard}
    if later:
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid in later])
        items[:] = [item for item in items if item.nodeid not in later]
