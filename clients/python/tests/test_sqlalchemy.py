"""nile_tenancy.sqlalchemy against the real server (directly and through PgBouncer): tenant_session's isolation,
transactions, refusals, nesting, errors and pool hygiene on run.sh's table `users`; include_object with Alembic's
autogenerate on a database of its own (made here as `postgres`, dropped at the end).
"""

from __future__ import annotations

import pathlib
import threading
import uuid
import warnings
from typing import Any, Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Column,
    FetchedValue,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    Uuid,
    create_engine,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session, sessionmaker
from sqlalchemy.pool import NullPool

from conftest import CLIENT_PORT, DB, HOST, SERVER_PORT, TOKEN_KEY, VIA_PGBOUNCER, dsn, superuser
from nile_tenancy import Nile, errors
from nile_tenancy.sqlalchemy import include_name, include_object, tenant_session
from nile_tenancy.tokens import sign

ROLE_LAYOUT = pathlib.Path(__file__).resolve().parents[3] / "examples" / "role_layout.sql"
ALEMBIC_DB = f"{DB}_alembic"


class Base(DeclarativeBase):
    pass


class User(Base):
    """run.sh's public.users; the tenant column and the id are the database's."""

    __tablename__ = "users"
    __table_args__ = {"schema": "public"}
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, server_default=FetchedValue())
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    username: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)


def engine_for(user: str, dbname: str = DB, **kwargs: Any) -> Engine:
    """The application's engine; behind PgBouncer 1.18 psycopg must not prepare statements by name."""
    connect_args = {"prepare_threshold": None} if VIA_PGBOUNCER else {}
    return create_engine(f"postgresql+psycopg://{user}@{HOST}:{CLIENT_PORT}/{dbname}", connect_args=connect_args,
                         **kwargs)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = engine_for("app_user", pool_size=2, max_overflow=0)
    yield e
    e.dispose()


@pytest.fixture
def one_connection() -> Iterator[Engine]:
    """A pool of one connection: every session reuses it, and what a block leaves on it shows."""
    e = engine_for("app_user", pool_size=1, max_overflow=0)
    yield e
    e.dispose()


def usernames(session: Session) -> list[str]:
    return list(session.scalars(select(User.username).order_by(User.username)))


def context_of(session_or_conn: Any) -> Any:
    return session_or_conn.execute(text("SELECT nile.current_tenant()")).scalar()


def assert_clean(engine: Engine) -> None:
    """The pooled connection: no transaction, no context, and a tenant table fails closed (NT001)."""
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert context_of(conn) is None
        with pytest.raises(DBAPIError) as info:
            conn.execute(text("SELECT count(*) FROM public.users"))
        assert isinstance(info.value.orig, errors.NoTenantContext)


# --- tenant_session -------------------------------------------------------------------------------------------------


