'use strict';
// node-postgres (pg) with the seed playbook's middleware rewritten for nile.set_tenant() (lib/tenant_middleware.js),
// against a real server, directly or through PgBouncer in transaction mode (NILE_CLIENT_PORT). Each test names the
// numbered problem of issue 18 it guards.
const test = require('node:test');
const { before, after } = test;
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { pg, DB, VIA, conn, withClient, asSuperuser, createTenant, sqlstate, unique } = require('../lib/common');
const { tenantRoute } = require('../lib/tenant_middleware');
const { callRoute } = require('../lib/fake_express');

const db = DB.pg;
const notes = `notes_${unique()}`;
let tenantA;
let tenantB;
const pools = [];

/** A pg.Pool of app_user; closed after the file. */
function appPool(max) {
  const pool = new pg.Pool({ ...conn(db, 'app_user'), max });
  pools.push(pool);
  return pool;
}

/** Runs fn(client) inside BEGIN … ROLLBACK with `tenant` entered (or no context when tenant is null). */
async function inTenant(pool, tenant, fn) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    if (tenant) await client.query('SELECT nile.set_tenant($1)', [tenant]);
    return await fn(client);
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
}

before(async () => {
  // The migrator creates the table with no tenant context (it is enrolled as it is created).
  await withClient(db, 'app_migrator', (c) =>
    c.query(`CREATE TABLE ${notes} (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
             body text NOT NULL, PRIMARY KEY (tenant_id, id))`));
  tenantA = await createTenant(db, 'pg-a');
  tenantB = await createTenant(db, 'pg-b');
});

after(async () => {
  await Promise.all(pools.map((p) => p.end()));
});

// Isolation under concurrency (issue 18, "Why"; problems 6-8 are the ways a pool could break it).
test('concurrent requests of two tenants on one pg.Pool see only their own rows', async () => {
  const pool = appPool(4);
  const route = tenantRoute(pool, async (req, db) => {
    await db.query(`INSERT INTO ${notes} (body) VALUES ($1)`, [`${req.user.tenantId}:${req.n}`]);
    const seen = await db.query(`SELECT tenant_id, body, nile.current_tenant() AS ctx FROM ${notes}`);
    return seen.rows;
  });
  const requests = [];
  for (let n = 0; n < 20; n++) {
    for (const tenantId of [tenantA, tenantB]) requests.push({ user: { tenantId }, n });
  }
  const responses = await Promise.all(requests.map((req) => callRoute(route, req).then((r) => ({ req, r }))));
  for (const { req, r } of responses) {
    assert.equal(r.status, 200);
    assert.ok(r.body.length >= 1, 'a request sees at least its own row');
    for (const row of r.body) {
      assert.equal(row.tenant_id, req.user.tenantId, `a request of ${req.user.tenantId} saw a row of ${row.tenant_id}`);
      assert.equal(row.ctx, req.user.tenantId);
      assert.ok(row.body.startsWith(req.user.tenantId));
    }
  }
  const counts = await Promise.all([tenantA, tenantB].map((t) =>
    callRoute(tenantRoute(pool, async (_req, db) => (await db.query(`SELECT count(*)::int AS n FROM ${notes}`)).rows[0].n),
      { user: { tenantId: t } })));
  assert.deepEqual(counts.map((c) => c.body), [20, 20]);
});

