-- The stream's wake-up from inside the commit: stream_publish() also NOTIFYs telemetry_stream.
--
-- Why (measured with bench/stream.py): the wake-up sent by a WriteObserver after the commit
-- waited behind the other observers (the alert engine) and for the GIL of a worker busy
-- parsing, on the flusher thread's turn, then took its own round trip. PostgreSQL delivers a
-- NOTIFY issued in a transaction at its COMMIT and never for a rollback: the same promise
-- (only committed readings), with no Python in the path, for every writer of any process.
-- The payload is empty (identical notifications of one transaction are folded into one, and
-- NOTIFY's 8,000-byte limit never matters): listeners read the rows after their cursor.
-- With REDIS_URL set, backend/live/publisher.py also publishes on Redis after each commit.
CREATE OR REPLACE FUNCTION stream_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stream_new) THEN
        RETURN NULL;  -- only duplicates: nothing new, and no reason to serialize this commit
    END IF;
    PERFORM pg_advisory_xact_lock(1936029292);  -- 'stre': ids in commit order (0040)
    INSERT INTO stream_events (n, readings)
    SELECT count(*), jsonb_agg(jsonb_build_array(s.device_id, s.metric, s.ts, s.value, s.value_text))
    FROM stream_new s;
    PERFORM pg_notify('telemetry_stream', '');
    RETURN NULL;
END $$;
