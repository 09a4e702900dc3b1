-- The live stream's log of committed readings (backend/live/, docs/stream.md).
--
-- One row per INSERT statement into telemetry_readings (a flush, a COPY, a replayed chunk),
-- written by a statement trigger inside the writer's own transaction: a row exists exactly
-- when its readings are committed, whatever path wrote them (HTTP, replay, other processes),
-- and a rejected or rolled-back write leaves nothing. One row per statement, not per reading:
-- one small insert per flush instead of doubling the rows written (the cost of ingest).
--
-- Ids are in commit order: stream_publish() takes a transaction-level advisory lock before
-- it draws the id, held until the writer's COMMIT, so no transaction with a smaller id can
-- still commit after a larger one was seen. Readers can then follow "id > cursor" and never
-- skip a row, which is what makes Last-Event-ID resumption exact.
CREATE TABLE IF NOT EXISTS stream_events (
    id         bigserial   PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    n          int         NOT NULL,
    -- [[device_id, metric, ts, value, value_text], ...] in insertion order
    readings   jsonb       NOT NULL
);

-- The HMAC secret for stream tokens when STREAM_TOKEN_SECRET is not set: one per database,
-- so every worker, stream process and instance sharing the database agrees on it.
CREATE TABLE IF NOT EXISTS stream_secret (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    secret text    NOT NULL
);
INSERT INTO stream_secret (secret)
VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION stream_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stream_new) THEN
        RETURN NULL;  -- only duplicates: nothing new, and no reason to serialize this commit
    END IF;
    PERFORM pg_advisory_xact_lock(1936029292);  -- 'stre': ids in commit order (see above)
    INSERT INTO stream_events (n, readings)
    SELECT count(*), jsonb_agg(jsonb_build_array(s.device_id, s.metric, s.ts, s.value, s.value_text))
    FROM stream_new s;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS telemetry_readings_stream ON telemetry_readings;
CREATE TRIGGER telemetry_readings_stream
    AFTER INSERT ON telemetry_readings
    REFERENCING NEW TABLE AS stream_new
    FOR EACH STATEMENT EXECUTE FUNCTION stream_publish();
