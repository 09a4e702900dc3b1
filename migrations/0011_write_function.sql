-- One flush = one statement: the sink calls telemetry_write() with the whole batch as one
-- JSON document, in autocommit, so a flush is a single round trip and a single transaction.
--
-- Why (docs/benchmarks.md): the flush used to be BEGIN, a staging-table COPY, four
-- statements, a raw-payload COPY and COMMIT: seven round trips, each planned anew. With
-- small group commits (a few single-message requests) that fixed cost dominated both the
-- PostgreSQL CPU and the flush's latency; every round trip also made the flusher thread
-- wait for the GIL again. PL/pgSQL keeps its statements' plans for the session, so a
-- flush is executed, not re-planned. One JSON document instead of one array parameter per
-- column: orjson writes it in C, while psycopg dumps array parameters element by element in
-- Python, which was 12% of a worker's CPU with small flushes (yappi).
--
-- The document (arrays of arrays, so no key is repeated per row):
--   r   readings      [device_id, metric, ts, value, value_text, received_at, request_id]
--   w   raw payloads  [request_id, received_at, device_id, parser_version, data_source,
--                      content_type, payload]
--   q   rejected      [received_at, request_id, device_id, position, reason, raw]
--   d   devices seen  [device_id, received_at]
--   l   latest value per (device, metric) in the batch
--                     [device_id, metric, ts, value, value_text, received_at]
--
-- device_latest is kept here, from "l", instead of by the statement trigger of 0002: the
-- trigger captured every inserted row in a transition table and sorted them again, about
-- 2 us of PostgreSQL CPU per reading on the COPY path, where the worker finds the latest
-- reading of each (device, metric) of its batch for a fraction of that. An older reading
-- (backlog replay) never replaces a newer one; a re-sent duplicate changes nothing, as
-- its time is not newer than the stored latest. Batches with check_types get no "l": the
-- latest values come from the readings that passed the type check, in SQL.
--
-- check_types: the worker's catalogue already confirmed every metric's type (the request
-- path registers a new metric before it acknowledges), so the catalogue insert and the
-- type check run only for batches the worker could not confirm (replayed spool records,
-- readings accepted while the database was unreachable). A reading whose type contradicts
-- the catalogue goes to telemetry_quarantine, never silently away.
--
-- Returns one row per request: how many of its readings were new and how many were
-- quarantined (the rest were duplicates of stored readings). Big batches whose types are
-- confirmed come without "r": the sink COPYs them straight into telemetry_readings in the
-- same transaction and calls this for the rest.
CREATE OR REPLACE FUNCTION telemetry_write(batch jsonb, check_types boolean)
RETURNS TABLE (req uuid, n_inserted bigint, n_quarantined bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_array_length(coalesce(batch -> 'r', '[]')) > 0 THEN
        IF check_types THEN
            -- First sight of a metric fixes its type; sorted so concurrent writers lock in one order.
            INSERT INTO telemetry_fields (name, value_type)
            SELECT e ->> 1, min(CASE WHEN e -> 4 = 'null' THEN 'number' ELSE 'text' END)
            FROM jsonb_array_elements(batch -> 'r') AS e
            GROUP BY 1 ORDER BY 1
            ON CONFLICT (name) DO NOTHING;

            RETURN QUERY
            WITH u AS (
                SELECT r.*, f.value_type = CASE WHEN r.t IS NULL THEN 'number' ELSE 'text' END AS ok,
                       f.value_type AS want
                FROM (SELECT e ->> 0 AS d, e ->> 1 AS m, (e ->> 2)::timestamptz AS ts,
                             (e ->> 3)::float8 AS v, e ->> 4 AS t, (e ->> 5)::timestamptz AS rec,
                             (e ->> 6)::uuid AS rid
                      FROM jsonb_array_elements(batch -> 'r') AS e) r
                JOIN telemetry_fields f ON f.name = r.m
            ), bad AS (
                INSERT INTO telemetry_quarantine (received_at, request_id, device_id, reason, raw)
                SELECT u.rec, u.rid, u.d,
                       format('metric %s is %s; got %s', u.m, u.want, coalesce(u.t, u.v::text)),
                       format('%s:%s', u.m, coalesce(u.t, u.v::text))
                FROM u WHERE NOT u.ok
                RETURNING request_id
            ), ins AS (
                INSERT INTO telemetry_readings AS tr
                    (device_id, metric, ts, value, value_text, received_at, request_id)
                SELECT u.d, u.m, u.ts, u.v, u.t, u.rec, u.rid FROM u WHERE u.ok
                ON CONFLICT (device_id, metric, ts) DO NOTHING
                RETURNING tr.request_id
            ), counted AS (
                SELECT ins.request_id AS rid, 1 AS i, 0 AS q FROM ins
                UNION ALL SELECT bad.request_id, 0, 1 FROM bad
            )
            SELECT c.rid, sum(c.i)::bigint, sum(c.q)::bigint FROM counted c GROUP BY c.rid;

            INSERT INTO device_latest AS l (device_id, metric, ts, value, value_text, received_at)
            SELECT DISTINCT ON (r.d, r.m) r.d, r.m, r.ts, r.v, r.t, r.rec
            FROM (SELECT e ->> 0 AS d, e ->> 1 AS m, (e ->> 2)::timestamptz AS ts, (e ->> 3)::float8 AS v,
                         e ->> 4 AS t, (e ->> 5)::timestamptz AS rec
                  FROM jsonb_array_elements(batch -> 'r') AS e) r
            JOIN telemetry_fields f
              ON f.name = r.m AND f.value_type = CASE WHEN r.t IS NULL THEN 'number' ELSE 'text' END
            ORDER BY r.d, r.m, r.ts DESC
            ON CONFLICT (device_id, metric) DO UPDATE
                SET ts = excluded.ts, value = excluded.value, value_text = excluded.value_text,
                    received_at = excluded.received_at
                WHERE excluded.ts > l.ts;
        ELSE
            RETURN QUERY
            WITH ins AS (
                INSERT INTO telemetry_readings AS tr
                    (device_id, metric, ts, value, value_text, received_at, request_id)
                SELECT e ->> 0, e ->> 1, (e ->> 2)::timestamptz, (e ->> 3)::float8, e ->> 4,
                       (e ->> 5)::timestamptz, (e ->> 6)::uuid
                FROM jsonb_array_elements(batch -> 'r') AS e
                ON CONFLICT (device_id, metric, ts) DO NOTHING
                RETURNING tr.request_id
            )
            SELECT ins.request_id, count(*), 0::bigint FROM ins GROUP BY ins.request_id;
        END IF;
    END IF;

    IF jsonb_array_length(coalesce(batch -> 'l', '[]')) > 0 THEN
        -- Sorted so concurrent writers lock the rows in one order.
        INSERT INTO device_latest AS l (device_id, metric, ts, value, value_text, received_at)
        SELECT e ->> 0, e ->> 1, (e ->> 2)::timestamptz, (e ->> 3)::float8, e ->> 4, (e ->> 5)::timestamptz
        FROM jsonb_array_elements(batch -> 'l') AS e
        ORDER BY 1, 2
        ON CONFLICT (device_id, metric) DO UPDATE
            SET ts = excluded.ts, value = excluded.value, value_text = excluded.value_text,
                received_at = excluded.received_at
            WHERE excluded.ts > l.ts;
    END IF;

    IF jsonb_array_length(coalesce(batch -> 'd', '[]')) > 0 THEN
        -- Sorted so concurrent writers lock device rows in one order (no deadlocks).
        INSERT INTO devices AS dv (device_id, first_seen, last_seen)
        SELECT e ->> 0, min((e ->> 1)::timestamptz), max((e ->> 1)::timestamptz)
        FROM jsonb_array_elements(batch -> 'd') AS e
        GROUP BY 1 ORDER BY 1
        ON CONFLICT (device_id) DO UPDATE SET last_seen = greatest(dv.last_seen, excluded.last_seen);
    END IF;

    IF jsonb_array_length(coalesce(batch -> 'w', '[]')) > 0 THEN
        -- ON CONFLICT: a write whose commit was not confirmed (connection lost) is retried.
        INSERT INTO telemetry_raw (request_id, received_at, device_id, parser_version, data_source,
                                   content_type, payload)
        SELECT (e ->> 0)::uuid, (e ->> 1)::timestamptz, e ->> 2, e ->> 3, e ->> 4, e ->> 5, e ->> 6
        FROM jsonb_array_elements(batch -> 'w') AS e
        ON CONFLICT (request_id) DO NOTHING;
    END IF;

    IF jsonb_array_length(coalesce(batch -> 'q', '[]')) > 0 THEN
        INSERT INTO telemetry_quarantine (received_at, request_id, device_id, position, reason, raw)
        SELECT (e ->> 0)::timestamptz, (e ->> 1)::uuid, e ->> 2, (e ->> 3)::int, e ->> 4, e ->> 5
        FROM jsonb_array_elements(batch -> 'q') AS e;
    END IF;
END $$;

DROP TRIGGER IF EXISTS telemetry_readings_latest ON telemetry_readings;
DROP FUNCTION IF EXISTS telemetry_device_latest();
