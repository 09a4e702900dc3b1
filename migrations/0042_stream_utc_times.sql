-- Stream events carry their time in UTC ending in Z, like every answer of the service.
--
-- jsonb renders a timestamptz in the writer session's TimeZone (`+01:00` on a Berlin
-- server). The conversion is done by the reader (backend/live/frames.py, in the stream
-- process), not here with to_char() for every reading inside the writer's
-- commit: measured, that made the trigger's share of a plain 5,000-row INSERT grow. This
-- definition is 0041's, restated so that the function of record is here.
CREATE OR REPLACE FUNCTION stream_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stream_new) THEN
        RETURN NULL;  -- only duplicates: nothing new, and no reason to serialize this commit
    END IF;
    PERFORM pg_advisory_xact_lock(1936029292);  -- 'stre': ids in commit order (0040)
    INSERT INTO stream_events (n, readings)
    SELECT count(*), jsonb_agg(jsonb_build_array(s.device_id, s.metric, s.ts, s.value, s.value_text))
    FROM stream_new s;
    PERFORM pg_notify('telemetry_stream', '');  -- delivered at COMMIT (0041)
    RETURN NULL;
END $$;
