"""bench/sdk.py PORT — the latency of a point read through the Python SDK against raw psycopg, side by side, one run.

Variants, each a loop of one point read (a random tenant, a random row of it) on one connection of its own:
  raw         raw psycopg, autocommit, one statement with an explicit `WHERE tenant_id = %s` on a twin table without
              row-level security (the baseline: what "as fast as hand-written SQL" means)
  raw_pool    the same through a psycopg_pool ConnectionPool (`with pool.connection()`), as an application runs it
  by_hand     the hand-written shape without the SDK: BEGIN, SELECT nile.set_tenant(%s), the read, COMMIT, each a
              round trip of its own
  sdk         `with nile.tenant_context(t): nile.sql.fetch_one(read)`: nile.set_tenant_read_only() and the read
              pipelined without BEGIN, in a read-only transaction that ends with the pipeline (one round trip), with
              the client's own pool (Nile(dsn))
  sdk_begin   the same with `Nile(one_round_trip_reads=False)`: BEGIN, the context and the read pipelined, then COMMIT
Both with psycopg's server-side prepared statements (the default: prepare_threshold 5 for raw psycopg,
prepared_statements=True for the SDK) and without (prepare_threshold None for raw psycopg, the SDK's default, which
PgBouncer 1.18 needs). Each round interleaves the variants operation by operation, in an order shuffled anew each
time (see measure_round), so that all meet the machine in the same state (its loopback latency moves by a factor of two
over seconds here); the report is the median of each variant's per-round mean latency, and its ratio to raw.

BENCH_BREAKDOWN=1 adds, to see where the SDK's time goes, on connections of their own in autocommit: raw_pipe (the raw
read alone in psycopg's own pipeline mode, Connection.pipeline(), which the SDK no longer uses), and through the SDK's
one-round-trip path (nile_tenancy._pipeline.run, without the rest of the SDK): one (the raw read alone), two
(`SELECT %s::uuid` and the raw read), ctx (`nile.set_tenant_read_only(%s)` and the read of the table with row-level
security: the SDK's round trip without the SDK's bookkeeping and pool).

Environment: BENCH_ROUNDS (default 6), BENCH_OPS per variant per round (default 3000), BENCH_TENANTS (default 100).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from typing import Callable

import psycopg
from psycopg_pool import ConnectionPool

from nile_tenancy import Nile, _pipeline

PORT = int(sys.argv[1])
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
OPS = int(os.environ.get("BENCH_OPS", "3000"))
TENANTS = int(os.environ.get("BENCH_TENANTS", "100"))
ROWS_PER_TENANT = 100
DSN = f"host=127.0.0.1 port={PORT} dbname=bench user=bench_app"
READ_RAW = "SELECT id, payload FROM bench.items_plain WHERE tenant_id = %s AND id = %s"
READ = "SELECT id, payload FROM bench.items WHERE id = %s"


def tid(n: int) -> str:
    return f"00000000-0000-7000-8000-{n:012x}"


def variants(prepared: bool) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    threshold = 5 if prepared else None
    raw = psycopg.connect(DSN, autocommit=True, prepare_threshold=threshold)
    pool = ConnectionPool(DSN, min_size=1, max_size=1, kwargs={"autocommit": True, "prepare_threshold": threshold})
    by_hand = psycopg.connect(DSN, prepare_threshold=threshold)
    nile = Nile(DSN, prepared_statements=prepared, min_size=1, max_size=1)
    nile_begin = Nile(DSN, prepared_statements=prepared, min_size=1, max_size=1, one_round_trip_reads=False)
    rng = random.Random(42)

    def pick() -> tuple[str, int]:
        n = rng.randint(1, TENANTS)
        return tid(n), (n - 1) * ROWS_PER_TENANT + rng.randint(1, ROWS_PER_TENANT)

    def run_raw() -> None:
        t, i = pick()
        assert raw.execute(READ_RAW, (t, i)).fetchone() is not None

    def run_raw_pool() -> None:
        t, i = pick()
        with pool.connection() as conn:
            assert conn.execute(READ_RAW, (t, i)).fetchone() is not None

    def run_by_hand() -> None:
        t, i = pick()
        by_hand.execute("SELECT nile.set_tenant(%s)", (t,))  # psycopg sends BEGIN first
        assert by_hand.execute(READ, (i,)).fetchone() is not None
        by_hand.commit()

    def run_sdk() -> None:
        t, i = pick()
        with nile.tenant_context(t):
            assert nile.sql.fetch_one(READ, (i,)) is not None

    def run_sdk_begin() -> None:
        t, i = pick()
        with nile_begin.tenant_context(t):
            assert nile_begin.sql.fetch_one(READ, (i,)) is not None

    def close() -> None:
        raw.close()
        pool.close()
        by_hand.close()
        nile.close()
        nile_begin.close()

    nothing = lambda: None  # noqa: E731
    runs = {"raw": (run_raw, close), "raw_pool": (run_raw_pool, nothing), "by_hand": (run_by_hand, nothing),
            "sdk": (run_sdk, nothing), "sdk_begin": (run_sdk_begin, nothing)}
    if os.environ.get("BENCH_BREAKDOWN") == "1":
        runs.update(breakdown(threshold, pick))
    return runs


Runs = dict[str, tuple[Callable[[], None], Callable[[], None]]]


def breakdown(threshold: int | None, pick: Callable[[], tuple[str, int]]) -> Runs:
    """The SDK's round trip taken apart (BENCH_BREAKDOWN=1): see the module's notes."""
    conns = [psycopg.connect(DSN, autocommit=True, prepare_threshold=threshold) for _ in range(4)]
    context = _pipeline.fixed("SELECT nile.set_tenant_read_only(%s::uuid)")

    def raw_pipe() -> None:
        t, i = pick()
        with conns[0].pipeline():
            cur = conns[0].execute(READ_RAW, (t, i))
        assert cur.fetchone() is not None

    def one() -> None:
        t, i = pick()
        assert _pipeline.run(conns[1], ((READ_RAW, (t, i)),))[0].fetchone() is not None

    def two() -> None:
        t, i = pick()
        assert _pipeline.run(conns[2], (("SELECT %s::uuid", (t,)), (READ_RAW, (t, i))))[1].fetchone() is not None

    def ctx() -> None:
        t, i = pick()
        assert _pipeline.run(conns[3], ((context, (t,)), (READ, (i,))))[1].fetchone() is not None

    def close() -> None:
        for conn in conns:
            conn.close()

    nothing = lambda: None  # noqa: E731
    return {"raw_pipe": (raw_pipe, close), "one": (one, nothing), "two": (two, nothing), "ctx": (ctx, nothing)}


def measure_round(runs: dict[str, Callable[[], None]], offset: int) -> dict[str, float]:
    """One round: OPS operations of every variant, interleaved operation by operation in an order shuffled anew each
    time (seeded by the round), so that all meet the machine in the same state (its loopback latency here moves by a
    factor of two over seconds, with the load of the machine) and each follows every other equally often. A rotating
    order (A B C, then B C A, ...) kept the same neighbours: a variant always ran right after the same one, which moved
    the SDK's ratio by 0.04 between two copies of the same code. Returns each variant's mean latency in microseconds
    (after 200 operations of warm-up each)."""
    names = list(runs)
    for name in names:
        for _ in range(200):
            runs[name]()
    total = dict.fromkeys(names, 0.0)
    clock = time.perf_counter
    shuffle = random.Random(offset).shuffle
    order = list(names)
    for _ in range(OPS):
        shuffle(order)
        for name in order:
            started = clock()
            runs[name]()
            total[name] += clock() - started
    return {name: total[name] / OPS * 1e6 for name in names}


def main() -> None:
    print(f"[bench-sdk] {ROUNDS} rounds x {OPS} point reads per variant, {TENANTS} tenants x {ROWS_PER_TENANT} rows")
    print("| statements | variant | per-round mean latency (µs) | median (µs) | / raw |")
    print("| --- | --- | --- | --- | --- |")
    for prepared in (True, False):
        runs = variants(prepared)
        names = list(runs)
        means: dict[str, list[float]] = {name: [] for name in names}
        for r in range(ROUNDS):
            for name, mean in measure_round({n: runs[n][0] for n in names}, r).items():
                means[name].append(mean)
        for _, close in runs.values():
            close()
        base = statistics.median(means["raw"])
        for name in names:
            med = statistics.median(means[name])
            label = "prepared" if prepared else "not prepared"
            print(f"| {label} | {name} | {', '.join(f'{m:.0f}' for m in means[name])} | {med:.0f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
