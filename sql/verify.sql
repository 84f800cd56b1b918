-- sql/verify.sql — "is my tenancy sound?": nile.verify() and the per-table check that the DDL event trigger
-- (src/ddl/events.rs) also uses. Only catalogs and nile's registry are read; nothing is changed.
--
-- Every finding names one object exactly and gives the SQL that fixes it. Severity 'error': a tenant can (or could,
-- after one more step by a role that is allowed to take it) see or change another tenant's rows, or tenants are
-- locked out. Severity 'warning': isolation holds but something leaks or can break it (existence oracles,
-- cross-tenant references, roles able to switch it off, missing indexes).
--
-- Runs after sql/lifecycle.sql, when every table it reads exists; where signatures and privileges live: the header of
-- sql/bootstrap.sql. Both functions are for administrators.

-- What is wrong with one enrolled table's protection: the table or its tenant column is gone, row-level security is
-- not enabled or not forced, a nile_tenant_* policy is missing or differs from what enable_tenancy generates, or it
-- inherits from a table that is not a tenant table.
CREATE FUNCTION nile._protection_problems(tbl regclass)
    RETURNS TABLE(object text, problem text, fix text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH t AS (
        SELECT e.relid::oid AS relid, e.relid::text AS name, e.tenant_column AS col,
               format('SELECT nile.enable_tenancy(%L%s);', coalesce(e.parent, e.relid)::text,
                      CASE WHEN e.tenant_column <> 'tenant_id' THEN format(', tenant_column => %L', e.tenant_column) ELSE '' END)
                   AS fix,
               c.oid IS NOT NULL AS table_exists, c.relrowsecurity, c.relforcerowsecurity,
               a.atttypid
        FROM nile.tenant_tables e
        LEFT JOIN pg_class c ON c.oid = e.relid::oid
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = e.tenant_column AND a.attnum > 0 AND NOT a.attisdropped
        WHERE e.relid = tbl
    ),
    expected AS (
        SELECT 'nile_tenant_' || e.suffix AS polname, e.polcmd,
               CASE e.using_side WHEN 'read' THEN format('(%s = ( SELECT nile.policy_read_tenant() AS policy_read_tenant))', quote_ident(t.col))
                                 WHEN 'write' THEN format('(%s = ( SELECT nile.policy_write_tenant() AS policy_write_tenant))', quote_ident(t.col)) END
                   AS using_expr,
               CASE WHEN e.checks THEN format('((%1$s = ( SELECT nile.policy_write_tenant() AS policy_write_tenant)) OR nile.policy_foreign_row(%1$s))', quote_ident(t.col)) END
                   AS check_expr
        FROM t, (VALUES ('select', 'r', 'read', false), ('insert', 'a', NULL, true),
                        ('update', 'w', 'write', true), ('delete', 'd', 'write', false)) AS e(suffix, polcmd, using_side, checks)
    )
    SELECT 'table ' || t.name, 'the table is in nile.tenant_tables but no longer exists',
           format('DELETE FROM nile.tenant_tables WHERE relid = %s;', t.relid)
    FROM t WHERE NOT t.table_exists
    UNION ALL
    SELECT 'table ' || t.name, format('tenant column %I is missing', t.col), t.fix
    FROM t WHERE t.table_exists AND t.atttypid IS NULL
    UNION ALL
    SELECT 'table ' || t.name, format('tenant column %I is of type %s, not uuid', t.col, format_type(t.atttypid, NULL)),
           format('ALTER TABLE %s ALTER COLUMN %I TYPE uuid USING %I::uuid; %s', t.name, t.col, t.col, t.fix)
    FROM t WHERE t.atttypid IS NOT NULL AND t.atttypid <> 'uuid'::regtype
    UNION ALL
    SELECT 'table ' || t.name, 'row-level security is not enabled', t.fix
    FROM t WHERE t.table_exists AND NOT t.relrowsecurity
    UNION ALL
    SELECT 'table ' || t.name, 'row-level security is not forced (the table owner bypasses the policies)', t.fix
    FROM t WHERE t.table_exists AND NOT t.relforcerowsecurity
    UNION ALL
    SELECT format('policy %I on %s', x.polname, t.name),
           CASE WHEN p.oid IS NULL THEN 'the policy is missing'
                ELSE 'the policy differs from the one nile.enable_tenancy() generates' END,
           t.fix
    FROM t CROSS JOIN expected x
    LEFT JOIN pg_policy p ON p.polrelid = t.relid AND p.polname = x.polname
    WHERE t.table_exists
      AND (p.oid IS NULL
           OR p.polcmd::text <> x.polcmd OR NOT p.polpermissive OR p.polroles <> '{0}'::oid[]
           OR pg_get_expr(p.polqual, p.polrelid) IS DISTINCT FROM x.using_expr
           OR pg_get_expr(p.polwithcheck, p.polrelid) IS DISTINCT FROM x.check_expr)
    UNION ALL
    -- A parent that is not a tenant table: reading it returns this table's rows with the parent's policies (none).
    SELECT 'table ' || t.name,
           format('it inherits from %s, which is not a tenant table: reading %s returns this table''s rows of every tenant',
                  i.inhparent::regclass, i.inhparent::regclass),
           format('ALTER TABLE %s NO INHERIT %s;  -- or enroll the parent, which covers its children: SELECT nile.enable_tenancy(%L);',
                  t.name, i.inhparent::regclass, i.inhparent::regclass::text)
    FROM t JOIN pg_inherits i ON i.inhrelid = t.relid
    WHERE NOT EXISTS (SELECT 1 FROM nile.tenant_tables pe WHERE pe.relid::oid = i.inhparent)
    $$;
REVOKE ALL ON FUNCTION nile._protection_problems(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._protection_problems(regclass) TO nile_admin;

-- nile.verify(): every way the database's tenancy is not sound, empty when it is.
CREATE FUNCTION nile.verify()
    RETURNS TABLE(severity text, object text, problem text, fix text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH RECURSIVE
    -- The column names that make a table a tenant table: tenant_id and the tenant column of every enrolled table.
    tenant_column_names(names) AS MATERIALIZED (
        SELECT array_agg(DISTINCT tenant_column) || 'tenant_id'::name FROM nile.tenant_tables
    ),
    -- Enrolled tables that exist, with their tenant column's number and the root their fix is run on.
    enrolled AS (
        SELECT c.oid AS relid, e.relid::text AS name, e.tenant_column AS col, a.attnum, c.relowner, c.relkind,
               c.relispartition, coalesce(e.parent, e.relid)::text AS root, c.relacl
        FROM nile.tenant_tables e
        JOIN pg_class c ON c.oid = e.relid::oid
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = e.tenant_column AND a.attnum > 0 AND NOT a.attisdropped
    ),
    -- Every table below an enrolled or excluded table, with the table it is below.
    below(relid, top, top_excluded) AS (
        SELECT i.inhrelid, i.inhparent, x.relid IS NOT NULL
        FROM pg_inherits i
        LEFT JOIN nile.excluded_tables x ON x.relid::oid = i.inhparent
        WHERE i.inhparent IN (SELECT relid FROM enrolled) OR x.relid IS NOT NULL
        UNION
        SELECT i.inhrelid, b.top, b.top_excluded FROM pg_inherits i JOIN below b ON i.inhparent = b.relid
    ),
    -- Views and materialized views that read enrolled tables, directly or through other views.
    readers(view_oid, tbl) AS (
        SELECT r.ev_class, d.refobjid
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT relid FROM enrolled) AND r.ev_class <> d.refobjid
        UNION
        SELECT r.ev_class, rd.tbl
        FROM readers rd
        JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = rd.view_oid AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> rd.view_oid
    ),
    findings(severity, object, problem, fix) AS (
        -- The protection of each enrolled table.
        SELECT 'error', p.object, p.problem, p.fix
        FROM nile.tenant_tables e, LATERAL nile._protection_problems(e.relid) p

        -- Tables with a tenant column that are not enrolled (only the top of each inheritance tree is named).
        UNION ALL
        SELECT 'error', 'table ' || c.oid::regclass::text,
               format('table has a tenant column %I but is not a tenant table: every session that can read it sees every tenant''s rows', a.attname),
               format('SELECT nile.enable_tenancy(%L%s);  -- or, if it is shared on purpose: SELECT nile.disable_tenancy(%L);',
                      c.oid::regclass::text,
                      CASE WHEN a.attname <> 'tenant_id' THEN format(', tenant_column => %L', a.attname) ELSE '' END,
                      c.oid::regclass::text)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attname = ANY ((SELECT names FROM tenant_column_names)::name[])
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'nile') AND n.nspname NOT LIKE 'pg\_%'
          AND c.oid NOT IN (SELECT relid FROM enrolled)
          AND c.oid NOT IN (SELECT relid::oid FROM nile.excluded_tables)
          AND c.oid NOT IN (SELECT relid FROM below)
          AND NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_attribute pa ON pa.attrelid = i.inhparent AND pa.attname = a.attname
                          WHERE i.inhrelid = c.oid)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')

        -- Partitions and inheritance children of tenant tables that are not protected.
        UNION ALL
        SELECT 'error', 'table ' || b.relid::regclass::text,
               CASE WHEN c.relkind = 'f'
                    THEN format('foreign table below tenant table %s: row-level security cannot protect it', b.top::regclass)
                    ELSE format('table below tenant table %s is not protected: reading it directly shows every tenant''s rows', b.top::regclass) END,
               CASE WHEN c.relkind = 'f' AND c.relispartition
                    THEN format('ALTER TABLE %s DETACH PARTITION %s;', (SELECT inhparent::regclass FROM pg_inherits WHERE inhrelid = b.relid LIMIT 1), b.relid::regclass)
                    WHEN c.relkind = 'f'
                    THEN format('ALTER TABLE %s NO INHERIT %s;', b.relid::regclass, (SELECT inhparent::regclass FROM pg_inherits WHERE inhrelid = b.relid LIMIT 1))
                    ELSE format('SELECT nile.enable_tenancy(%L);', (SELECT root FROM enrolled WHERE relid = b.top)) END
        FROM below b JOIN pg_class c ON c.oid = b.relid
        WHERE NOT b.top_excluded AND b.relid NOT IN (SELECT relid FROM enrolled)

        -- No index leading with the tenant column: every tenant's query scans every tenant's rows.
        UNION ALL
        SELECT 'warning', 'table ' || e.name,
               format('no index leads with the tenant column %I: each tenant''s queries read every tenant''s rows', e.col),
               format('CREATE INDEX ON %s (%I);', e.name, e.col)
        FROM enrolled e
        WHERE e.attnum IS NOT NULL AND NOT e.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = e.relid AND i.indkey[0] = e.attnum)

        -- Unique keys without the tenant column: inserting another tenant's key fails, which tells that it exists.
        -- (Partitions' copies of a partitioned key are reported once, on the partitioned table.)
        UNION ALL
        SELECT 'warning',
               CASE WHEN k.oid IS NOT NULL THEN format('constraint %I on %s', k.conname, e.name)
                    ELSE 'index ' || i.indexrelid::regclass::text END,
               'unique key without the tenant column: a duplicate-key error tells one tenant that another tenant''s key exists',
               CASE WHEN k.oid IS NOT NULL
                    THEN format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;', e.name, k.conname, k.conname,
                                regexp_replace(pg_get_constraintdef(k.oid), '\(', '(' || quote_ident(e.col) || ', '))
                    ELSE format('DROP INDEX %s; %s;', i.indexrelid::regclass,
                                regexp_replace(pg_get_indexdef(i.indexrelid), ' USING (\w+) \(', ' USING \1 (' || quote_ident(e.col) || ', ')) END
        FROM enrolled e
        JOIN pg_index i ON i.indrelid = e.relid AND i.indisunique
        LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.contype IN ('p', 'u') AND k.conrelid = e.relid
        WHERE e.attnum IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) n WHERE i.indkey[n] = e.attnum)
          -- A key of uuid columns only is unguessable: its duplicate-key error tells nothing to a tenant who does not
          -- already know the other tenant's key.
          AND NOT (SELECT bool_and(coalesce(a.atttypid = 'uuid'::regtype, false))
                   FROM generate_series(0, i.indnkeyatts - 1) n
                   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[n])
          AND NOT EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = i.indexrelid)

        -- Exclusion constraints that do not compare the tenant column with =: a conflict (23P01) tells one tenant that
        -- another tenant has a row there, e.g. a booking of the same room at the same time. (Partitions' copies of a
        -- partitioned table's constraint are reported once, on the partitioned table.)
        UNION ALL
        SELECT 'warning', format('constraint %I on %s', k.conname, e.name),
               'exclusion constraint without the tenant column compared with =: a conflict error tells one tenant that another tenant''s row exists',
               format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;  -- uuid in a gist index needs the btree_gist extension',
                      e.name, k.conname, k.conname,
                      regexp_replace(pg_get_constraintdef(k.oid), 'USING (\w+) \(', 'USING \1 (' || quote_ident(e.col) || ' WITH =, '))
        FROM enrolled e
        JOIN pg_constraint k ON k.conrelid = e.relid AND k.contype = 'x' AND k.conparentid = 0
        WHERE e.attnum IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM generate_subscripts(k.conkey, 1) n
                          JOIN pg_operator o ON o.oid = k.conexclop[n]
                          WHERE k.conkey[n] = e.attnum AND o.oprname = '=' AND o.oprnamespace = 'pg_catalog'::regnamespace)

        -- Foreign keys between tenant tables without the tenant column: a row can point at another tenant's row.
        UNION ALL
        SELECT 'warning', format('constraint %I on %s', k.conname, e.name),
               format('foreign key to tenant table %s does not include the tenant column: a row can reference another tenant''s row', k.confrelid::regclass),
               format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;  -- the referenced table needs a unique key on (%I, ...) first',
                      e.name, k.conname, k.conname,
                      regexp_replace(regexp_replace(pg_get_constraintdef(k.oid), '^FOREIGN KEY \(', 'FOREIGN KEY (' || quote_ident(e.col) || ', '),
                                     ' REFERENCES ([^(]+)\(', ' REFERENCES \1(' || quote_ident(r.col) || ', '),
                      r.col)
        FROM enrolled e
        JOIN pg_constraint k ON k.conrelid = e.relid AND k.contype = 'f' AND k.conparentid = 0
        JOIN enrolled r ON r.relid = k.confrelid
        WHERE e.attnum IS NOT NULL AND r.attnum IS NOT NULL
          AND NOT (e.attnum = ANY (k.conkey) AND r.attnum = ANY (k.confkey))

        -- Missing foreign key to nile.tenants: rows can carry tenant ids that do not exist.
        UNION ALL
        SELECT 'warning', 'table ' || e.name,
               format('no foreign key from %I to nile.tenants: rows can belong to tenants that do not exist', e.col),
               format('SELECT nile.enable_tenancy(%L);', e.root)
        FROM enrolled e
        WHERE e.attnum IS NOT NULL AND NOT e.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = e.relid AND k.contype = 'f'
                            AND k.confrelid = 'nile.tenants'::regclass AND k.conkey = ARRAY[e.attnum])

        -- Other policies: a permissive one does nothing (the tenant policies are also applied as restrictive ones,
        -- see src/rls/restrictive.rs) but suggests that someone expects it to widen access; a restrictive one that is always
        -- false locks every tenant out.
        UNION ALL
        SELECT CASE WHEN p.polpermissive THEN 'warning' ELSE 'error' END, format('policy %I on %s', p.polname, e.name),
               CASE WHEN p.polpermissive
                    THEN 'permissive policy next to the tenant policies has no effect: nile_tenancy also applies the tenant policies as restrictive ones, so no permissive policy can widen access beyond the tenant'
                    ELSE 'restrictive policy that is always false: no tenant can reach any row' END,
               CASE WHEN p.polpermissive
                    THEN format('DROP POLICY %I ON %s;  -- or recreate it AS RESTRICTIVE, so that it narrows the tenant policies instead', p.polname, e.name)
                    ELSE format('DROP POLICY %I ON %s;', p.polname, e.name) END
        FROM enrolled e JOIN pg_policy p ON p.polrelid = e.relid
        WHERE p.polname NOT IN ('nile_tenant_select', 'nile_tenant_insert', 'nile_tenant_update', 'nile_tenant_delete')
          AND (p.polpermissive
               OR pg_get_expr(p.polqual, p.polrelid) IN ('false', 'NULL::boolean')
               OR pg_get_expr(p.polwithcheck, p.polrelid) IN ('false', 'NULL::boolean'))

        -- Roles that can log in and bypass row-level security on tenant tables. The bootstrap superuser (who owns
        -- the cluster) is not named: it cannot be taken away.
        UNION ALL
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               CASE WHEN r.rolsuper THEN 'a superuser that can log in: row-level security never applies to it'
                    ELSE 'can log in and has BYPASSRLS: row-level security never applies to it' END,
               format('ALTER ROLE %I %s;', r.rolname, CASE WHEN r.rolsuper THEN 'NOSUPERUSER' ELSE 'NOBYPASSRLS' END)
        FROM pg_roles r
        WHERE r.rolcanlogin AND (r.rolsuper OR r.rolbypassrls) AND r.oid <> 10 AND EXISTS (SELECT 1 FROM enrolled)
        UNION ALL
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               format('can log in and may become %I, which %s', g.rolname,
                      CASE WHEN g.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
               format('REVOKE %I FROM %I;', g.rolname, r.rolname)
        FROM pg_roles r JOIN pg_roles g ON g.oid <> r.oid AND (g.rolsuper OR g.rolbypassrls)
        WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolbypassrls AND pg_has_role(r.oid, g.oid, 'MEMBER')
          AND EXISTS (SELECT 1 FROM enrolled)
        UNION ALL
        -- Roles that can log in and own a tenant table (or may become its owner). An owner's code (its triggers, an
        -- ALTER TABLE ... USING expression) reads every tenant's rows, so only the migration role should: a member
        -- of nile_table_owner that is not an application role (examples/role_layout.sql), which is not reported. An
        -- application role (a member of nile_app) that owns one could also empty, change or drop it.
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               CASE WHEN pg_has_role(r.oid, 'nile_app', 'MEMBER')
                    THEN format('is an application role (a member of nile_app) and %s tenant table %s: the application can empty it, change it or drop it',
                                CASE WHEN r.oid = e.relowner THEN 'owns' ELSE format('is a member of %I, which owns', o.rolname) END, e.name)
                    ELSE format('can log in and %s tenant table %s, whose code reads every tenant''s rows, but is not a member of nile_table_owner (the migration role)',
                                CASE WHEN r.oid = e.relowner THEN 'owns' ELSE format('is a member of %I, which owns', o.rolname) END, e.name) END,
               CASE WHEN pg_has_role(r.oid, 'nile_app', 'MEMBER')
                    THEN CASE WHEN r.oid = e.relowner
                              THEN format('ALTER TABLE %s OWNER TO <the migration role>;  -- see examples/role_layout.sql', e.name)
                              ELSE format('REVOKE %I FROM %I;', o.rolname, r.rolname) END
                    ELSE format('GRANT nile_table_owner TO %I;  -- if it is the migration role (examples/role_layout.sql); else REVOKE its ownership', r.rolname) END
        FROM enrolled e JOIN pg_roles o ON o.oid = e.relowner
        JOIN pg_roles r ON r.rolcanlogin AND NOT r.rolsuper AND pg_has_role(r.oid, e.relowner, 'MEMBER')
        WHERE NOT e.relispartition
          AND (pg_has_role(r.oid, 'nile_app', 'MEMBER') OR NOT pg_has_role(r.oid, 'nile_table_owner', 'MEMBER'))

        -- Tenant-bound roles that row-level security no longer confines, and bindings of roles that were dropped
        -- (a role created later with the same OID would inherit the binding).
        UNION ALL
        SELECT 'error', 'role ' || quote_ident(r.rolname),
               format('is bound to tenant %s but %s: row-level security never applies to it, so the binding does not confine it',
                      b.tenant_id, CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
               format('ALTER ROLE %I %s;', r.rolname, CASE WHEN r.rolsuper THEN 'NOSUPERUSER' ELSE 'NOBYPASSRLS' END)
        FROM nile.role_bindings b JOIN pg_roles r ON r.oid = b.role::oid
        WHERE r.rolsuper OR r.rolbypassrls
        UNION ALL
        SELECT 'error', 'role binding ' || b.role::oid::text,
               format('binding of a dropped role (OID %s) to tenant %s: a role created later with the same OID would be bound to that tenant',
                      b.role::oid, b.tenant_id),
               format('DELETE FROM nile.role_bindings WHERE role = %s;  -- as a superuser', b.role::oid)
        FROM nile.role_bindings b
        WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = b.role::oid)

        -- Views that read tenant tables with their owner's rights, and materialized views of tenant tables.
        UNION ALL
        SELECT CASE WHEN v.relkind = 'm' OR o.rolsuper OR o.rolbypassrls THEN 'error' ELSE 'warning' END,
               CASE WHEN v.relkind = 'm' THEN 'materialized view ' ELSE 'view ' END || v.oid::regclass::text,
               CASE WHEN v.relkind = 'm'
                    THEN format('materialized view of tenant table %s: its rows are stored without row-level security, readable by anyone who can read the view', rd.tbl::regclass)
                    WHEN o.rolsuper OR o.rolbypassrls
                    THEN format('reads tenant table %s with the rights of its owner %I, who bypasses row-level security: every tenant''s rows are visible through it', rd.tbl::regclass, o.rolname)
                    ELSE format('reads tenant table %s with the rights of its owner %I instead of the caller''s', rd.tbl::regclass, o.rolname) END,
               CASE WHEN v.relkind = 'm'
                    THEN format('DROP MATERIALIZED VIEW %s;  -- use a view WITH (security_invoker = true) instead', v.oid::regclass)
                    WHEN current_setting('server_version_num')::int >= 150000
                    THEN format('ALTER VIEW %s SET (security_invoker = true);', v.oid::regclass)
                    ELSE format('ALTER VIEW %s OWNER TO <a role without BYPASSRLS>;  -- security_invoker needs PostgreSQL 15', v.oid::regclass) END
        FROM (SELECT DISTINCT ON (view_oid) view_oid, tbl FROM readers ORDER BY view_oid, tbl) rd
        JOIN pg_class v ON v.oid = rd.view_oid AND v.relkind IN ('v', 'm')
        JOIN pg_roles o ON o.oid = v.relowner
        WHERE v.relkind = 'm'
           OR NOT coalesce((SELECT lower(option_value) IN ('true', 'on', '1', 'yes')
                            FROM pg_options_to_table(v.reloptions) WHERE option_name = 'security_invoker'), false)

        -- TRUNCATE ignores row-level security: only owners and nile_admin may hold it.
        UNION ALL
        SELECT 'error', 'table ' || e.name,
               format('%s may TRUNCATE it, which empties every tenant''s rows at once (TRUNCATE ignores row-level security)',
                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE 'role ' || quote_ident(pg_get_userbyid(g.grantee)) END),
               format('REVOKE TRUNCATE ON %s FROM %s;', e.name,
                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END)
        FROM enrolled e, LATERAL aclexplode(e.relacl) g
        WHERE g.privilege_type = 'TRUNCATE' AND g.grantee <> e.relowner
          AND (g.grantee = 0 OR NOT (pg_has_role(g.grantee, e.relowner, 'MEMBER') OR pg_has_role(g.grantee, 'nile_admin', 'MEMBER')))

        -- Casts to uuid that run a user's function, and foreign keys to nile.tenants from a column that is not uuid:
        -- each lookup of such a key in nile.tenants would run the cast's function with the rights of the owner of
        -- nile.tenants (src/tables/fk_validation.rs).
        UNION ALL
        SELECT 'error', format('cast from %s to uuid', c.castsource::regtype),
               format('runs function %s: a foreign key from a column of type %s to nile.tenants would run it with the rights of the owner of nile.tenants',
                      c.castfunc::regprocedure, c.castsource::regtype),
               format('DROP CAST (%s AS uuid);', c.castsource::regtype)
        FROM pg_cast c
        WHERE c.casttarget = 'uuid'::regtype AND c.castmethod = 'f' AND c.oid >= 16384
        UNION ALL
        SELECT 'error', format('constraint %I on %s', k.conname, k.conrelid::regclass),
               format('foreign key to nile.tenants from column %I of type %s, not uuid: each lookup converts it with a cast, run with the rights of the owner of nile.tenants',
                      a.attname, a.atttypid::regtype),
               format('ALTER TABLE %s DROP CONSTRAINT %I;  -- and store the tenant id as uuid', k.conrelid::regclass, k.conname)
        FROM pg_constraint k
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
        JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE k.contype = 'f' AND k.confrelid = 'nile.tenants'::regclass AND k.conparentid = 0
          AND CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END <> 'uuid'::regtype  -- a domain over uuid is uuid

        -- The event triggers that keep new tables and partitions protected.
        UNION ALL
        SELECT 'error', 'event trigger ' || quote_ident(t.name),
               'the event trigger is missing or disabled: new tables, partitions and policy changes are not checked',
               format('ALTER EVENT TRIGGER %I ENABLE;', t.name)
        FROM (VALUES ('nile_ddl_command_end'), ('nile_sql_drop')) t(name)
        LEFT JOIN pg_event_trigger et ON et.evtname = t.name
        WHERE et.oid IS NULL OR et.evtenabled NOT IN ('O', 'A')
    )
    SELECT f.severity, f.object, f.problem, f.fix
    FROM findings f
    ORDER BY f.severity = 'warning', f.object, f.problem
    $$;
COMMENT ON FUNCTION nile.verify() IS 'nile_tenancy: every way the tenancy of this database is not sound, with the SQL that fixes it; empty when all is sound';
REVOKE ALL ON FUNCTION nile.verify() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.verify() TO nile_admin;
