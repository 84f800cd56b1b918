"""tasks.done and an index on (tenant_id, done)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_tasks_tenant_done", "tasks", ["tenant_id", "done"])


def downgrade() -> None:
    op.drop_index("ix_tasks_tenant_done", table_name="tasks")
    op.drop_column("tasks", "done")
