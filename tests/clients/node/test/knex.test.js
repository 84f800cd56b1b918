'use strict';
// Knex 3 (over node-postgres): migrations run as app_migrator with no tenant or admin context; the application runs
// as app_user inside knex.transaction() after SELECT nile.set_tenant(?). Directly or through PgBouncer
// (NILE_CLIENT_PORT). Each test names the numbered problem of issue 18 it guards.
const test = require('node:test');
const { after } = test;
const assert = require('node:assert/strict');
const knexLib = require('knex');
const { DB, conn, asSuperuser, createTenant, sqlstate, unique } = require('../lib/common');

const db = DB.knex;
const instances = [];
function knexAs(user, max = 2) {
  const k = knexLib({ client: 'pg', connection: conn(db, user), pool: { min: 0, max } });
  instances.push(k);
  return k;
}
after(async () => {
  await Promise.all(instances.map((k) => k.destroy()));
});

/** The migrations of one test, as a Knex migration source (names are suffixed so tests never share tables). */
function migrationSource(s) {
  const accounts = `accounts_${s}`;
  const projects = `projects_${s}`;
  const scratch = `scratch_${s}`;
  const migrations = {
    // Problem 3: the column written as the seed playbook writes it, by a role that is not a superuser.
    '001_accounts': {
      up: (k) => k.schema.createTable(accounts, (t) => {
        t.uuid('tenant_id').notNullable().references('id').inTable('nile.tenants').onDelete('CASCADE');
        t.bigIncrements('id', { primaryKey: false });
        t.text('name').notNullable();
        t.primary(['tenant_id', 'id']);
      }),
      down: (k) => k.schema.dropTable(accounts),
    },
    // Problem 1: Knex emits the composite foreign key as ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY after the
    // CREATE TABLE, i.e. between two tables that are already enrolled.
    '002_projects': {
      up: (k) => k.schema.createTable(projects, (t) => {
        t.uuid('tenant_id').notNullable();
        t.bigIncrements('id', { primaryKey: false });
        t.bigInteger('account_id').notNullable();
        t.text('title').notNullable();
        t.primary(['tenant_id', 'id']);
        t.foreign(['tenant_id', 'account_id']).references(['tenant_id', 'id']).inTable(accounts).onDelete('CASCADE');
      }),
      down: (k) => k.schema.dropTable(projects),
    },
    '003_projects_due_on': {
      up: (k) => k.schema.alterTable(projects, (t) => {
        t.date('due_on');
        t.index(['tenant_id', 'due_on'], `${projects}_due_idx`);
      }),
      down: (k) => k.schema.alterTable(projects, (t) => {
        t.dropIndex(['tenant_id', 'due_on'], `${projects}_due_idx`);
        t.dropColumn('due_on');
      }),
    },
    '004_scratch': {
      up: (k) => k.schema.createTable(scratch, (t) => {
        t.uuid('tenant_id').notNullable();
        t.text('note');
      }),
      down: (k) => k.schema.dropTable(scratch),
    },
    '005_drop_scratch': {
      up: (k) => k.schema.dropTable(scratch),
      down: (k) => k.schema.createTable(scratch, (t) => {
        t.uuid('tenant_id').notNullable();
        t.text('note');
      }),
    },
  };
  return {
    names: { accounts, projects, scratch },
    config: {
      tableName: `knex_migrations_${s}`,
      migrationSource: {
        getMigrations: async () => Object.keys(migrations),
        getMigrationName: (m) => m,
        getMigration: async (m) => migrations[m],
      },
    },
  };
}

async function enrolled(names) {
  const r = await asSuperuser(db, 'SELECT relid::text AS t FROM nile.tenant_tables WHERE relid::text = ANY($1) ORDER BY 1',
    [names]);
  return r.rows.map((x) => x.t);
}

// Problems 1 and 3 (and the rest of a migration's everyday DDL): no tenant context, no admin context.
test('knex migrate.latest / rollback as app_migrator with no tenant context', async () => {
  const s = unique();
  const { names, config } = migrationSource(s);
  const migrator = knexAs('app_migrator');
  const [, applied] = await migrator.migrate.latest(config);
  assert.equal(applied.length, 5);
  assert.deepEqual(await enrolled([names.accounts, names.projects, names.scratch]), [names.accounts, names.projects]);
  const fks = await asSuperuser(db, `SELECT conrelid::regclass::text AS t, conname, convalidated,
      (SELECT array_agg(attname::text ORDER BY k.n) FROM unnest(conkey) WITH ORDINALITY k(a, n)
         JOIN pg_attribute ON attrelid = conrelid AND attnum = k.a) AS cols
    FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text = ANY($1) ORDER BY 1, 2`,
  [[names.accounts, names.projects]]);
  // accounts: its own REFERENCES nile.tenants; projects: the composite key to accounts (and the enrolment's
  // nile_tenant_fk, since it had no foreign key to nile.tenants of its own).
  assert.ok(fks.rows.some((r) => r.t === names.accounts && r.cols.join() === 'tenant_id' && r.convalidated));
  assert.ok(fks.rows.some((r) => r.t === names.projects && r.cols.join() === 'tenant_id,account_id' && r.convalidated));
  // Rolled all the way back: every table is gone and leaves the registry.
  await migrator.migrate.rollback(config, true);
  assert.deepEqual(await enrolled([names.accounts, names.projects, names.scratch]), []);
  const left = await asSuperuser(db, 'SELECT count(*)::int AS n FROM pg_class WHERE relname = ANY($1)',
    [[names.accounts, names.projects, names.scratch]]);
  assert.equal(left.rows[0].n, 0);
  // And forward again.
  const [, again] = await migrator.migrate.latest(config);
  assert.equal(again.length, 5);
  assert.deepEqual(await enrolled([names.accounts, names.projects]), [names.accounts, names.projects]);
});

