-- sql/context.sql — the session's tenant context: who may enter, read and leave it (the Rust functions of
-- src/context/tenant.rs and src/context/tokens.rs, and the policy functions every tenant policy calls), tenant-bound
-- roles (nile.role_bindings and the SQL signatures nile.bind_role() and nile.unbind_role() over
-- src/context/role_binding.rs) and the admin context (nile.admin_context() of src/context/admin.rs and its audit table
-- nile.admin_audit), with the privileges of all of it. Runs after those Rust functions and after sql/tables.sql; where
-- signatures and privileges live: the header of sql/bootstrap.sql.

-- Reading the context and leaving it: for everyone. The tenant policies call the policy functions as whoever queries
-- a tenant table.
REVOKE ALL ON FUNCTION nile.current_tenant(), nile.clear_tenant(), nile.current_user_id(), nile.policy_read_tenant(),
    nile.policy_write_tenant(), nile.policy_foreign_row(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.current_tenant(), nile.clear_tenant(), nile.current_user_id(), nile.policy_read_tenant(),
    nile.policy_write_tenant(), nile.policy_foreign_row(uuid) TO PUBLIC;
-- Entering a tenant's context, by its id or by a signed token: for application roles.
REVOKE ALL ON FUNCTION nile.set_tenant(uuid, boolean), nile.set_tenant_token(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.set_tenant(uuid, boolean), nile.set_tenant_token(text, boolean) TO nile_app;
-- The same for one read-only transaction, which may be an implicit one (a pipeline without BEGIN): for application roles.
REVOKE ALL ON FUNCTION nile.set_tenant_read_only(uuid), nile.set_tenant_token_read_only(text),
    nile.assert_read_only() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.set_tenant_read_only(uuid), nile.set_tenant_token_read_only(text),
    nile.assert_read_only() TO nile_app;
-- Signing tokens: for administrators.
REVOKE ALL ON FUNCTION nile.sign_tenant_token(uuid, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.sign_tenant_token(uuid, interval, text) TO nile_admin;

-- Tenant-bound roles (nile.bind_role()): every session of such a role works for its tenant and cannot leave it.
CREATE TABLE nile.role_bindings (
    role       regrole     NOT NULL PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE,
    bound_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    bound_by   name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE nile.role_bindings IS 'nile_tenancy: roles whose every session is fixed to one tenant (nile.bind_role())';
-- Privileges: every write goes through the extension's functions, which check the caller's role first.
REVOKE ALL ON nile.role_bindings FROM PUBLIC;
GRANT SELECT ON nile.role_bindings TO nile_admin;
-- pg_dump dumps its rows (the extension's own objects are recreated by CREATE EXTENSION).
SELECT pg_catalog.pg_extension_config_dump('nile.role_bindings', '');
-- Any change to a binding empties every backend's tenant cache too (src/context/role_binding.rs): the trigger function
-- of sql/tenants.sql invalidates the table it fires on.
CREATE TRIGGER nile_role_bindings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON nile.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION nile.tenants_changed();

-- The Rust functions behind the two signatures below (src/context/role_binding.rs), with the same privileges.
REVOKE ALL ON FUNCTION nile._bind_role(text, uuid), nile._unbind_role(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._bind_role(text, uuid), nile._unbind_role(text) TO nile_admin;

-- bind_role(role, tenant_id): every session of the role works for that tenant and cannot leave it
-- (src/context/role_binding.rs).
CREATE FUNCTION nile.bind_role(role name, tenant_id uuid) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._bind_role(role::text, tenant_id);
    END;
REVOKE ALL ON FUNCTION nile.bind_role(name, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.bind_role(name, uuid) TO nile_admin;
-- unbind_role(role): release a bound role.
CREATE FUNCTION nile.unbind_role(role name) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._unbind_role(role::text);
    END;
REVOKE ALL ON FUNCTION nile.unbind_role(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.unbind_role(name) TO nile_admin;

-- Every use of nile.admin_context(). Rows are written in the caller's transaction; a server log line is written too,
-- which survives a rollback.
CREATE TABLE nile.admin_audit (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    session_role  name        NOT NULL DEFAULT SESSION_USER,
    acting_role   name        NOT NULL DEFAULT CURRENT_USER,
    reason        text        NOT NULL,
    backend_pid   integer     NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    xact_id       xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id()
);
COMMENT ON TABLE nile.admin_audit IS 'nile_tenancy: who entered nile.admin_context(), when, and why';
REVOKE ALL ON nile.admin_audit FROM PUBLIC;
GRANT SELECT ON nile.admin_audit TO nile_admin;
-- pg_dump dumps its rows: a restored database keeps its audit trail.
SELECT pg_catalog.pg_extension_config_dump('nile.admin_audit', '');
SELECT pg_catalog.pg_extension_config_dump('nile.admin_audit_id_seq', '');
-- admin_context(reason) (src/context/admin.rs): for administrators.
REVOKE ALL ON FUNCTION nile.admin_context(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.admin_context(text) TO nile_admin;
