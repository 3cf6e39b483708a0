"""Alembic environment. The URL comes from the settings object, never from an ini file."""

from alembic import context

from app.db.models import Base
from app.db.session import engine_for

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = engine_for(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
