"""psycopg 3, asyncio: pipeline mode, and concurrent tenants on one AsyncConnectionPool.

Each test names the numbered problem of issue 18 it guards ("isolation" where it guards the isolation itself).
"""

import asyncio
import uuid

import psycopg
from psycopg_pool import AsyncConnectionPool

from conftest import NO_TENANT_CONTEXT, client_kwargs, conninfo, insert_as, raises_sqlstate


async def _connect() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(conninfo("app_user"), **client_kwargs())


# Isolation (and problem 9, NT001): set_tenant() and the queries sent in one pipeline, without waiting for each
# result; a pipeline that forgets set_tenant() fails closed.
def test_pipeline_set_tenant_and_queries(items, tenant_a, tenant_b):
    insert_as(tenant_b, items, "b-row")

    async def main():
        conn = await _connect()
        async with conn:
            async with conn.transaction():
                async with conn.pipeline() as pipeline:
                    cur_set = await conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
                    await conn.execute(f"INSERT INTO {items} (body) VALUES (%s)", ("a-1",))
                    await conn.execute(f"INSERT INTO {items} (body) VALUES (%s)", ("a-2",))
                    cur_rows = await conn.execute(f"SELECT tenant_id, body FROM {items} ORDER BY id")
                    cur_ctx = await conn.execute("SELECT nile.current_tenant()")
                    await pipeline.sync()
                    assert str((await cur_set.fetchone())[0]) == tenant_a
                    rows = await cur_rows.fetchall()
                    ctx = (await cur_ctx.fetchone())[0]
            assert [(str(t), b) for t, b in rows] == [(tenant_a, "a-1"), (tenant_a, "a-2")]
            assert str(ctx) == tenant_a
            # Forgotten context inside a pipeline: the error surfaces, no row does.
            with raises_sqlstate(NO_TENANT_CONTEXT):
                async with conn.transaction():
                    async with conn.pipeline():
                        cur = await conn.execute(f"SELECT body FROM {items}")
                        await conn.execute("SELECT 1")
                    await cur.fetchall()

    asyncio.run(main())


# Isolation under concurrency (and problem 7): tasks of two tenants share one AsyncConnectionPool of 3 connections;
# every transaction sees exactly its own tenant's rows, and every connection has served both tenants.
def test_concurrent_tenants_on_one_async_pool_never_see_each_other(items, tenant_a, tenant_b):
    per_task = 6
    tasks_per_tenant = 6

    async def worker(pool, tenant, label, served):
        mine = []
        for i in range(per_task):
            marker = f"{label}-{i}-{uuid.uuid4().hex[:6]}"
            async with pool.connection() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
                    pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
                    served.setdefault(pid, set()).add(tenant)
                    await conn.execute(f"INSERT INTO {items} (body) VALUES (%s)", (marker,))
                    await asyncio.sleep(0.001)  # let the other tenant's tasks interleave
                    rows = await (await conn.execute(f"SELECT tenant_id, body FROM {items}")).fetchall()
                mine.append(marker)
                assert {str(t) for t, _ in rows} == {tenant}, f"{label} saw another tenant's rows"
                bodies = {b for _, b in rows}
                assert set(mine) <= bodies
                assert all(b.startswith(label.split("/")[0]) for b in bodies), f"{label} saw {bodies}"
        return mine

    async def main():
        served: dict = {}
        async with AsyncConnectionPool(
            conninfo("app_user"), min_size=3, max_size=3, kwargs=client_kwargs(), open=False
        ) as pool:
            results = await asyncio.gather(
                *[worker(pool, tenant_a, f"A/{k}", served) for k in range(tasks_per_tenant)],
                *[worker(pool, tenant_b, f"B/{k}", served) for k in range(tasks_per_tenant)],
            )
            # Between transactions a pooled connection has no context and reads nothing.
            async with pool.connection() as conn:
                assert (await (await conn.execute("SELECT nile.current_tenant()")).fetchone())[0] is None
                await conn.rollback()
                with raises_sqlstate(NO_TENANT_CONTEXT):
                    await conn.execute(f"SELECT body FROM {items}")
        return served, results

    served, results = asyncio.run(main())
    total = per_task * tasks_per_tenant
    assert sum(len(r) for r in results) == 2 * total
    assert any(len(tenants) == 2 for tenants in served.values()), f"no server connection served both: {served}"
