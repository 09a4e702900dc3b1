-- Fleet-wide reads of the rollups (no device filter: "365 days daily across the fleet")
-- filter on metric and a bucket range; the key (device_id, metric, bucket) cannot serve
-- them, so each edge segment scanned a whole month of 1-minute rows (EXPLAIN ANALYZE at
-- 10.8 M readings: ~60 ms per edge). A rollup row gets this entry once, when its bucket
-- first appears; the many later updates of the row change no indexed column and stay HOT.
CREATE INDEX IF NOT EXISTS telemetry_rollup_1m_metric_bucket ON telemetry_rollup_1m (metric, bucket);
CREATE INDEX IF NOT EXISTS telemetry_rollup_1h_metric_bucket ON telemetry_rollup_1h (metric, bucket);
CREATE INDEX IF NOT EXISTS telemetry_rollup_1d_metric_bucket ON telemetry_rollup_1d (metric, bucket);
