"""Run Alembic migrations from code, so `tuneforge db upgrade` needs no ini file."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations
from app.config import Settings
from app.db.session import engine_for


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # '%' is ConfigParser interpolation syntax; URLs may contain it (escaped passwords).
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url.replace("%", "%%"))
    return config


def schema_is_current(settings: Settings) -> bool:
    """Whether the database is at the newest migration this code knows."""
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    with engine_for(settings.resolved_database_url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head


def upgrade_database(settings: Settings) -> None:
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
