-- Supabase's REST API (PostgREST) serves every table of the public schema to the `anon` and
-- `authenticated` roles, and Supabase's default privileges grant them each new table. Row-level
-- security with no policy for them makes every such table read (and write) as empty for those
-- roles, while the owner the service connects as is not subject to it (owners bypass RLS).
-- Partitions are tables of their own that PostgREST would serve by name, so they are covered
-- too: telemetry_secure_tables() runs after every migration and after partitions are created.
CREATE OR REPLACE FUNCTION telemetry_secure_tables() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    secured int := 0;
    api_roles text;
BEGIN
    -- Workers creating partitions at once would otherwise update the same catalog rows
    -- (GRANT/REVOKE: "tuple concurrently updated").
    PERFORM pg_advisory_xact_lock(2116419587);
    FOR rel IN
        SELECT c.oid::regclass AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
          AND NOT c.relrowsecurity AND pg_get_userbyid(c.relowner) = current_user
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', rel.name);
        secured := secured + 1;
    END LOOP;
    -- Grants as well (where Supabase's roles exist): RLS does not cover views, sequences or
    -- functions, and a SECURITY DEFINER function or a view would read as its owner.
    SELECT string_agg(quote_ident(rolname), ', ') INTO api_roles
    FROM pg_roles WHERE rolname IN ('anon', 'authenticated');
    IF api_roles IS NOT NULL THEN
        FOR rel IN
            SELECT c.oid::regclass AS name, c.relkind
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
              AND pg_get_userbyid(c.relowner) = current_user
        LOOP
            EXECUTE format('REVOKE ALL ON %s FROM %s', rel.name, api_roles);
        END LOOP;
        FOR rel IN
            SELECT p.oid::regprocedure AS name
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = current_schema() AND pg_get_userbyid(p.proowner) = current_user
        LOOP
            -- PUBLIC too: functions are executable by PUBLIC by default, anon included.
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, %s', rel.name, api_roles);
        END LOOP;
        -- Tables this role creates later (partitions) start without the roles' privileges.
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE ALL ON TABLES FROM %s',
                       current_schema(), api_roles);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE ALL ON SEQUENCES FROM %s',
                       current_schema(), api_roles);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE ALL ON FUNCTIONS FROM %s',
                       current_schema(), api_roles);
    END IF;
    RETURN secured;
END $$;
