-- nile.verify(): silent on a sound schema, and each check fires on a schema crafted to fail it. Each bad schema is
-- built after a savepoint and rolled back, so every check starts from the sound schema.
SET client_min_messages = warning;
BEGIN;
-- The playbook's schema: its own tenants table, projects with a tenant_id, a random UUID primary key.
CREATE TABLE tenants (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL);
CREATE TABLE projects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    created_at timestamptz DEFAULT now()
);
SELECT nile.enable_tenancy('projects');
-- A second tenant table with the recommended layout, a partitioned one and a view that runs as its caller.
CREATE TABLE tasks (tenant_id uuid NOT NULL, id bigint NOT NULL, project_id uuid NOT NULL, code text NOT NULL,
                    PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, code));
CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- (security_invoker is new in PostgreSQL 15: on 14 a sound schema has no view over a tenant table; verify_1.out)
SELECT current_setting('server_version_num')::int >= 150000 AS has_security_invoker \gset
\if :has_security_invoker
CREATE VIEW open_projects WITH (security_invoker = true) AS SELECT * FROM projects;
\endif
-- Sound: nothing to report.
SELECT * FROM nile.verify();

-- Protection of enrolled tables (made with the event triggers off: they refuse all of this).
SAVEPOINT s;
ALTER EVENT TRIGGER nile_ddl_command_end DISABLE;
ALTER EVENT TRIGGER nile_sql_drop DISABLE;
ALTER TABLE projects NO FORCE ROW LEVEL SECURITY;
ALTER TABLE events_2026 DISABLE ROW LEVEL SECURITY;
DROP POLICY nile_tenant_select ON tasks;
ALTER POLICY nile_tenant_update ON tasks WITH CHECK (true);
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- A table with a tenant column that is not enrolled; one that is shared on purpose is not reported.
SAVEPOINT s;
SET LOCAL nile.auto_enable = off;
CREATE TABLE invoices (tenant_id uuid, total numeric);
CREATE TABLE shared_settings (tenant_id uuid, key text);
SELECT nile.disable_tenancy('shared_settings');
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- A partition and an inheritance child without protection.
SAVEPOINT s;
ALTER EVENT TRIGGER nile_ddl_command_end DISABLE;
CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE TABLE tasks_archive () INHERITS (tasks);
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- No index leading with the tenant column (dropped behind the sql_drop trigger's back: it refuses the drop).
SAVEPOINT s;
ALTER EVENT TRIGGER nile_sql_drop DISABLE;
DROP INDEX nile_projects_tenant_id_idx;
ALTER EVENT TRIGGER nile_sql_drop ENABLE;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Unique keys without the tenant column (a uuid key, like projects.id, is unguessable and not reported).
SAVEPOINT s;
ALTER TABLE tasks ADD CONSTRAINT tasks_code_key UNIQUE (code);
CREATE UNIQUE INDEX tasks_id_idx ON tasks (id);
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- An exclusion constraint that does not compare the tenant column with = (a conflict tells one tenant that another
-- tenant's row exists); one that does is fine.
SAVEPOINT s;
ALTER TABLE tasks ADD COLUMN during tsrange;
ALTER TABLE tasks ADD CONSTRAINT tasks_during_excl EXCLUDE USING gist (during WITH &&);
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
CREATE EXTENSION btree_gist;
ALTER TABLE tasks ADD COLUMN during tsrange;
ALTER TABLE tasks ADD CONSTRAINT tasks_during_excl EXCLUDE USING gist (tenant_id WITH =, during WITH &&);
SELECT count(*) AS findings FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- A foreign key between tenant tables without the tenant column.
SAVEPOINT s;
ALTER TABLE tasks ADD CONSTRAINT tasks_project_fk FOREIGN KEY (project_id) REFERENCES projects (id);
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;
-- ... and one that includes it is fine.
SAVEPOINT s;
ALTER TABLE projects ADD CONSTRAINT projects_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE tasks ADD CONSTRAINT tasks_project_fk FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id);
SELECT count(*) AS findings FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Other policies: a permissive one has no effect (warning), a restrictive one that is always false locks tenants out;
-- a restrictive one that narrows is fine.
SAVEPOINT s;
CREATE POLICY everyone ON projects FOR SELECT USING (true);
CREATE POLICY nobody ON tasks AS RESTRICTIVE USING (false);
CREATE POLICY recent ON events AS RESTRICTIVE USING (at > '2000-01-01');
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Roles that can log in and bypass isolation.
SAVEPOINT s;
CREATE ROLE regress_super LOGIN SUPERUSER;
CREATE ROLE regress_bypass LOGIN BYPASSRLS;
CREATE ROLE regress_powerless NOLOGIN BYPASSRLS;
CREATE ROLE regress_climber LOGIN IN ROLE regress_powerless;
CREATE ROLE regress_owner NOLOGIN;
CREATE ROLE regress_dev LOGIN IN ROLE regress_owner, nile_table_owner;   -- a migration role: not reported
CREATE ROLE regress_stray LOGIN IN ROLE regress_owner;                     -- not the migration role
CREATE ROLE regress_app_owner LOGIN IN ROLE regress_owner, nile_app;
ALTER TABLE tasks OWNER TO regress_owner;
CREATE ROLE regress_app LOGIN;
GRANT nile_app TO regress_app;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Views that run with their owner's rights, and a materialized view.
SAVEPOINT s;
CREATE VIEW all_projects AS SELECT * FROM projects;
CREATE VIEW all_projects_again AS SELECT name FROM all_projects;
CREATE ROLE regress_view_owner NOLOGIN;
CREATE VIEW tasks_view AS SELECT * FROM tasks;
ALTER VIEW tasks_view OWNER TO regress_view_owner;
CREATE MATERIALIZED VIEW project_names AS SELECT tenant_id, name FROM projects WITH NO DATA;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- TRUNCATE granted to roles that are neither owners nor nile_admin.
SAVEPOINT s;
CREATE ROLE regress_app NOLOGIN;
GRANT TRUNCATE ON projects TO regress_app;
GRANT TRUNCATE ON tasks TO PUBLIC;
GRANT TRUNCATE ON events TO nile_admin;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- The event triggers themselves.
SAVEPOINT s;
ALTER EVENT TRIGGER nile_sql_drop DISABLE;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Every fix works: apply the fixes verify() gave for a broken schema, and it is sound again.
SAVEPOINT s;
ALTER EVENT TRIGGER nile_ddl_command_end DISABLE;
ALTER TABLE projects NO FORCE ROW LEVEL SECURITY;
CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
ALTER EVENT TRIGGER nile_ddl_command_end ENABLE;
ALTER TABLE tasks ADD CONSTRAINT tasks_code_key UNIQUE (code);
GRANT TRUNCATE ON tasks TO PUBLIC;
DO $$ DECLARE f record; BEGIN
    FOR f IN SELECT fix FROM nile.verify() LOOP EXECUTE f.fix; END LOOP;
END $$;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;

-- Only nile_admin may run it.
SAVEPOINT s;
CREATE ROLE regress_nobody NOLOGIN;
SET LOCAL ROLE regress_nobody;
SELECT * FROM nile.verify();
ROLLBACK TO SAVEPOINT s;
ROLLBACK;
