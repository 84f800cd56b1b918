-- sql/ddl_triggers.sql — the DDL event triggers (src/ddl/events.rs) that enroll, protect and forget tenant tables
-- as the schema changes, and the privileges of their functions. Runs last (pgrx `finalize`), so that none of the SQL
-- of the install goes through them, and ends the install with the check that every function got its privileges.
-- Where signatures and privileges live: the header of sql/bootstrap.sql.

-- The functions are declared here, over the C symbols of src/ddl/events.rs: pgrx cannot declare RETURNS event_trigger.
CREATE FUNCTION nile._ddl_command_end() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'nile_ddl_command_end';
REVOKE ALL ON FUNCTION nile._ddl_command_end() FROM PUBLIC;   -- an event trigger function, called by no one
CREATE FUNCTION nile._sql_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'nile_sql_drop';
REVOKE ALL ON FUNCTION nile._sql_drop() FROM PUBLIC;
CREATE EVENT TRIGGER nile_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'ALTER POLICY',
                 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA', 'CREATE CAST')
    EXECUTE FUNCTION nile._ddl_command_end();
CREATE EVENT TRIGGER nile_sql_drop ON sql_drop
    EXECUTE FUNCTION nile._sql_drop();

-- Every function of schema nile has its privileges set by the file of its concern: one that no file revoked from
-- PUBLIC would be executable by everyone. The install stops here if one was forgotten; this creates nothing.
DO $privileges$
DECLARE
    forgotten text;
BEGIN
    SELECT pg_catalog.string_agg(p.oid::pg_catalog.regprocedure::text, ', ' ORDER BY p.oid) INTO forgotten
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace OPERATOR(pg_catalog.=) 'nile'::pg_catalog.regnamespace::pg_catalog.oid AND p.proacl IS NULL;
    IF forgotten IS NOT NULL THEN
        RAISE EXCEPTION 'nile_tenancy: no privileges set on %', forgotten
            USING HINT = 'REVOKE ALL ... FROM PUBLIC, then GRANT, in the sql/ file of its concern (sql/bootstrap.sql).';
    END IF;
END
$privileges$;
