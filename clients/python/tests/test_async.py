"""The asynchronous client, AsyncNile: the same contract as Nile, on asyncio (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from conftest import TOKEN_KEY, dsn
from nile_tenancy import AsyncNile, errors


def run(coro):
    return asyncio.run(coro)


def test_async_tenants_and_contexts(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("sdk_admin"), token_key=TOKEN_KEY) as admin, AsyncNile(dsn("app_user")) as app:
            tenant = await admin.tenants.create(name="async-tenant", metadata={"a": 1})
            tid = tenant["tenant_id"]
            assert await admin.tenants.get(tid) == tenant
            assert tid in [t["tenant_id"] for t in await admin.tenants.list()]
            assert (await admin.tenants.update(tid, {"name": "renamed"}))["name"] == "renamed"
            assert (await admin.tenants.deactivate(tid))["status"] == "inactive"
            assert (await admin.tenants.reactivate(tid))["status"] == "active"
            await admin.tenants.delete(tid, purge=True)
            assert await admin.tenants.get(tid) is None

            async with app.tenant_context(acme):
                assert await app.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]
                assert await app.sql.execute("INSERT INTO public.users (username, email) VALUES ('ann', 'a')") == 1
                async with app.tenant_context(acme):
                    pass
                with pytest.raises(errors.NestedContextError):
                    async with app.tenant_context(globex):
                        pass
            async with app.tenant_context(token=admin.tokens.sign(globex, 60)):
                assert await app.sql.fetch_one("SELECT username FROM public.users") == ("grace",)
            with pytest.raises(errors.NoTenantContext):
                await app.sql.fetch_all("SELECT * FROM public.users")
            async with admin.admin_context("async report"):
                assert (await admin.sql.fetch_one("SELECT count(*) FROM public.users"))[0] >= 3

    run(main())


def test_async_tasks_keep_their_own_context(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants

    async def main() -> dict[str, list]:
        async with AsyncNile(dsn("app_user"), max_size=4) as app:

            async def read(tenant: str) -> list:
                async with app.tenant_context(tenant):
                    await asyncio.sleep(0.05)  # both contexts open at once
                    return await app.sql.fetch_all("SELECT username FROM public.users")

            a, g = await asyncio.gather(read(acme), read(globex))
            return {"acme": a, "globex": g}

    assert run(main()) == {"acme": [("ada",)], "globex": [("grace",)]}


def test_async_rollback_and_clean_connection(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), min_size=1, max_size=1) as app:
            with pytest.raises(RuntimeError):
                async with app.tenant_context(acme):
                    await app.sql.execute("INSERT INTO public.users (username, email) VALUES ('gone', 'x')")
                    raise RuntimeError("failed request")
            assert await app.sql.fetch_one("SELECT nile.current_tenant()") == (None,)
            async with app.tenant_context(acme):
                assert await app.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]
                conn = await app.sql.connection()
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            with pytest.raises(errors.NoActiveContext):
                await app.sql.connection()

    run(main())


def test_async_usage_and_for_each_tenant(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("sdk_admin")) as admin:
            async with admin.tenant_context(acme):
                await admin.sql.fetch_all("SELECT * FROM public.users")
            assert (await admin.usage.tenant(acme))["statements"] >= 1
            assert isinstance(await admin.usage.noisy_neighbours("1 hour"), list)
            assert isinstance(await admin.usage.history(since=__import__("datetime").datetime(2000, 1, 1)), list)

            async def touch(tenant: str) -> None:
                await admin.sql.execute("UPDATE public.users SET is_active = true")
                if tenant == globex:
                    raise ValueError("fails")

            result = await admin.for_each_tenant(touch, batch_size=3, concurrency=2, progress=False)
            assert acme in result.done and list(result.failed) == [globex] and not result.remaining
            again = await admin.for_each_tenant(touch, resume=dataclass_without(result, globex), progress=False)
            assert again.ok

    def dataclass_without(result, tenant):
        result.failed.pop(tenant)
        result.remaining = []
        return result

    run(main())


def test_async_errors_are_the_same_classes(two_tenants: tuple[str, str]) -> None:
    async def main() -> None:
        async with AsyncNile(dsn("app_user")) as app:
            with pytest.raises(errors.TenantNotFound):
                async with app.tenant_context(uuid.uuid4()):
                    await app.sql.execute("SELECT 1")
            with pytest.raises(errors.InvalidToken):
                async with app.tenant_context(token="x.y.z"):
                    pass

    run(main())
