-- A read-only role for dashboard tools (Grafana's PostgreSQL data source, Metabase): views in
-- their own schema `dashboard`, SELECT on those views and nothing else (docs/grafana.md).
--
-- The views run with their owner's rights (the migration owner), so the role needs no right
-- on any table: api_keys (key hashes), raw payloads, quarantine, alert rules' webhook URLs
-- are simply not there. Role attributes make every session read-only by default and bound
-- each statement, so a heavy panel cannot hold the database.
--
-- Roles belong to the whole cluster: the role is created once (if missing) and granted
-- in each database that runs this migration. Where the migration owner may not create roles
-- (a managed database), the views are still made and a NOTICE says what an administrator
-- runs (docs/grafana.md, "Without CREATEROLE").

CREATE SCHEMA IF NOT EXISTS dashboard;
COMMENT ON SCHEMA dashboard IS 'Read-only views for dashboard tools (docs/grafana.md)';

CREATE OR REPLACE VIEW dashboard.readings AS
    SELECT device_id, metric, ts, value, value_text, received_at FROM public.telemetry_readings;
COMMENT ON VIEW dashboard.readings IS 'One row per (device_id, metric, ts): value (number) or value_text';

CREATE OR REPLACE VIEW dashboard.latest AS
    SELECT device_id, metric, ts, value, value_text, received_at FROM public.device_latest;

CREATE OR REPLACE VIEW dashboard.devices AS
    SELECT device_id, name, location, description, device_type, first_seen, last_seen FROM public.devices;

CREATE OR REPLACE VIEW dashboard.fields AS
    SELECT name, value_type, description, unit FROM public.telemetry_fields;

CREATE OR REPLACE VIEW dashboard.alerts AS
    SELECT id, rule_id, device_id, metric, alert_type, severity, message, threshold_value, actual_value,
           triggered_at, created_at, is_resolved, resolved_at, resolved_value
    FROM public.alerts;

-- The rollups (telemetry_rollup_1m/1h/1d) come from another migration, maybe a later one:
-- their views are made by this function once the tables exist. It runs here and with every
-- partition upkeep (backend/store/partitions.py: start-up and hourly), so views appear
-- without a new migration whichever lands first.
CREATE OR REPLACE FUNCTION dashboard_ensure_views() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    t text;
    made int := 0;
BEGIN
    FOREACH t IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        IF to_regclass(format('public.telemetry_rollup_%s', t)) IS NOT NULL
           AND to_regclass(format('dashboard.rollup_%s', t)) IS NULL THEN
            PERFORM pg_advisory_xact_lock(2116419588);  -- workers run this concurrently
            IF to_regclass(format('dashboard.rollup_%s', t)) IS NULL THEN
                EXECUTE format('CREATE VIEW dashboard.%I AS SELECT * FROM public.%I',
                               'rollup_' || t, 'telemetry_rollup_' || t);
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'telemetry_dashboard') THEN
                    EXECUTE format('GRANT SELECT ON dashboard.%I TO telemetry_dashboard', 'rollup_' || t);
                END IF;
                made := made + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN made;
END $$;
SELECT dashboard_ensure_views();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'telemetry_dashboard') THEN
        BEGIN
            -- No password yet: `python -m backend dashboard-role --password-stdin` sets one.
            CREATE ROLE telemetry_dashboard LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
                NOBYPASSRLS CONNECTION LIMIT 20;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration made it at the same moment
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'telemetry_dashboard not created (%): see docs/grafana.md, "Without CREATEROLE"',
                    SQLERRM;
                RETURN;
        END;
    END IF;
    BEGIN
        ALTER ROLE telemetry_dashboard SET default_transaction_read_only = on;
        ALTER ROLE telemetry_dashboard SET statement_timeout = '30s';
        ALTER ROLE telemetry_dashboard SET search_path = dashboard;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'telemetry_dashboard settings not changed (%)', SQLERRM;
    END;
    GRANT USAGE ON SCHEMA dashboard TO telemetry_dashboard;
    GRANT SELECT ON ALL TABLES IN SCHEMA dashboard TO telemetry_dashboard;
    -- Views added to the schema later by the same owner are readable too.
    ALTER DEFAULT PRIVILEGES IN SCHEMA dashboard GRANT SELECT ON TABLES TO telemetry_dashboard;
END $$;
