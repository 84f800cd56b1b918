'use strict';
// The drizzle schema of the suite: two tenant tables, the second with a composite foreign key (tenant_id,
// account_id) -> accounts (tenant_id, id), as drizzle-kit writes it. `prefix` keeps one test's tables apart from
// another's (drizzle-kit gets it from NILE_DRIZZLE_PREFIX through schema.js).
//
// `declareNile`: declare in the schema what nile_tenancy adds to an enrolled table (row-level security, the four
// nile_tenant_* policies, the nile_tenant_fk foreign key), exactly as the database shows it, so that `drizzle-kit
// push`, which compares the schema with the database and has no filter for policies or constraints, proposes
// nothing for them. Without it, the second push proposes DISABLE ROW LEVEL SECURITY, DROP CONSTRAINT nile_tenant_fk
// and DROP POLICY nile_tenant_*, which the extension refuses (55000 / 2BP01).
const { pgTable, pgSchema, pgPolicy, uuid, bigint, text, primaryKey, foreignKey, index } = require('drizzle-orm/pg-core');
const { sql } = require('drizzle-orm');

// nile.tenants, only as the target of nile_tenant_fk. Do not export it from the schema file: drizzle-kit would
// then try to manage the extension's table.
const nileTenants = pgSchema('nile').table('tenants', { id: uuid('id').primaryKey() });

/** What nile_tenancy generates on an enrolled table whose tenant column is `tenantId`, as drizzle extra config. */
function nileTenantObjects(t, { withFk = true } = {}) {
  const read = sql`(tenant_id = ( SELECT nile.policy_read_tenant() AS policy_read_tenant))`;
  const write = sql`(tenant_id = ( SELECT nile.policy_write_tenant() AS policy_write_tenant))`;
  const check = sql`((tenant_id = ( SELECT nile.policy_write_tenant() AS policy_write_tenant)) OR nile.policy_foreign_row(tenant_id))`;
  return [
    pgPolicy('nile_tenant_select', { as: 'permissive', for: 'select', to: 'public', using: read }),
    pgPolicy('nile_tenant_insert', { as: 'permissive', for: 'insert', to: 'public', withCheck: check }),
    pgPolicy('nile_tenant_update', { as: 'permissive', for: 'update', to: 'public', using: write, withCheck: check }),
    pgPolicy('nile_tenant_delete', { as: 'permissive', for: 'delete', to: 'public', using: write }),
    ...(withFk ? [foreignKey({ name: 'nile_tenant_fk', columns: [t.tenantId], foreignColumns: [nileTenants.id] })] : []),
  ];
}

function makeTables(prefix, { withDueOn = false, declareNile = false } = {}) {
  const nile = (t) => (declareNile ? nileTenantObjects(t) : []);
  const idColumn = () => bigint('id', { mode: 'number' }).generatedAlwaysAsIdentity();
  // The README's layout: PRIMARY KEY (tenant_id, id), created inside CREATE TABLE, so the enrolment finds an index
  // leading with the tenant column and adds none of its own.
  const tenantKey = (table, t) => primaryKey({ name: `${table}_pkey`, columns: [t.tenantId, t.id] });
  const accountsName = `${prefix}_accounts`;
  const accounts = pgTable(accountsName, {
    tenantId: uuid('tenant_id').notNull().default(sql`nile.current_tenant()`),
    id: idColumn(),
    name: text('name').notNull(),
  }, (t) => [tenantKey(accountsName, t), ...nile(t)]);
  const projectsName = `${prefix}_projects`;
  const projectColumns = {
    tenantId: uuid('tenant_id').notNull().default(sql`nile.current_tenant()`),
    id: idColumn(),
    accountId: bigint('account_id', { mode: 'number' }).notNull(),
    title: text('title').notNull(),
  };
  if (withDueOn) projectColumns.dueOn = text('due_on');
  const projects = pgTable(projectsName, projectColumns, (t) => [
    tenantKey(projectsName, t),
    // Problem 1 of issue 18: the composite foreign key between two tenant tables. Named explicitly: drizzle's
    // default name is longer than Postgres' 63 characters, and push would then see a different name.
    foreignKey({ name: `${projectsName}_account_fk`, columns: [t.tenantId, t.accountId],
      foreignColumns: [accounts.tenantId, accounts.id] }).onDelete('cascade'),
    index(`${projectsName}_account_idx`).on(t.tenantId, t.accountId),
    ...nile(t),
  ]);
  return { accounts, projects };
}

module.exports = { makeTables, nileTenantObjects };
