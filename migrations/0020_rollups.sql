-- Rollups per (device, metric): 1-minute, hourly and daily count, sum, min, max, first and
-- last (with their times) of numeric readings (issue 14).
--
-- Maintained in the writing transaction by an AFTER INSERT statement trigger with a
-- transition table on telemetry_readings. Why this composes with telemetry_write() and the
-- COPY path (backend/ingest/sinks/postgres.py):
--   * the transition table holds only the rows actually inserted: a duplicate skipped by
--     ON CONFLICT DO NOTHING is not in it, a conflict or mistyped reading goes to
--     telemetry_quarantine and never reaches telemetry_readings, so neither is counted;
--   * a server-timed reading moved to a free microsecond is inserted by its own statement,
--     which fires the trigger for that one row;
--   * a COPY that fails on a taken key aborts its transaction, rollup updates included,
--     and the batch is then written by telemetry_write(), which counts what it inserts;
--   * telemetry_ensure_partitions() moves rows out of the default partition by inserting
--     into the partition itself, which does not fire the parent's statement trigger, so a
--     moved row is not counted twice.
-- So the rollups change in the same commit as the raw rows: late data (backlog, spool
-- replay, a re-sent old batch) updates exactly its buckets, and there is no
-- not-yet-rolled-up tail for reads to add.
--
-- Only numeric readings (value IS NOT NULL) are rolled up; aggregates are over `value`.
-- Buckets come from date_bin() against 2000-01-01 UTC, which does not depend on the
-- session's TimeZone (date_trunc on timestamptz does).
-- Ranges are monthly partitions like the raw table's, so retention can drop rollup
-- partitions by their bounds (they outlive the raw rows they summarise).

CREATE TABLE IF NOT EXISTS telemetry_rollup_1m (
    device_id   text             NOT NULL,
    metric      text             NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    first_ts    timestamptz      NOT NULL,
    first_value double precision NOT NULL,
    last_ts     timestamptz      NOT NULL,
    last_value  double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE IF NOT EXISTS telemetry_rollup_1h (LIKE telemetry_rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE IF NOT EXISTS telemetry_rollup_1d (LIKE telemetry_rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);

-- Rows are updated in place many times (every batch touches the current minute, hour and
-- day): free space per page lets those be HOT updates (the key columns never change).
CREATE TABLE IF NOT EXISTS telemetry_rollup_1m_default PARTITION OF telemetry_rollup_1m DEFAULT WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS telemetry_rollup_1h_default PARTITION OF telemetry_rollup_1h DEFAULT WITH (fillfactor = 70);
CREATE TABLE IF NOT EXISTS telemetry_rollup_1d_default PARTITION OF telemetry_rollup_1d DEFAULT WITH (fillfactor = 70);

-- Monthly partitions of the three rollups for [from_month, from_month + months), moving
-- rows of that range out of each default partition; called next to
-- telemetry_ensure_partitions() (backend/store/partitions.py).
CREATE OR REPLACE FUNCTION telemetry_rollup_ensure_partitions(from_month date, months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m date;
    grain text;
    parent text;
    part text;
    created int := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(2116419587);
    FOREACH grain IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        parent := 'telemetry_rollup_' || grain;
        FOR i IN 0 .. months - 1 LOOP
            m := (date_trunc('month', from_month) + make_interval(months => i))::date;
            part := format('%s_%s', parent, to_char(m, 'YYYY_MM'));
            IF to_regclass(part) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 70)',
                               part, parent);
                EXECUTE format(
                    'WITH moved AS (DELETE FROM %I WHERE bucket >= %L AND bucket < %L RETURNING *) '
                    'INSERT INTO %I SELECT * FROM moved',
                    parent || '_default', m, (m + interval '1 month')::date, part);
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               parent, part, m, (m + interval '1 month')::date);
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END $$;

