-- One stream_events row per 10,000 readings of a statement, instead of one per statement.
--
-- A single INSERT of millions of rows (a bulk load, `make bench`'s data set) made one jsonb
-- array over 256 MB, which PostgreSQL refuses ("total size of jsonb array elements exceeds
-- the maximum"): the stream trigger failed the writer's statement. A row's readings are also
-- numbered within ROW_SPAN (1,000,000, backend/live/frames.py) for the event ids. Chunks keep
-- both bounded; their ids follow each other inside the same locked transaction, so commit
-- order and Last-Event-ID resumption are unchanged. This restates 0042's function otherwise.
CREATE OR REPLACE FUNCTION stream_publish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stream_new) THEN
        RETURN NULL;  -- only duplicates: nothing new, and no reason to serialize this commit
    END IF;
    PERFORM pg_advisory_xact_lock(1936029292);  -- 'stre': ids in commit order (0040)
    INSERT INTO stream_events (n, readings)
    SELECT count(*), jsonb_agg(jsonb_build_array(c.device_id, c.metric, c.ts, c.value, c.value_text) ORDER BY c.i)
    FROM (SELECT s.*, row_number() OVER () - 1 AS i FROM stream_new s) c
    GROUP BY c.i / 10000
    ORDER BY c.i / 10000;
    PERFORM pg_notify('telemetry_stream', '');  -- delivered at COMMIT (0041)
    RETURN NULL;
END $$;
