"""the composite foreign key tasks (tenant_id, project_id) -> projects (tenant_id, id)

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Issue 18, problems 1 and 2: validated over every tenant's rows, with no tenant context.
    op.create_foreign_key(
        "tasks_project_fk", "tasks", "projects", ["tenant_id", "project_id"], ["tenant_id", "id"], ondelete="CASCADE"
    )


def downgrade() -> None:
    op.drop_constraint("tasks_project_fk", "tasks", type_="foreignkey")
