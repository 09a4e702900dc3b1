-- Core telemetry schema: narrow readings partitioned by measurement time.
-- Why narrow (one row per device, metric, time) instead of the seed's 40-column table:
-- gateways send whatever fields they have, new sensors appear without a migration, and
-- the idempotency key (device_id, metric, ts) makes a re-sent batch harmless.

CREATE TABLE IF NOT EXISTS telemetry_readings (
    device_id   text             NOT NULL,
    metric      text             NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision,
    value_text  text,
    received_at timestamptz      NOT NULL DEFAULT now(),
    request_id  uuid,
    CONSTRAINT telemetry_readings_one_value CHECK ((value IS NULL) <> (value_text IS NULL)),
    CONSTRAINT telemetry_readings_key UNIQUE (device_id, metric, ts)
) PARTITION BY RANGE (ts);

-- A reading whose clock is far off still lands somewhere; maintenance moves rows out of
-- here when it creates the month's partition.
CREATE TABLE IF NOT EXISTS telemetry_readings_default
    PARTITION OF telemetry_readings DEFAULT;

-- BRIN: tiny and right for append-mostly time data (range scans over all devices).
CREATE INDEX IF NOT EXISTS telemetry_readings_ts_brin
    ON telemetry_readings USING brin (ts) WITH (pages_per_range = 32);
-- "latest readings of one device" (any metric); the unique key serves device+metric+range.
CREATE INDEX IF NOT EXISTS telemetry_readings_device_ts
    ON telemetry_readings (device_id, ts DESC);

-- Create monthly partitions covering [from_month, from_month + months); rows that had
-- landed in the default partition for that range are moved into the new partition.
CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(from_month date, months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m date;
    part text;
    created int := 0;
BEGIN
    -- Workers run this concurrently at start-up; one at a time avoids duplicate-table races.
    PERFORM pg_advisory_xact_lock(2116419586);
    FOR i IN 0 .. months - 1 LOOP
        m := (date_trunc('month', from_month) + make_interval(months => i))::date;
        part := format('telemetry_readings_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE telemetry_readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM telemetry_readings_default WHERE ts >= %L AND ts < %L RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved',
                m, (m + interval '1 month')::date, part);
            EXECUTE format('ALTER TABLE telemetry_readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, m, (m + interval '1 month')::date);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

-- Devices: registered on first sight.
CREATE TABLE IF NOT EXISTS devices (
    device_id  text PRIMARY KEY,
    name       text,
    location   text,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Field catalogue: one type per metric, seeded with the drone and Nivus fields.
CREATE TABLE IF NOT EXISTS telemetry_fields (
    name        text PRIMARY KEY,
    value_type  text NOT NULL CHECK (value_type IN ('number', 'text')),
    description text,
    unit        text,
    aliases     text[] NOT NULL DEFAULT '{}',
    first_seen  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO telemetry_fields (name, value_type, description, unit, aliases) VALUES
    ('roll',        'number', 'Roll angle in degrees', 'deg', '{roll_degrees}'),
    ('pitch',       'number', 'Pitch angle in degrees', 'deg', '{pitch_degrees}'),
    ('yaw',         'number', 'Yaw angle in degrees', 'deg', '{yaw_degrees,heading}'),
    ('alt',         'number', 'Altitude in meters', 'm', '{altitude,gps_altitude_m}'),
    ('gps_lat',     'number', 'GPS latitude', 'deg', '{lat,latitude,gps_latitude}'),
    ('gps_lon',     'number', 'GPS longitude', 'deg', '{lon,lng,longitude,gps_longitude}'),
    ('bat_v',       'number', 'Battery voltage', 'V', '{battery_voltage_v,battery_voltage,battery}'),
    ('bat_a',       'number', 'Battery current', 'A', '{battery_current_a}'),
    ('armed',       'number', 'Armed status (0/1)', NULL, '{}'),
    ('flight_mode', 'text',   'Flight mode', NULL, '{}'),
    ('flight_time_seconds', 'number', 'Flight time', 's', '{}'),
    ('motor1_pwm',  'number', 'Motor 1 output', 'us', '{}'),
    ('motor2_pwm',  'number', 'Motor 2 output', 'us', '{}'),
    ('motor3_pwm',  'number', 'Motor 3 output', 'us', '{}'),
    ('motor4_pwm',  'number', 'Motor 4 output', 'us', '{}'),
    ('flow_rate',   'number', 'Nivus flow rate (registers 0-1, float32)', 'l/s', '{}'),
    ('totalizer',   'number', 'Nivus totalizer (registers 2-3, float32)', 'm3', '{}'),
    ('temperature', 'number', 'Nivus medium temperature (registers 4-5, float32)', 'degC', '{}'),
    ('status',      'number', 'Nivus status word (register 10)', NULL, '{}')
ON CONFLICT (name) DO NOTHING;

-- The raw payload, parser version and source, as the seed keeps them for debugging.
CREATE TABLE IF NOT EXISTS telemetry_raw (
    request_id     uuid PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    device_id      text,
    parser_version text NOT NULL,
    data_source    text NOT NULL,
    content_type   text,
    payload        text NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_raw_received ON telemetry_raw USING brin (received_at);

-- Input we could not accept, kept so nothing sent is silently gone.
CREATE TABLE IF NOT EXISTS telemetry_quarantine (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    request_id  uuid,
    device_id   text,
    position    int,
    reason      text NOT NULL,
    raw         text
);
