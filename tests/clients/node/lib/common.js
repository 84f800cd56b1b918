'use strict';
// Shared helpers of the node client suite (tests/clients/node). Connections go to 127.0.0.1 with the roles of
// examples/role_layout.sql (trust authentication on the throwaway clusters, so no passwords).
//   NILE_CLIENT_PORT  the port the tests connect to as app_migrator / app_user: the server itself, or PgBouncer
//   NILE_TEST_PORT    the server itself: the superuser `postgres` sets up tenants there (never through the pooler)
//   NILE_CLIENT_VIA   "direct" or "pgbouncer" (for names and skips)
//   NILE_DB_PG, NILE_DB_KNEX, NILE_DB_DRIZZLE, NILE_DB_DRIZZLE_PUSH  the suite's databases (run.sh creates them)
const pg = require('pg');

const HOST = '127.0.0.1';
const SERVER_PORT = Number(process.env.NILE_TEST_PORT || 5432);
const CLIENT_PORT = Number(process.env.NILE_CLIENT_PORT || SERVER_PORT);
const VIA = process.env.NILE_CLIENT_VIA || (CLIENT_PORT === SERVER_PORT ? 'direct' : 'pgbouncer');
const DB = {
  pg: process.env.NILE_DB_PG || 'clients_node',
  knex: process.env.NILE_DB_KNEX || 'clients_node_knex',
  drizzle: process.env.NILE_DB_DRIZZLE || 'clients_node_drizzle',
  drizzlePush: process.env.NILE_DB_DRIZZLE_PUSH || 'clients_node_drizzle_push',
};

/** node-postgres connection settings for `user` on database `db` (through the client port unless `direct`). */
function conn(db, user, { direct = false } = {}) {
  return { host: HOST, port: direct ? SERVER_PORT : CLIENT_PORT, database: db, user, password: '' };
}

function url(db, user, { direct = false } = {}) {
  return `postgres://${user}@${HOST}:${direct ? SERVER_PORT : CLIENT_PORT}/${db}`;
}

/** Runs `fn(client)` on a fresh connection of `user` and closes it. */
async function withClient(db, user, fn, opts) {
  const client = new pg.Client(conn(db, user, opts));
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** SQL as the superuser, on the server itself. */
function asSuperuser(db, sql, params) {
  return withClient(db, 'postgres', (c) => c.query(sql, params), { direct: true });
}

/** A new tenant (as the superuser); its id. */
async function createTenant(db, name) {
  const r = await asSuperuser(db, 'SELECT nile.create_tenant($1) AS id', [`${name}-${VIA}-${process.pid}-${Date.now()}`]);
  return r.rows[0].id;
}

/** The SQLSTATE of the error `promise` rejects with (fails the test if it resolves). */
async function sqlstate(promise) {
  try {
    await promise;
  } catch (e) {
    return e.code;
  }
  throw new Error('expected an error, the statement succeeded');
}

/** A short unique suffix for object names, so tests never depend on each other or on a previous pass. */
function unique() {
  return `${VIA === 'direct' ? 'd' : 'b'}${process.pid}${Math.floor(Math.random() * 1e6)}`;
}

module.exports = { pg, HOST, SERVER_PORT, CLIENT_PORT, VIA, DB, conn, url, withClient, asSuperuser, createTenant,
  sqlstate, unique };