-- Fold the inserted rows into the three rollups: one pass over the transition table for the
-- minutes, hours and days from those minutes. Sorted by key so concurrent writers lock rollup
-- rows in one order. A merged first/last keeps the earlier/later time; a series has one
-- reading per ts (the unique key), so there is no tie.
CREATE OR REPLACE FUNCTION telemetry_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH mi AS (
        SELECT n.device_id, n.metric, date_bin('1 minute', n.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
               count(*) AS count, sum(n.value) AS sum, min(n.value) AS min, max(n.value) AS max,
               min(n.ts) AS first_ts, (array_agg(n.value ORDER BY n.ts))[1] AS first_value,
               max(n.ts) AS last_ts, (array_agg(n.value ORDER BY n.ts DESC))[1] AS last_value
        FROM new_rows n WHERE n.value IS NOT NULL
        GROUP BY 1, 2, 3
    ), up_m AS (
        INSERT INTO telemetry_rollup_1m AS r SELECT * FROM mi ORDER BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
            count = r.count + excluded.count, sum = r.sum + excluded.sum,
            min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
            first_value = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_value ELSE r.first_value END,
            first_ts = least(r.first_ts, excluded.first_ts),
            last_value = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_value ELSE r.last_value END,
            last_ts = greatest(r.last_ts, excluded.last_ts)
    ), ho AS (
        SELECT mi.device_id, mi.metric, date_bin('1 hour', mi.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
               sum(mi.count)::bigint AS count, sum(mi.sum) AS sum, min(mi.min) AS min, max(mi.max) AS max,
               min(mi.first_ts) AS first_ts, (array_agg(mi.first_value ORDER BY mi.first_ts))[1] AS first_value,
               max(mi.last_ts) AS last_ts, (array_agg(mi.last_value ORDER BY mi.last_ts DESC))[1] AS last_value
        FROM mi GROUP BY 1, 2, 3
    ), up_h AS (
        INSERT INTO telemetry_rollup_1h AS r SELECT * FROM ho ORDER BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
            count = r.count + excluded.count, sum = r.sum + excluded.sum,
            min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
            first_value = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_value ELSE r.first_value END,
            first_ts = least(r.first_ts, excluded.first_ts),
            last_value = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_value ELSE r.last_value END,
            last_ts = greatest(r.last_ts, excluded.last_ts)
    ), da AS (
        SELECT ho.device_id, ho.metric, date_bin('1 day', ho.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
               sum(ho.count)::bigint AS count, sum(ho.sum) AS sum, min(ho.min) AS min, max(ho.max) AS max,
               min(ho.first_ts) AS first_ts, (array_agg(ho.first_value ORDER BY ho.first_ts))[1] AS first_value,
               max(ho.last_ts) AS last_ts, (array_agg(ho.last_value ORDER BY ho.last_ts DESC))[1] AS last_value
        FROM ho GROUP BY 1, 2, 3
    )
    INSERT INTO telemetry_rollup_1d AS r SELECT * FROM da ORDER BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
        count = r.count + excluded.count, sum = r.sum + excluded.sum,
        min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
        first_value = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_value ELSE r.first_value END,
        first_ts = least(r.first_ts, excluded.first_ts),
        last_value = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_value ELSE r.last_value END,
        last_ts = greatest(r.last_ts, excluded.last_ts);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS telemetry_readings_rollup ON telemetry_readings;
CREATE TRIGGER telemetry_readings_rollup
    AFTER INSERT ON telemetry_readings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION telemetry_rollup_apply();

-- Rows stored before this migration: a rollup partition for each month that has a raw
-- partition first, so the backfill lands in them (the rest goes to the default partitions).
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'telemetry_readings'::regclass AND c.relname ~ '^telemetry_readings_\d{4}_\d{2}$'
    LOOP
        PERFORM telemetry_rollup_ensure_partitions(to_date(right(part, 7), 'YYYY_MM'), 1);
    END LOOP;
END $$;

INSERT INTO telemetry_rollup_1m
SELECT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       count(*), sum(value), min(value), max(value),
       min(ts), (array_agg(value ORDER BY ts))[1], max(ts), (array_agg(value ORDER BY ts DESC))[1]
FROM telemetry_readings WHERE value IS NOT NULL GROUP BY 1, 2, 3;

INSERT INTO telemetry_rollup_1h
SELECT device_id, metric, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       sum(count)::bigint, sum(sum), min(min), max(max),
       min(first_ts), (array_agg(first_value ORDER BY first_ts))[1],
       max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1]
FROM telemetry_rollup_1m GROUP BY 1, 2, 3;

INSERT INTO telemetry_rollup_1d
SELECT device_id, metric, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       sum(count)::bigint, sum(sum), min(min), max(max),
       min(first_ts), (array_agg(first_value ORDER BY first_ts))[1],
       max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1]
FROM telemetry_rollup_1h GROUP BY 1, 2, 3;
