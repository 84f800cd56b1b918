'use strict';
// The seed playbook's Express middleware, rewritten for nile_tenancy.
//
// The playbook did `await client.query(`SET LOCAL app.tenant_id = '${tenantId}'`)` on a pooled client outside any
// transaction (a no-op with a WARNING: SET LOCAL lasts for the transaction, and there was none), spliced the id into
// the SQL text, and never committed or rolled back. Here, per request: take a client from the pool, BEGIN, enter the
// tenant with `SELECT nile.set_tenant($1)` (a bound parameter; is_local defaults to true, so the context ends with the
// transaction and the pooled connection carries nothing to the next request), run the handler's queries, COMMIT (or
// ROLLBACK on any error), release the client. The response is sent only after COMMIT succeeded.
//
// Express usage:
//   app.get('/projects', tenantRoute(pool, async (req, db) => (await db.query('SELECT * FROM projects')).rows));
// `req.user.tenantId` is set by the authentication middleware before this one.

function tenantRoute(pool, handler, { tenantOf = (req) => req.user && req.user.tenantId } = {}) {
  return async function nileTenantRoute(req, res, next) {
    const tenantId = tenantOf(req);
    if (!tenantId) {
      res.status(401).json({ error: 'no tenant' });
      return;
    }
    let client;
    try {
      client = await pool.connect();
    } catch (err) {
      next(err);
      return;
    }
    let broken;
    try {
      await client.query('BEGIN');
      await client.query('SELECT nile.set_tenant($1)', [tenantId]);
      const body = await handler(req, client);
      await client.query('COMMIT');
      res.json(body);
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackErr) {
        broken = rollbackErr; // the connection is unusable: release(err) makes the pool discard it
      }
      next(err);
    } finally {
      client.release(broken);
    }
  };
}

module.exports = { tenantRoute };
