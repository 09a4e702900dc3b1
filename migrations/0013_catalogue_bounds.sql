-- Bounded catalogue (issue 11). Workers no longer load the whole catalogue: names are looked
-- up by primary key when a request needs them, and only the aliased rows are read up front,
-- through this partial index, so a catalogue of any size costs a fresh worker nothing.
CREATE INDEX IF NOT EXISTS telemetry_fields_aliased ON telemetry_fields (name) WHERE aliases <> '{}';

-- Which API key introduced a name (NULL: seeded, or registered by a replayed/deferred write),
-- so "new names per key per hour" is counted by PostgreSQL, the same for every worker.
ALTER TABLE telemetry_fields ADD COLUMN IF NOT EXISTS api_key_id text;
CREATE INDEX IF NOT EXISTS telemetry_fields_key_recent ON telemetry_fields (api_key_id, first_seen)
    WHERE api_key_id IS NOT NULL;