// Problem 7 (and 9: NT001): a request that forgets set_tenant, on the pooled connection the previous request of
// tenant A used, fails closed; it never sees A's rows.
test('a handler that forgets set_tenant fails closed with NT001, never rows', async () => {
  const pool = appPool(1); // one connection: the next request gets exactly the previous request's connection
  const ok = await callRoute(tenantRoute(pool, async (_req, db) => {
    await db.query(`INSERT INTO ${notes} (body) VALUES ('forget-me')`);
    return (await db.query('SELECT nile.current_tenant() AS t')).rows[0].t;
  }), { user: { tenantId: tenantA } });
  assert.equal(ok.body, tenantA);
  assert.equal(await sqlstate(pool.query(`SELECT * FROM ${notes}`)), 'NT001');
  assert.equal((await pool.query('SELECT nile.current_tenant() AS t')).rows[0].t, null);
  // The same inside a transaction that never entered a tenant, and through a route whose handler forgot it.
  assert.equal(await sqlstate(inTenant(pool, null, (c) => c.query(`SELECT count(*) FROM ${notes}`))), 'NT001');
  const forgetful = async (req, res, next) => {
    try {
      res.json((await pool.query(`SELECT body FROM ${notes}`)).rows);
    } catch (err) {
      next(err);
    }
  };
  assert.equal(await sqlstate(callRoute(forgetful, { user: { tenantId: tenantA } })), 'NT001');
});

// Problem 7: session scope would survive the request on the pooled connection; app_user may not use it (NT007).
test('session scope (is_local => false) is refused for app_user with NT007 and leaks nothing', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(pool.query('SELECT nile.set_tenant($1, is_local => false)', [tenantA])), 'NT007');
  assert.equal(await sqlstate(inTenant(pool, null, (c) =>
    c.query('SELECT nile.set_tenant($1, is_local => false)', [tenantA]))), 'NT007');
  // The next user of the (single) pooled connection has no context.
  assert.equal((await pool.query('SELECT nile.current_tenant() AS t')).rows[0].t, null);
  assert.equal(await sqlstate(pool.query(`SELECT * FROM ${notes}`)), 'NT001');
});

// Problem 6: a WITH HOLD cursor would outlive the transaction and its context.
test('a WITH HOLD cursor in a tenant context is refused (0A000); the next client cannot FETCH it', async () => {
  const pool = appPool(1);
  await inTenant(pool, tenantA, (c) => c.query(`INSERT INTO ${notes} (body) VALUES ('held')`).then(() =>
    c.query('COMMIT')));
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT nile.set_tenant($1)', [tenantA]);
    assert.equal(await sqlstate(client.query(`DECLARE held CURSOR WITH HOLD FOR SELECT * FROM ${notes}`)), '0A000');
    await client.query('ROLLBACK');
    // Declared first, context entered afterwards: the COMMIT is refused (and the cursor closed).
    await client.query('BEGIN');
    await client.query(`DECLARE held2 CURSOR WITH HOLD FOR SELECT body FROM ${notes}`);
    await client.query('SELECT nile.set_tenant($1)', [tenantA]);
    assert.equal(await sqlstate(client.query('COMMIT')), '0A000');
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
  // The next request on the same pooled connection, with no context: there is no cursor to read.
  assert.equal(await sqlstate(pool.query('FETCH ALL FROM held')), '34000');
  assert.equal(await sqlstate(pool.query('FETCH ALL FROM held2')), '34000');
});

// Problem 8: an app cannot turn missing-context errors into empty results for the next clients of the pool.
test('SET nile.missing_tenant = deny by the app is refused (42501); the next client still gets NT001', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(pool.query('SET nile.missing_tenant = deny')), '42501');
  assert.equal(await sqlstate(pool.query("SELECT set_config('nile.missing_tenant', 'deny', false)")), '42501');
  assert.equal(await sqlstate(inTenant(pool, null, (c) => c.query('SET LOCAL nile.missing_tenant = deny'))), '42501');
  assert.equal((await pool.query("SELECT current_setting('nile.missing_tenant') AS v")).rows[0].v, 'error');
  assert.equal(await sqlstate(pool.query(`SELECT * FROM ${notes}`)), 'NT001');
});

// Problem 9: every error an app must handle has its own SQLSTATE, read from err.code.
test('an unknown tenant is NT002', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(inTenant(pool, randomUUID(), async () => {})), 'NT002');
  const r = await callRoute(tenantRoute(pool, async () => 'never'), { user: { tenantId: randomUUID() } })
    .catch((err) => err);
  assert.equal(r.code, 'NT002');
});

