"""Alembic environment of the client suite: run as app_migrator (README, "Migrations with SQLAlchemy/Alembic")."""

from alembic import context
from sqlalchemy import create_engine, pool

from models import target_metadata

config = context.config


def include_object(object, name, type_, reflected, compare_to):
    # nile_tenancy's generated objects (nile_tenant_fk, the nile_<table>_<column>_idx index) are not in the models:
    # do not propose to drop them.
    if reflected and compare_to is None and (name or "").startswith("nile_"):
        return False
    # nile.tenants is in the models only as the target of foreign keys: it belongs to the extension.
    if type_ == "table" and getattr(object, "schema", None) == "nile":
        return False
    return True


def run_migrations_online() -> None:
    # prepare_threshold=None: no named prepared statements, as PgBouncer in transaction mode before 1.21 requires.
    engine = create_engine(
        config.get_main_option("sqlalchemy.url"),
        poolclass=pool.NullPool,
        connect_args={"prepare_threshold": None},
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used by this project")
run_migrations_online()
