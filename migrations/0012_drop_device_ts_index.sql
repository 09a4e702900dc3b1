-- Drop the (device_id, ts DESC) index: every stored reading paid for it, and the unique
-- key (device_id, metric, ts) serves the same reads.
--
-- Why (docs/benchmarks.md): it cost about 30% of PostgreSQL's CPU per stored reading
-- (batched ingest A/B, 1,000-reading requests: 9.6-10.9 -> 6.7-7.7 us per reading with it
-- dropped). "The latest readings of a device" are now read one series (device, metric) at
-- a time from the unique key and merged (backend/query.py), which reads as many index
-- entries as before for a device's handful of metrics.
DROP INDEX IF EXISTS telemetry_readings_device_ts;