test('writing a row of another tenant is NT005 (INSERT and UPDATE)', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(inTenant(pool, tenantA, (c) =>
    c.query(`INSERT INTO ${notes} (tenant_id, body) VALUES ($1, 'mallory')`, [tenantB]))), 'NT005');
  assert.equal(await sqlstate(inTenant(pool, tenantA, async (c) => {
    await c.query(`INSERT INTO ${notes} (body) VALUES ('mine')`);
    await c.query(`UPDATE ${notes} SET tenant_id = $1`, [tenantB]);
  })), 'NT005');
});

test('forging the context with SET nile.tenant_id is NT006', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(pool.query(`SET nile.tenant_id = '${tenantA}'`)), 'NT006');
  assert.equal(await sqlstate(inTenant(pool, null, (c) =>
    c.query("SELECT set_config('nile.tenant_id', $1, true)", [tenantA]))), 'NT006');
  assert.equal(await sqlstate(pool.query(`SELECT * FROM ${notes}`)), 'NT001');
});

test('set_tenant outside a transaction block is 25P01', async () => {
  const pool = appPool(1);
  assert.equal(await sqlstate(pool.query('SELECT nile.set_tenant($1)', [tenantA])), '25P01');
});

test('an inactive tenant reads but cannot write: NT003', async () => {
  const pool = appPool(1);
  const t = await createTenant(db, 'pg-inactive');
  await inTenant(pool, t, (c) => c.query(`INSERT INTO ${notes} (body) VALUES ('before')`).then(() => c.query('COMMIT')));
  await asSuperuser(db, 'SELECT nile.deactivate_tenant($1)', [t]);
  const rows = await inTenant(pool, t, (c) => c.query(`SELECT body FROM ${notes}`));
  assert.deepEqual(rows.rows.map((r) => r.body), ['before']);
  assert.equal(await sqlstate(inTenant(pool, t, (c) => c.query(`INSERT INTO ${notes} (body) VALUES ('after')`))), 'NT003');
});

test('a deleted tenant is NT004, at set_tenant and in the middle of a transaction', async () => {
  const pool = appPool(1);
  const t = await createTenant(db, 'pg-deleted');
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT nile.set_tenant($1)', [t]);
    await client.query(`INSERT INTO ${notes} (body) VALUES ('doomed')`);
    await asSuperuser(db, 'SELECT nile.delete_tenant($1)', [t]);
    assert.equal(await sqlstate(client.query(`SELECT * FROM ${notes}`)), 'NT004');
    await client.query('ROLLBACK');
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
  assert.equal(await sqlstate(inTenant(pool, t, async () => {})), 'NT004');
});

test('set_tenant under nile.require_token is NT010', async () => {
  // run.sh: ALTER ROLE clients_node_token IN DATABASE <db> SET nile.require_token = on
  const code = await withClient(db, 'clients_node_token', (c) =>
    sqlstate(c.query('BEGIN').then(() => c.query('SELECT nile.set_tenant($1)', [tenantA]))));
  assert.equal(code, 'NT010');
});

test('invalid and expired tokens are NT008 and NT009', async (t) => {
  const key = (await asSuperuser(db, "SELECT current_setting('nile.token_key') AS k")).rows[0].k;
  assert.ok(key, 'run.sh sets nile.token_key on the throwaway server when it has none');
  const pool = appPool(1);
  const expired = (await asSuperuser(db, "SELECT nile.sign_tenant_token($1, interval '1 second') AS tok", [tenantA]))
    .rows[0].tok;
  const good = (await asSuperuser(db, "SELECT nile.sign_tenant_token($1, interval '1 hour') AS tok", [tenantA])).rows[0].tok;
  const altered = good.slice(0, -2) + (good.endsWith('AA') ? 'BB' : 'AA');
  assert.equal(await sqlstate(inTenant(pool, null, (c) => c.query('SELECT nile.set_tenant_token($1)', [altered]))), 'NT008');
  await new Promise((r) => setTimeout(r, 2100));
  assert.equal(await sqlstate(inTenant(pool, null, (c) => c.query('SELECT nile.set_tenant_token($1)', [expired]))), 'NT009');
});

