"""registered model version counter

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:56:52.548828
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_version", sa.Integer(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE registered_models SET last_version = COALESCE((SELECT MAX(version) "
        "FROM model_versions WHERE registered_model_id = registered_models.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_column("last_version")
