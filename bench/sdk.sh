#!/usr/bin/env bash
# bench/sdk.sh [MAJOR] — `make bench-sdk`: the Python SDK's point read against raw psycopg with an explicit
# `WHERE tenant_id = %s`, side by side in one run (bench/sdk.py explains the variants and the rounds). A release build
# in a throwaway cluster (bench/lib.sh); the Python of the client suites (tests/clients/python/setup.sh: psycopg and
# psycopg_pool pinned by digest) with the SDK from clients/python/src.
#
# Environment: BENCH_ROUNDS, BENCH_OPS, BENCH_TENANTS (see bench/sdk.py), BENCH_KEEP (leave the cluster running).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
tenants=${BENCH_TENANTS:-100}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-sdk}/pg$major

. bench/lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench)
"${psql[@]}" >/dev/null <<SQL
$(bench_tenants_sql "$tenants")
CREATE TABLE bench.items (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL,
                          PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.items_plain (LIKE bench.items INCLUDING ALL);
SELECT nile.disable_tenancy('bench.items_plain');
INSERT INTO bench.items SELECT bench.tid(t), (t - 1) * 100 + i, md5(t::text || i::text)
    FROM generate_series(1, $tenants) t, generate_series(1, 100) i;
INSERT INTO bench.items_plain SELECT * FROM bench.items;
CREATE UNIQUE INDEX ON bench.items (id);
CREATE UNIQUE INDEX ON bench.items_plain (id);
GRANT SELECT ON bench.items, bench.items_plain TO bench_app;
VACUUM ANALYZE bench.items, bench.items_plain;
SQL
venv=$(tests/clients/python/setup.sh --print-venv)
PYTHONPATH=clients/python/src "$venv/bin/python" bench/sdk.py "$port"
