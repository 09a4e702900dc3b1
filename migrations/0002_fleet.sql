-- Gateway fleet: API keys, device metadata and latest values, alert rules and alerts.

-- API keys. Only a SHA-256 of the key is stored (the key has 256 random bits, so a plain
-- hash is enough; no salt or slow hash is needed for a non-guessable secret). `prefix`
-- (the first characters) only helps a person recognise a key in `keys list`.
CREATE TABLE IF NOT EXISTS api_keys (
    id           text PRIMARY KEY,
    name         text        NOT NULL,
    key_hash     text        NOT NULL UNIQUE,
    prefix       text        NOT NULL,
    scopes       text[]      NOT NULL,
    devices      text[],                      -- NULL: any device; else only these
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    -- Bumped by every change that matters for access (create, revoke, edit); each worker
    -- polls rows changed since its last look, so a revocation reaches every worker fast.
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT api_keys_scopes CHECK (cardinality(scopes) > 0
                                      AND scopes <@ ARRAY['ingest', 'read', 'admin']::text[]),
    CONSTRAINT api_keys_hash_hex CHECK (key_hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX IF NOT EXISTS api_keys_updated ON api_keys (updated_at);

-- Device metadata an admin edits (name, location and metadata exist since 0001).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS description text;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS device_type text;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS updated_at timestamptz;

-- Latest value of every metric of every device, kept by a statement trigger on the
-- readings table: one upsert per write statement, only for rows actually inserted (a
-- re-sent duplicate changes nothing), and an older reading (backlog replay) never
-- replaces a newer one. Rows are upserted in (device_id, metric) order so concurrent
-- writers take the row locks in one order.
CREATE TABLE IF NOT EXISTS device_latest (
    device_id   text        NOT NULL,
    metric      text        NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision,
    value_text  text,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric)
) WITH (fillfactor = 50);  -- room on each page for HOT updates: every write rewrites these rows

CREATE OR REPLACE FUNCTION telemetry_device_latest() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_latest AS l (device_id, metric, ts, value, value_text, received_at)
    SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, value_text, received_at
    FROM new_rows
    ORDER BY device_id, metric, ts DESC
    ON CONFLICT (device_id, metric) DO UPDATE
        SET ts = excluded.ts, value = excluded.value, value_text = excluded.value_text,
            received_at = excluded.received_at
        WHERE excluded.ts > l.ts;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS telemetry_readings_latest ON telemetry_readings;
CREATE TRIGGER telemetry_readings_latest
    AFTER INSERT ON telemetry_readings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION telemetry_device_latest();

-- Readings stored before this migration.
INSERT INTO device_latest (device_id, metric, ts, value, value_text, received_at)
SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, value_text, received_at
FROM telemetry_readings
ORDER BY device_id, metric, ts DESC
ON CONFLICT (device_id, metric) DO NOTHING;

-- Alert rules. `device_id` NULL: every device. Threshold rules watch one metric:
--   above   value > threshold_high        (clears at value <= threshold_high - hysteresis)
--   below   value < threshold_low         (clears at value >= threshold_low + hysteresis)
--   outside value outside [low, high]     (clears inside [low + h, high - h])
-- and open only after the breach lasted duration_s (measurement time). `silent` opens
-- when a device sent nothing for duration_s seconds.
CREATE TABLE IF NOT EXISTS alert_rules (
    id             bigserial PRIMARY KEY,
    rule_name      text        NOT NULL,
    device_id      text,
    metric         text,
    rule_type      text        NOT NULL,
    threshold_low  double precision,
    threshold_high double precision,
    hysteresis     double precision NOT NULL DEFAULT 0,
    duration_s     integer     NOT NULL DEFAULT 0,
    auto_resolve   boolean     NOT NULL DEFAULT true,
    severity       text        NOT NULL DEFAULT 'warning',
    is_enabled     boolean     NOT NULL DEFAULT true,
    webhook_url    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_type CHECK (rule_type IN ('above', 'below', 'outside', 'silent')),
    CONSTRAINT alert_rules_severity CHECK (severity IN ('info', 'warning', 'critical')),
    CONSTRAINT alert_rules_hysteresis CHECK (hysteresis >= 0),
    CONSTRAINT alert_rules_duration CHECK (duration_s >= 0),
    CONSTRAINT alert_rules_shape CHECK (
        (rule_type = 'above' AND metric IS NOT NULL AND threshold_high IS NOT NULL)
        OR (rule_type = 'below' AND metric IS NOT NULL AND threshold_low IS NOT NULL)
        OR (rule_type = 'outside' AND metric IS NOT NULL AND threshold_low IS NOT NULL
            AND threshold_high IS NOT NULL AND threshold_low <= threshold_high)
        OR (rule_type = 'silent' AND duration_s > 0))
);

CREATE TABLE IF NOT EXISTS alerts (
    id              bigserial PRIMARY KEY,
    rule_id         bigint REFERENCES alert_rules (id) ON DELETE SET NULL,
    device_id       text        NOT NULL,
    metric          text,
    alert_type      text        NOT NULL,
    severity        text        NOT NULL,
    message         text        NOT NULL,
    threshold_value double precision,
    actual_value    double precision,
    triggered_at    timestamptz NOT NULL,      -- measurement time of the triggering reading
    created_at      timestamptz NOT NULL DEFAULT now(),
    is_resolved     boolean     NOT NULL DEFAULT false,
    resolved_at     timestamptz,
    resolved_by     text,
    resolved_value  double precision,
    notified_at     timestamptz,               -- webhook delivered
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
-- At most one open alert per rule and device.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (rule_id, device_id) WHERE NOT is_resolved;
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device_id, is_resolved, created_at DESC);
CREATE INDEX IF NOT EXISTS alerts_created ON alerts (created_at DESC);
CREATE INDEX IF NOT EXISTS alerts_rule_device ON alerts (rule_id, device_id, created_at DESC);

-- Where each (rule, device) stands, shared by every worker (rows locked while evaluated).
CREATE TABLE IF NOT EXISTS alert_state (
    rule_id    bigint      NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id  text        NOT NULL,
    state      text        NOT NULL DEFAULT 'normal',
    since      timestamptz,                    -- breach start (pending/firing)
    last_ts    timestamptz,                    -- newest reading evaluated
    last_value double precision,
    PRIMARY KEY (rule_id, device_id),
    CONSTRAINT alert_state_state CHECK (state IN ('normal', 'pending', 'firing'))
);

-- Periodic jobs that must run once across all workers and instances: a lease row each.
CREATE TABLE IF NOT EXISTS fleet_jobs (
    name        text PRIMARY KEY,
    last_run_at timestamptz NOT NULL DEFAULT '2000-01-01',
    owner       text
);
INSERT INTO fleet_jobs (name) VALUES ('alert_silence') ON CONFLICT (name) DO NOTHING;