// Problem 10: the statement that enters the context is nobody's work: N transactions of set_tenant + one single-row
// SELECT show exactly N statements and N returned rows.
test('usage: N transactions of set_tenant + a one-row SELECT count N statements and N rows', async (t) => {
  const preloaded = (await asSuperuser(db,
    "SELECT current_setting('shared_preload_libraries') ~ 'nile_tenancy' AND current_setting('nile.track_usage')::bool AS on")).rows[0].on;
  assert.ok(preloaded, 'the test servers preload nile_tenancy with nile.track_usage on');
  const tenant = await createTenant(db, 'pg-usage'); // a new tenant: its usage starts at zero
  // Its one row is written in the admin context, which is counted for 'admin', not for the tenant.
  await withClient(db, 'postgres', async (c) => {
    await c.query('BEGIN');
    await c.query("SELECT nile.admin_context('clients-node usage seed')");
    await c.query(`INSERT INTO ${notes} (tenant_id, body) VALUES ($1, 'one row')`, [tenant]);
    await c.query('COMMIT');
  }, { direct: true });
  const pool = appPool(2);
  const N = 10;
  for (let i = 0; i < N; i++) {
    const r = await inTenant(pool, tenant, (c) => c.query(`SELECT body FROM ${notes}`));
    assert.equal(r.rowCount, 1);
  }
  const usage = await inTenant(pool, tenant, (c) =>
    c.query('SELECT statements::int, rows_returned::int FROM nile.my_usage'));
  assert.deepEqual(usage.rows, [{ statements: N, rows_returned: N }]);
});

// Problems 1 and 2 through node-postgres: a foreign key between tenant tables added by the migrator with no context
// is validated over every tenant's rows: one tenant's dangling row makes it fail with 23503 (plain and NOT VALID +
// VALIDATE CONSTRAINT); once that row is gone it succeeds.
test('ADD FOREIGN KEY is validated over all tenants: a dangling row of one tenant is 23503', async () => {
  const u = unique();
  await withClient(db, 'app_migrator', async (c) => {
    await c.query(`CREATE TABLE parent_${u} (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id))`);
    await c.query(`CREATE TABLE child_${u} (tenant_id uuid NOT NULL, id int NOT NULL, parent_id int NOT NULL,
                   PRIMARY KEY (tenant_id, id))`);
  });
  const pool = appPool(1);
  const commit = (c) => c.query('COMMIT');
  // B is consistent; A has one child whose parent does not exist.
  await inTenant(pool, tenantB, async (c) => {
    await c.query(`INSERT INTO parent_${u} (id) VALUES (1)`);
    await c.query(`INSERT INTO child_${u} (id, parent_id) VALUES (1, 1)`);
    await commit(c);
  });
  await inTenant(pool, tenantA, async (c) => {
    await c.query(`INSERT INTO child_${u} (id, parent_id) VALUES (1, 42)`);
    await commit(c);
  });
  const fk = `ALTER TABLE child_${u} ADD CONSTRAINT child_${u}_parent_fk FOREIGN KEY (tenant_id, parent_id)
              REFERENCES parent_${u} (tenant_id, id)`;
  await withClient(db, 'app_migrator', async (c) => {
    assert.equal(await sqlstate(c.query(fk)), '23503');
    await c.query(`${fk} NOT VALID`);
    assert.equal(await sqlstate(c.query(`ALTER TABLE child_${u} VALIDATE CONSTRAINT child_${u}_parent_fk`)), '23503');
    await c.query(`ALTER TABLE child_${u} DROP CONSTRAINT child_${u}_parent_fk`);
  });
  await inTenant(pool, tenantA, async (c) => {
    await c.query(`DELETE FROM child_${u} WHERE parent_id = 42`);
    await commit(c);
  });
  await withClient(db, 'app_migrator', (c) => c.query(fk));
  const v = await asSuperuser(db, `SELECT convalidated FROM pg_constraint WHERE conname = 'child_${u}_parent_fk'`);
  assert.deepEqual(v.rows, [{ convalidated: true }]);
});
