"""The Alembic migrations build exactly the schema the models declare, on PostgreSQL and SQLite,
and every revision downgrades cleanly.

`compare_metadata` is Alembic's autogenerate comparison: an empty diff means a
`revision --autogenerate` right now would produce an empty migration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from app.config import Settings
from app.db.migrate import alembic_config, upgrade_database
from app.db.models import Base
from app.db.session import engine_for


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    configured = Settings(data_dir=tmp_path / "data", database_url=url)
    yield configured
    # Close pooled connections before the database is dropped.
    engine_for(configured.resolved_database_url).dispose()


def _engine(settings: Settings) -> Engine:
    return engine_for(settings.resolved_database_url)


def _schema_diff(settings: Settings) -> list[Any]:
    with _engine(settings).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def _tables(settings: Settings) -> set[str]:
    return set(inspect(_engine(settings)).get_table_names())


def _current(settings: Settings) -> str | None:
    with _engine(settings).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_upgrade_matches_models_and_downgrades_cleanly(settings: Settings) -> None:
    config = alembic_config(settings)
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    model_tables = set(Base.metadata.tables)

    upgrade_database(settings)
    assert _current(settings) == heads[0]
    assert _tables(settings) == model_tables | {"alembic_version"}
    diff = _schema_diff(settings)
    assert diff == [], f"the migrated schema differs from app.db.models: {diff}"

    # Step down one revision at a time, so every downgrade() runs on its own.
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    for expected in [*revisions[1:], None]:
        command.downgrade(config, "-1")
        assert _current(settings) == expected
    assert _tables(settings) <= {"alembic_version"}, _tables(settings)

    # And up again, one revision at a time, to the same schema.
    for expected in reversed(revisions):
        command.upgrade(config, "+1")
        assert _current(settings) == expected
    assert _schema_diff(settings) == []


def test_upgrade_is_idempotent(settings: Settings) -> None:
    upgrade_database(settings)
    upgrade_database(settings)
    assert _schema_diff(settings) == []
