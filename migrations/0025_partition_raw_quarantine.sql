-- Retention drops whole partitions, never rows (issue 14), so the two tables that grow with
-- every request, telemetry_raw (the payloads) and telemetry_quarantine (refused input), become
-- monthly RANGE partitions on received_at like telemetry_readings, each with a DEFAULT
-- partition. Their rows are copied over; on a large existing table apply this in a
-- maintenance window (it rewrites both tables under an ACCESS EXCLUSIVE lock).
--
-- A partitioned table's unique keys must hold its partition key, so the primary keys grow
-- by received_at: (request_id, received_at) and (id, received_at). request_id stays unique
-- in practice (a fresh UUID per request, written with the request's own received_at), and
-- telemetry_write()'s `ON CONFLICT (request_id)` becomes `ON CONFLICT (request_id, received_at)`
-- below: a retried write carries the same received_at, so it is still a no-op.

-- Generic: monthly partitions of any table partitioned by RANGE on one time column, for
-- [from_month, from_month + months). Rows of that range already in the DEFAULT partition
-- move into the new one. Names: <parent>_YYYY_MM.
CREATE OR REPLACE FUNCTION partition_ensure_monthly(parent regclass, from_month date, months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m date;
    part text;
    created int := 0;
    key text;
    def regclass;
    pname text;
    pschema text;
BEGIN
    SELECT c.relname, n.nspname INTO pname, pschema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    SELECT a.attname INTO key
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    IF key IS NULL THEN
        RAISE EXCEPTION '% is not partitioned by RANGE on one column', parent;
    END IF;
    SELECT i.inhrelid::regclass INTO def
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    -- One creator at a time per table (workers run this concurrently at start-up).
    PERFORM pg_advisory_xact_lock(2116419587, parent::oid::int);
    FOR i IN 0 .. months - 1 LOOP
        m := (date_trunc('month', from_month) + make_interval(months => i))::date;
        part := format('%s_%s', pname, to_char(m, 'YYYY_MM'));
        IF to_regclass(format('%I.%I', pschema, part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           pschema, part, parent);
            IF def IS NOT NULL THEN
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= %L AND %I < %L RETURNING *) '
                               'INSERT INTO %I.%I SELECT * FROM moved',
                               def, key, m, key, (m + interval '1 month')::date, pschema, part);
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           parent, pschema, part, m, (m + interval '1 month')::date);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

-- telemetry_raw -------------------------------------------------------------------------
ALTER TABLE telemetry_raw RENAME TO telemetry_raw_unpartitioned;
ALTER INDEX telemetry_raw_pkey RENAME TO telemetry_raw_unpartitioned_pkey;
ALTER INDEX telemetry_raw_received RENAME TO telemetry_raw_unpartitioned_received;

CREATE TABLE telemetry_raw (
    request_id     uuid        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    device_id      text,
    parser_version text        NOT NULL,
    data_source    text        NOT NULL,
    content_type   text,
    payload        text        NOT NULL,
    CONSTRAINT telemetry_raw_pkey PRIMARY KEY (request_id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE telemetry_raw_default PARTITION OF telemetry_raw DEFAULT;
CREATE INDEX telemetry_raw_received ON telemetry_raw USING brin (received_at);

-- telemetry_quarantine --------------------------------------------------------------------
ALTER TABLE telemetry_quarantine RENAME TO telemetry_quarantine_unpartitioned;
ALTER INDEX telemetry_quarantine_pkey RENAME TO telemetry_quarantine_unpartitioned_pkey;
ALTER INDEX telemetry_quarantine_request RENAME TO telemetry_quarantine_unpartitioned_request;

CREATE TABLE telemetry_quarantine (
    id          bigint      NOT NULL DEFAULT nextval('telemetry_quarantine_id_seq'),
    received_at timestamptz NOT NULL DEFAULT now(),
    request_id  uuid,
    device_id   text,
    position    int,
    reason      text        NOT NULL,
    raw         text,
    CONSTRAINT telemetry_quarantine_pkey PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE telemetry_quarantine_default PARTITION OF telemetry_quarantine DEFAULT;
-- Replay looks rows up by request_id (migration 0010).
CREATE INDEX telemetry_quarantine_request ON telemetry_quarantine (request_id);

-- Partitions for every month that holds rows, and the months around now (maintenance
-- keeps creating them ahead, backend/store/partitions.py), then the rows themselves.
DO $$
DECLARE
    t text;
    lo date;
    hi date;
BEGIN
    FOREACH t IN ARRAY ARRAY['telemetry_raw', 'telemetry_quarantine'] LOOP
        EXECUTE format('SELECT least(min(received_at), now() - interval ''1 month'')::date,'
                       ' greatest(max(received_at), now() + interval ''3 months'')::date FROM %I',
                       t || '_unpartitioned') INTO lo, hi;
        PERFORM partition_ensure_monthly(t::regclass, lo,
            ((extract(year FROM hi) * 12 + extract(month FROM hi))
             - (extract(year FROM lo) * 12 + extract(month FROM lo)))::int + 1);
    END LOOP;
END $$;

INSERT INTO telemetry_raw SELECT * FROM telemetry_raw_unpartitioned;
INSERT INTO telemetry_quarantine (id, received_at, request_id, device_id, position, reason, raw)
SELECT id, received_at, request_id, device_id, position, reason, raw FROM telemetry_quarantine_unpartitioned;
ALTER SEQUENCE telemetry_quarantine_id_seq OWNED BY telemetry_quarantine.id;
DROP TABLE telemetry_raw_unpartitioned;
DROP TABLE telemetry_quarantine_unpartitioned;

-- telemetry_write(): the one arbiter that named the old key. The function is patched in
-- place (not re-created from a copy of its text) so that whatever an earlier migration
-- made of it stays; if the clause is not found the migration fails rather than leaving
-- every raw-payload write failing at run time.
DO $$
DECLARE
    def text;
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname = 'telemetry_write' AND n.nspname = current_schema() LOOP
        def := pg_get_functiondef(f);
        IF position('ON CONFLICT (request_id) DO NOTHING' IN def) = 0 THEN
            RAISE EXCEPTION 'telemetry_write (%): no "ON CONFLICT (request_id) DO NOTHING" to update', f;
        END IF;
        EXECUTE replace(def, 'ON CONFLICT (request_id) DO NOTHING', 'ON CONFLICT (request_id, received_at) DO NOTHING');
    END LOOP;
END $$;
