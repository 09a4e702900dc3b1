-- Stream events carry their time in UTC with a Z, like every answer of the service
-- (`2026-11-23T09:00:00Z`, `...T09:00:00.123456Z`), whatever the writer session's TimeZone:
-- jsonb renders a timestamptz in the session's zone (`+01:00` on a Berlin server).
CREATE OR REPLACE FUNCTION stream_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stream_new) THEN
        RETURN NULL;  -- only duplicates: nothing new, and no reason to serialize this commit
    END IF;
    PERFORM pg_advisory_xact_lock(1936029292);  -- 'stre': ids in commit order (0040)
    INSERT INTO stream_events (n, readings)
    SELECT count(*), jsonb_agg(jsonb_build_array(
               s.device_id, s.metric,
               replace(to_char(s.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '.000000Z', 'Z'),
               s.value, s.value_text))
    FROM stream_new s;
    PERFORM pg_notify('telemetry_stream', '');  -- delivered at COMMIT (0041)
    RETURN NULL;
END $$;
