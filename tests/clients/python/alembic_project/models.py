"""The application's SQLAlchemy models, as they stand after the last migration (versions/0004)."""

import uuid

from sqlalchemy import Boolean, Column, ForeignKey, ForeignKeyConstraint, Index, MetaData, Table, Text, Uuid, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    metadata = MetaData()


# nile.tenants, only so that ForeignKey("nile.tenants.id") resolves. It is the extension's: never migrated here
# (env.py's include_object leaves it out).
tenants = Table("tenants", Base.metadata, Column("id", Uuid, primary_key=True), schema="nile")


class Project(Base):
    __tablename__ = "projects"
    # The seed playbook's column: the foreign key to nile.tenants written by the migration itself (issue 18, 3).
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("nile.tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    tasks: Mapped[list["Task"]] = relationship(back_populates="project")


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "project_id"], ["projects.tenant_id", "projects.id"], name="tasks_project_fk",
            ondelete="CASCADE",
        ),
        Index("ix_tasks_tenant_done", "tenant_id", "done"),
    )
    # No foreign key to nile.tenants in the model: the extension adds its own, nile_tenant_fk, when the table is
    # created (what autogenerate would propose to drop without the include_object filter).
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    title: Mapped[str] = mapped_column(Text)
    done: Mapped[bool] = mapped_column(Boolean, server_default=false())
    project: Mapped[Project] = relationship(back_populates="tasks")


target_metadata = Base.metadata