// Problem 4: with the role layout and a schema migrated by Knex (foreign keys include the tenant column),
// nile.verify() has nothing to report.
test('nile.verify() reports nothing for the layout and a Knex-migrated schema', async () => {
  const { config } = migrationSource(unique());
  await knexAs('app_migrator').migrate.latest(config);
  const findings = await asSuperuser(db, "SELECT severity, object, problem FROM nile.verify() WHERE object NOT LIKE 'role %' OR object IN ('role app_migrator', 'role app_user')");
  assert.deepEqual(findings.rows, []);
});

// Isolation through Knex (issue 18, "Why"), problem 9 (NT001, 23503 across tenants) on a schema from problem 1's FK.
test('app_user in knex.transaction() with set_tenant sees and writes only its tenant', async () => {
  const { names, config } = migrationSource(unique());
  await knexAs('app_migrator').migrate.latest(config);
  const app = knexAs('app_user', 3);
  const [a, b] = [await createTenant(db, 'knex-a'), await createTenant(db, 'knex-b')];
  const inTenant = (tenant, fn) => app.transaction(async (trx) => {
    await trx.raw('SELECT nile.set_tenant(?)', [tenant]);
    return fn(trx);
  });
  const work = [];
  for (let i = 0; i < 8; i++) {
    for (const t of [a, b]) {
      work.push(inTenant(t, async (trx) => {
        const [acct] = await trx(names.accounts).insert({ name: `acct ${i}` }).returning(['tenant_id', 'id']);
        assert.equal(acct.tenant_id, t); // the column default nile.current_tenant() filled it
        await trx(names.projects).insert({ tenant_id: t, account_id: acct.id, title: `p ${i}` });
        const rows = await trx(names.projects).join(names.accounts, function on() {
          this.on(`${names.projects}.tenant_id`, `${names.accounts}.tenant_id`)
            .andOn(`${names.projects}.account_id`, `${names.accounts}.id`);
        }).select(`${names.projects}.tenant_id`, 'title');
        for (const r of rows) assert.equal(r.tenant_id, t);
        return rows.length;
      }));
    }
  }
  await Promise.all(work);
  const counts = await Promise.all([a, b].map((t) => inTenant(t, (trx) =>
    trx(names.projects).count({ n: '*' }).first().then((r) => Number(r.n)))));
  assert.deepEqual(counts, [8, 8]);
  // An account id of tenant B does not exist for tenant A: the composite key refuses the reference.
  const bAccount = await inTenant(b, (trx) => trx(names.accounts).first('id'));
  const aAccounts = await inTenant(a, (trx) => trx(names.accounts).pluck('id'));
  assert.ok(!aAccounts.includes(bAccount.id)); // one sequence for every tenant: ids never repeat
  assert.equal(await sqlstate(inTenant(a, (trx) =>
    trx(names.projects).insert({ account_id: bAccount.id, title: 'cross' }))), '23503');
});

// Problem 9 (NT001) and the fail-closed rule: a Knex query outside knex.transaction() + set_tenant has no context.
test('a Knex query without set_tenant fails closed with NT001, never rows', async () => {
  const s = unique();
  await knexAs('app_migrator').schema.createTable(`notes_${s}`, (t) => {
    t.uuid('tenant_id').notNullable();
    t.text('body');
  });
  const app = knexAs('app_user');
  const tenant = await createTenant(db, 'knex-nt001');
  await app.transaction(async (trx) => {
    await trx.raw('SELECT nile.set_tenant(?)', [tenant]);
    await trx(`notes_${s}`).insert({ body: 'secret' });
  });
  assert.equal(await sqlstate(app(`notes_${s}`).select()), 'NT001');
  assert.equal(await sqlstate(app.transaction((trx) => trx(`notes_${s}`).select())), 'NT001');
});

// Problem 2: validation sees every tenant's rows; one dangling row of one tenant fails ADD FOREIGN KEY with 23503.
test('knex alterTable foreign key: a dangling row of one tenant fails it with 23503', async () => {
  const s = unique();
  const migrator = knexAs('app_migrator');
  await migrator.schema.createTable(`parent_${s}`, (t) => {
    t.uuid('tenant_id').notNullable();
    t.integer('id').notNullable();
    t.primary(['tenant_id', 'id']);
  });
  await migrator.schema.createTable(`child_${s}`, (t) => {
    t.uuid('tenant_id').notNullable();
    t.integer('id').notNullable();
    t.integer('parent_id').notNullable();
    t.primary(['tenant_id', 'id']);
  });
  const app = knexAs('app_user');
  const [a, b] = [await createTenant(db, 'knex-dangling-a'), await createTenant(db, 'knex-dangling-b')];
  await app.transaction(async (trx) => {
    await trx.raw('SELECT nile.set_tenant(?)', [b]);
    await trx(`parent_${s}`).insert({ id: 1 });
    await trx(`child_${s}`).insert({ id: 1, parent_id: 1 });
  });
  await app.transaction(async (trx) => {
    await trx.raw('SELECT nile.set_tenant(?)', [a]);
    await trx(`child_${s}`).insert({ id: 1, parent_id: 99 }); // A's child has no parent
  });
  const addFk = () => migrator.schema.alterTable(`child_${s}`, (t) => {
    t.foreign(['tenant_id', 'parent_id'], `child_${s}_parent_fk`).references(['tenant_id', 'id']).inTable(`parent_${s}`);
  });
  assert.equal(await sqlstate(addFk()), '23503');
  await app.transaction(async (trx) => {
    await trx.raw('SELECT nile.set_tenant(?)', [a]);
    await trx(`parent_${s}`).insert({ id: 99 });
  });
  await addFk();
});
