-- Replay looks up quarantine rows by request_id to skip requests it already stored;
-- without an index that is a scan per replayed chunk once quarantine grows.
CREATE INDEX IF NOT EXISTS telemetry_quarantine_request ON telemetry_quarantine (request_id);