def test_a_tenant_sees_and_writes_only_its_own_rows(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    factory = sessionmaker(engine)
    with tenant_session(factory, acme) as session:
        assert usernames(session) == ["ada"]
        alan = User(username="alan", email="alan@example.test")
        session.add(alan)
        session.flush()
        assert alan.tenant_id == uuid.UUID(acme)  # the column's default: the context's tenant
        assert session.execute(text("UPDATE public.users SET email = 'changed'")).rowcount == 2
    with tenant_session(factory, globex) as session:
        assert usernames(session) == ["grace"]
        assert session.scalar(select(User.email)) == "grace@example.test"
    with superuser() as su:
        rows = su.execute("SELECT tenant_id::text, username, email FROM public.users WHERE tenant_id = ANY(%s::uuid[]) "
                          "ORDER BY 2", [[acme, globex]]).fetchall()
    assert rows == [(acme, "ada", "changed"), (acme, "alan", "changed"), (globex, "grace", "grace@example.test")]
    assert_clean(engine)


def test_every_kind_of_source(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    for source in (sessionmaker(engine), engine):
        with tenant_session(source, acme) as session:
            assert usernames(session) == ["ada"]
        assert not session.in_transaction()
    with engine.connect() as conn:
        with tenant_session(conn, acme) as session:
            assert usernames(session) == ["ada"]
        assert not conn.in_transaction() and context_of(conn) is None
        conn.rollback()
    with Session(engine) as mine:
        with tenant_session(mine, uuid.UUID(acme)) as session:
            assert session is mine and usernames(mine) == ["ada"]
        # The caller's session stays open, with no transaction, and its next transaction has no context.
        assert not mine.in_transaction() and context_of(mine) is None
        with pytest.raises(DBAPIError):
            usernames(mine)
    registry = scoped_session(sessionmaker(engine))  # e.g. Flask-SQLAlchemy's db.session: its current session
    with tenant_session(registry, acme) as session:
        assert session is registry() and usernames(session) == ["ada"]
    assert not registry().in_transaction()
    registry.remove()
    with pytest.raises(TypeError):
        with tenant_session("postgresql://", acme):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        with tenant_session(engine):
            pass


def test_commit_at_the_end_rollback_on_an_exception(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with tenant_session(engine, acme) as session:
        session.add(User(username="kept", email="k"))
    with pytest.raises(RuntimeError):
        with tenant_session(engine, acme) as session:
            session.add(User(username="dropped", email="d"))
            session.flush()
            raise RuntimeError("the request failed")
    with Session(engine) as mine:  # the caller's session: rolled back, not closed
        with pytest.raises(RuntimeError), tenant_session(mine, acme):
            mine.add(User(username="dropped too", email="d"))
            mine.flush()
            raise RuntimeError("the request failed")
        assert not mine.in_transaction() and context_of(mine) is None
    with tenant_session(engine, acme) as session:
        assert usernames(session) == ["ada", "kept"]
    assert_clean(engine)


def test_every_transaction_of_the_block_is_in_the_context(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with tenant_session(engine, acme) as session:
        session.add(User(username="first", email="f"))
        session.commit()  # a new transaction begins at the next statement: after_begin enters the context again
        assert context_of(session) == uuid.UUID(acme) and usernames(session) == ["ada", "first"]
        session.add(User(username="rolled", email="r"))
        session.rollback()
        assert usernames(session) == ["ada", "first"]
        with pytest.raises(RuntimeError), session.begin_nested():  # a failed SAVEPOINT keeps the context
            session.add(User(username="savepoint", email="s"))
            session.flush()
            raise RuntimeError
        assert context_of(session) == uuid.UUID(acme) and usernames(session) == ["ada", "first"]
    assert_clean(engine)


def test_refused_inside_an_open_transaction(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with Session(engine) as busy:
        busy.execute(text("SELECT 1"))  # autobegun
        with pytest.raises(errors.TransactionInProgress):
            with tenant_session(busy, acme):
                pass
        assert context_of(busy) is None
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(errors.TransactionInProgress):
            with tenant_session(conn, acme):
                pass
        with pytest.raises(errors.TransactionInProgress):
            with tenant_session(sessionmaker(bind=conn), acme):
                pass
        conn.begin_nested()  # still the caller's transaction, now in a savepoint
        with pytest.raises(errors.TransactionInProgress):
            with tenant_session(conn, acme):
                pass
        assert context_of(conn) is None
    assert_clean(engine)


def test_nesting(engine: Engine, admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    factory = sessionmaker(engine)
    with pytest.raises(RuntimeError):
        with tenant_session(factory, acme) as outer:
            with tenant_session(factory, uuid.UUID(acme)) as inner:  # the same tenant: the same session
                assert inner is outer
                inner.add(User(username="inner", email="i"))
            with tenant_session(factory, token=admin.tokens.sign(acme, 300)) as by_token:
                assert by_token is outer
            with pytest.raises(errors.NestedContextError):
                with tenant_session(factory, globex):
                    pass
            with pytest.raises(errors.NestedContextError):
                with tenant_session(factory, token="unreadable"):
                    pass
            with tenant_session(engine, acme) as other:  # the same tenant from another source: its own session
                assert other is not outer and usernames(other) == ["ada"]
            assert usernames(outer) == ["ada", "inner"]
            raise RuntimeError  # one transaction: the inner block's row goes with it
    with tenant_session(factory, acme) as session:
        assert usernames(session) == ["ada"]


def test_tokens_and_the_errors_of_entering(admin: Nile, one_connection: Engine, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with tenant_session(one_connection, token=admin.tokens.sign(globex, 300, user_id="u-7")) as session:
        assert usernames(session) == ["grace"]
        assert session.execute(text("SELECT nile.current_user_id()")).scalar() == "u-7"
    token_only = engine_for("sdk_token", poolclass=NullPool)
    try:
        with tenant_session(token_only, token=admin.tokens.sign(acme, 300)) as session:
            assert usernames(session) == ["ada"]
        cases = [
            (token_only, {"tenant_id": acme}, errors.TokenRequired),
            (one_connection, {"tenant_id": uuid.uuid4()}, errors.TenantNotFound),
            (one_connection, {"token": sign(acme, 60, key=TOKEN_KEY, now=1_000_000_000)}, errors.TokenExpired),
            (one_connection, {"token": "not.a.token"}, errors.InvalidToken),
        ]
        for source, kwargs, expected in cases:
            with pytest.raises(DBAPIError) as info:  # at the with: the context is entered at once
                with tenant_session(source, **kwargs):
                    pytest.fail("the block must not run")
            assert type(info.value.orig) is expected
    finally:
        token_only.dispose()
    assert_clean(one_connection)


def test_the_pooled_connection_comes_back_clean(one_connection: Engine, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with pytest.raises(KeyboardInterrupt):
        with tenant_session(one_connection, acme) as session:
            session.add(User(username="interrupted", email="x"))
            session.flush()
            raise KeyboardInterrupt
    assert_clean(one_connection)
    for _ in range(3):
        for tenant, name in ((acme, "ada"), (globex, "grace")):
            with tenant_session(one_connection, tenant) as session:
                assert usernames(session) == [name]
            assert_clean(one_connection)
    # Through PgBouncer another client may get the same server connection: it finds no context either.
    with psycopg.connect(dsn("app_user"), prepare_threshold=None, autocommit=True) as other:
        assert other.execute("SELECT nile.current_tenant()").fetchone() == (None,)
        with pytest.raises(errors.NoTenantContext):
            other.execute("SELECT count(*) FROM public.users")


def test_the_tenant_and_the_token_are_bound_parameters(admin: Nile, engine: Engine,
                                                       two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    token = admin.tokens.sign(acme, 300)
    for kwargs, secret in (({"tenant_id": acme}, acme), ({"token": token}, token)):
        with tenant_session(engine, **kwargs):
            with superuser() as su:  # the session is idle in its transaction: pg_stat_activity shows its last query
                queries = [q for (q,) in su.execute(
                    "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'idle in transaction'", [DB])]
            assert any(q.startswith("SELECT nile.set_tenant") and "$1" in q for q in queries), queries
            assert not [q for q in queries if secret in q]


def test_sessions_of_two_threads(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    seen: dict[str, list[str]] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(tenant: str) -> None:
        try:
            with tenant_session(engine, tenant) as session:
                barrier.wait(timeout=10)  # both transactions open at once, on the pool's two connections
                seen[tenant] = usernames(session)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (acme, globex)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == [] and seen == {acme: ["ada"], globex: ["grace"]}


# --- include_object (Alembic) ---------------------------------------------------------------------------------------

ALEMBIC_DDL = """
CREATE TABLE public.projects (
    tenant_id uuid NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE,
    id uuid NOT NULL,
    name text NOT NULL,
    nile_note text,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE public.notes (
    tenant_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body text NOT NULL
);
CREATE INDEX notes_body_idx ON public.notes (body);
"""


def server_conninfo(dbname: str) -> str:
    return f"host={HOST} port={SERVER_PORT} dbname={dbname} user=postgres application_name=nile-sdk-tests"


@pytest.fixture(scope="module")
def alembic_engine() -> Iterator[Engine]:
    """A database of its own (the extension, examples/role_layout.sql, two tenant tables made by app_migrator, with no
    context), and the migration role's engine on it."""
    with psycopg.connect(server_conninfo("postgres"), autocommit=True) as su:
        su.execute(f"DROP DATABASE IF EXISTS {ALEMBIC_DB} WITH (FORCE)")
        su.execute(f"CREATE DATABASE {ALEMBIC_DB}")
    with psycopg.connect(server_conninfo(ALEMBIC_DB), autocommit=True) as su:
        su.execute("SET client_min_messages = warning")
        su.execute("CREATE EXTENSION nile_tenancy")
        su.execute(ROLE_LAYOUT.read_text())
    engine = engine_for("app_migrator", ALEMBIC_DB, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(ALEMBIC_DDL)
    yield engine
    engine.dispose()
    with psycopg.connect(server_conninfo("postgres"), autocommit=True) as su:
        su.execute(f"DROP DATABASE IF EXISTS {ALEMBIC_DB} WITH (FORCE)")


def models() -> MetaData:
    """The application's models: nile.tenants only as the target of a foreign key; the column nile_note and the index
    notes_body_idx are in the database only (dropped from the models: autogenerate must propose to drop them)."""
    metadata = MetaData()
    Table("tenants", metadata, Column("id", Uuid, primary_key=True), schema="nile")
    Table("projects", metadata,
          Column("tenant_id", Uuid, ForeignKey("nile.tenants.id", ondelete="CASCADE"), primary_key=True),
          Column("id", Uuid, primary_key=True), Column("name", Text, nullable=False))
    Table("notes", metadata, Column("tenant_id", Uuid, nullable=False),
          Column("id", BigInteger, Identity(always=True), primary_key=True), Column("body", Text, nullable=False))
    return metadata


def proposed(engine: Engine, **opts: Any) -> set[tuple[str, ...]]:
    """What autogenerate proposes, as (operation, table, name)."""
    metadata = models()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"target_metadata": metadata, **opts})
        diffs = compare_metadata(context, metadata)
    found = set()
    for diff in diffs:
        op, obj = (diff[0][0], diff[0][1]) if isinstance(diff, list) else (diff[0], diff[1])
        if op in ("add_table", "remove_table"):
            found.add((op, f"{obj.schema or 'public'}.{obj.name}", ""))
        elif op in ("add_column", "remove_column"):
            found.add((op, f"{diff[1] or 'public'}.{diff[2]}", diff[3].name))
        else:
            found.add((op, obj.table.name, obj.name or ""))
    return found


def test_the_extensions_objects_are_there(alembic_engine: Engine) -> None:
    """What the enrolment made (so that the filter has something to leave out)."""
    with psycopg.connect(server_conninfo(ALEMBIC_DB), autocommit=True) as su:
        fks = su.execute("SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE conname = 'nile_tenant_fk'")
        assert fks.fetchall() == [("notes", "nile_tenant_fk")]
        assert su.execute("SELECT to_regclass('nile_notes_tenant_id_idx') IS NOT NULL").fetchone() == (True,)


@pytest.mark.filterwarnings("ignore:Did not recognize type")  # nile's xid8 and regrole columns, without include_name
def test_include_object_leaves_out_exactly_the_extensions_objects(alembic_engine: Engine) -> None:
    everything = proposed(alembic_engine, include_object=lambda *args: True)
    extension = {
        ("remove_fk", "notes", "nile_tenant_fk"),
        ("remove_index", "notes", "nile_notes_tenant_id_idx"),
        ("add_table", "nile.tenants", ""),
    }
    own = {("remove_column", "public.projects", "nile_note"), ("remove_index", "notes", "notes_body_idx")}
    assert everything == extension | own
    assert proposed(alembic_engine, include_object=include_object) == own
    # With every schema reflected, the extension's tables (nile.tenants has more columns than its stub) stay out too;
    # include_name keeps Alembic from reflecting them at all (nor warning about their types).
    assert proposed(alembic_engine, include_object=include_object, include_schemas=True) == own
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert proposed(alembic_engine, include_object=include_object, include_name=include_name,
                        include_schemas=True) == own
    assert include_name("nile", "schema", {}) is False and include_name("public", "schema", {}) is True
    assert include_name("nile_notes", "table", {"schema_name": None}) is True


def test_include_object_keeps_what_the_models_declare() -> None:
    metadata = models()
    notes = metadata.tables["notes"]
    declared = Index("nile_notes_body_idx", notes.c.body)
    assert include_object(declared, declared.name, "index", False, None) is True  # in the models: compared
    assert include_object(declared, declared.name, "index", True, declared) is True  # in both: compared
    assert include_object(declared, declared.name, "index", True, None) is False  # reflected only: the extension's
    assert include_object(notes, "notes", "table", True, None) is True
    assert include_object(metadata.tables["nile.tenants"], "tenants", "table", False, None) is False
    assert include_object(metadata.tables["nile.tenants"].c.id, "id", "column", True, None) is False


# --- the security review's attacks --------------------------------------------------------------------------------


def test_a_nested_token_is_verified_by_the_server(engine: Engine, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    forged = sign(acme, 300, "mallory", key="a-key-the-server-has-never-seen-" + "x" * 16)
    factory = sessionmaker(engine)
    with tenant_session(factory, acme) as session:
        with pytest.raises(DBAPIError) as raised:
            with tenant_session(factory, token=forged):
                pass
        assert isinstance(raised.value.orig, errors.InvalidToken)
        assert session.scalars(select(User.username)).all() == ["ada"]  # the outer transaction goes on
        with tenant_session(factory, token=sign(acme, 300, "inner", key=TOKEN_KEY)) as inner:
            assert inner is session
            assert session.execute(text("SELECT nile.current_user_id()")).scalar() is None


def test_a_session_of_yours_keeps_no_object_of_the_tenant(engine: Engine, two_tenants: tuple[str, str]) -> None:
    """session.get() answers from the identity map without a query: after a block of acme, a block of globex on the
    same session must not be handed acme's user."""
    acme, globex = two_tenants
    session = Session(engine, expire_on_commit=False)
    try:
        with tenant_session(session, acme):
            ada = session.scalars(select(User).where(User.username == "ada")).one()
            key = (ada.tenant_id, ada.id)
        with tenant_session(session, globex):
            assert session.get(User, key) is None
        assert len(session.identity_map) == 0
    finally:
        session.close()


def test_only_the_psycopg_driver(two_tenants: tuple[str, str]) -> None:
    """psycopg2 (and any driver but psycopg 3) would spell the id or token into the SQL text."""
    acme, _ = two_tenants
    other = create_engine("sqlite://")
    try:
        with pytest.raises(TypeError, match="psycopg"):
            with tenant_session(other, acme):
                pass
    finally:
        other.dispose()


def test_the_listener_is_gone_after_the_block(engine: Engine, two_tenants: tuple[str, str]) -> None:
    """A session of yours used after the block: its next transaction has no context (NT001), not the block's."""
    acme, _ = two_tenants
    session = Session(engine)
    try:
        with tenant_session(session, acme):
            pass
        with pytest.raises(DBAPIError) as raised:
            session.scalars(select(User.username)).all()
        assert isinstance(raised.value.orig, errors.NoTenantContext)
        session.rollback()
    finally:
        session.close()
