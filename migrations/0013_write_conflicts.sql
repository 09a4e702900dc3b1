-- telemetry_write() tells duplicates from conflicts, and keeps server-timed readings distinct.
--
-- Why (issue 10): ON CONFLICT (device_id, metric, ts) DO NOTHING counted every reading whose
-- key was taken as a re-send, whatever its value. Two lines of one body without a device
-- time (same time of receipt) were merged that way, and so was a reading whose value
-- differed from the stored one. Now, for a reading whose key is taken:
--   * same value (value and value_text both equal; float8 '=' has -0.0 = 0.0) -> duplicate,
--     nothing is written;
--   * a different value -> conflict: the stored value stays, the new reading goes to
--     telemetry_quarantine with the reason, and the caller gets it back to report;
--   * a server-timed reading (the message had no time; the server gave it the time of
--     receipt, see backend/parsing/server_time.py) whose key holds another request's
--     reading, or another reading of this batch -> moved to the next free microsecond.
--     Workers hand out microseconds independently, so two requests for one device on two
--     workers may get the same ones; they are different observations, never re-sends.
--     A key held by this same request is an earlier write of it (a retry after a lost
--     commit confirmation, a spool replay): a duplicate. The search skips the keys of the
--     batch and those it filled itself, so the only rows of this request it can meet are
--     from such an earlier write; requests are written whole, so then all of it is stored.
--
-- The document is the one of 0011, with two more fields per reading:
--   r   [device_id, metric, ts, value, value_text, received_at, request_id, position, server_timed]
--       position (the message's position in its body) goes to quarantine rows;
--       server_timed is true for a server-assigned time. The sink puts server-timed readings
--       after the others, so a device's own time wins a key over a server-assigned one.
--
-- Cost: the common case (nothing stored yet) is still one INSERT ... ON CONFLICT DO
-- NOTHING over the document. Only when some readings were not inserted does a second
-- statement classify them against the stored rows; moves are one INSERT per step, and
-- happen only on a cross-worker collision.
--
-- Returns rows (request, inserted, quarantined, conflicts), possibly several per request,
-- to be summed by the caller; conflicts is a JSON array of [ordinal in r (1-based), reason]
-- or NULL. Readings neither inserted nor quarantined were duplicates. The return type
-- changed (one more column), so the function is dropped and created again.
DROP FUNCTION IF EXISTS telemetry_write(jsonb, boolean);

CREATE FUNCTION telemetry_write(batch jsonb, check_types boolean)
RETURNS TABLE (req uuid, n_inserted bigint, n_quarantined bigint, conflicts jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    n_total bigint := jsonb_array_length(coalesce(batch -> 'r', '[]'));
    bad bigint[] := '{}';
    bad_rids jsonb;
    per_ins jsonb;
    n_ins bigint := 0;
    rest jsonb;
    mv record;
    k int;
    cand timestamptz;
    taken timestamptz[];
    moved text[] := '{}';
    occupant uuid;
    why text;
BEGIN
    IF n_total > 0 THEN
        IF check_types THEN
            -- First sight of a metric fixes its type; sorted so concurrent writers lock in one order.
            INSERT INTO telemetry_fields (name, value_type)
            SELECT e ->> 1, min(CASE WHEN e -> 4 = 'null' THEN 'number' ELSE 'text' END)
            FROM jsonb_array_elements(batch -> 'r') AS e
            GROUP BY 1 ORDER BY 1
            ON CONFLICT (name) DO NOTHING;

            -- Mistyped readings go to quarantine; their ordinals are left out of the insert.
            WITH b AS (
                SELECT x.i, e ->> 0 AS d, e ->> 1 AS m, (e ->> 3)::float8 AS v, e ->> 4 AS t,
                       (e ->> 5)::timestamptz AS rec, (e ->> 6)::uuid AS rid, (e ->> 7)::int AS pos,
                       f.value_type AS want
                FROM jsonb_array_elements(batch -> 'r') WITH ORDINALITY AS x(e, i)
                JOIN telemetry_fields f ON f.name = x.e ->> 1
                WHERE f.value_type <> CASE WHEN x.e -> 4 = 'null' THEN 'number' ELSE 'text' END
            ), q AS (
                INSERT INTO telemetry_quarantine (received_at, request_id, device_id, position, reason, raw)
                SELECT b.rec, b.rid, b.d, b.pos,
                       format('metric %s is %s; got %s', b.m, b.want, coalesce(b.t, b.v::text)),
                       format('%s:%s', b.m, coalesce(b.t, b.v::text))
                FROM b
            )
            SELECT coalesce(array_agg(b.i), '{}'), jsonb_agg(b.rid) INTO bad, bad_rids FROM b;

            IF bad_rids IS NOT NULL THEN
                RETURN QUERY SELECT (e #>> '{}')::uuid, 0::bigint, count(*), NULL::jsonb
                             FROM jsonb_array_elements(bad_rids) AS e GROUP BY 1;
            END IF;
        END IF;

        -- In document order: within a batch the first reading of a key wins it.
        WITH ins AS (
            INSERT INTO telemetry_readings AS tr
                (device_id, metric, ts, value, value_text, received_at, request_id)
            SELECT x.e ->> 0, x.e ->> 1, (x.e ->> 2)::timestamptz, (x.e ->> 3)::float8, x.e ->> 4,
                   (x.e ->> 5)::timestamptz, (x.e ->> 6)::uuid
            FROM jsonb_array_elements(batch -> 'r') WITH ORDINALITY AS x(e, i)
            WHERE x.i <> ALL (bad)
            ON CONFLICT (device_id, metric, ts) DO NOTHING
            RETURNING tr.request_id
        )
        SELECT jsonb_agg(jsonb_build_array(c.rid, c.n)), coalesce(sum(c.n), 0) INTO per_ins, n_ins
        FROM (SELECT ins.request_id AS rid, count(*) AS n FROM ins GROUP BY 1) c;

        IF per_ins IS NOT NULL THEN
            RETURN QUERY SELECT (e ->> 0)::uuid, (e ->> 1)::bigint, 0::bigint, NULL::jsonb
                         FROM jsonb_array_elements(per_ins) AS e;
        END IF;

        IF n_ins + cardinality(bad) < n_total THEN
            -- Some keys were taken: by stored rows, rows of concurrent writers (committed by
            -- now: ON CONFLICT waited for them), or earlier readings of this batch. This
            -- statement sees all of them. 'keep' needs nothing done (inserted just now, or a
            -- duplicate); only 'conflict', 'move' and 'missing' are carried on.
            WITH inp AS (
                SELECT x.i, e ->> 0 AS d, e ->> 1 AS m, (e ->> 2)::timestamptz AS ts, (e ->> 3)::float8 AS v,
                       e ->> 4 AS t, (e ->> 5)::timestamptz AS rec, (e ->> 6)::uuid AS rid,
                       (e ->> 7)::int AS pos, coalesce((e ->> 8)::boolean, false) AS s
                FROM jsonb_array_elements(batch -> 'r') WITH ORDINALITY AS x(e, i)
                WHERE x.i <> ALL (bad)
            ), ranked AS (
                SELECT inp.*, row_number() OVER (PARTITION BY inp.d, inp.m, inp.ts ORDER BY inp.i) AS rk FROM inp
            ), cls AS (
                SELECT r.i, r.d, r.m, r.ts, r.v, r.t, r.rec, r.rid, r.pos, tr.value AS sv, tr.value_text AS st,
                       CASE
                           WHEN tr.request_id IS NULL THEN 'missing'
                           WHEN r.s THEN CASE WHEN r.rk = 1 AND tr.request_id = r.rid THEN 'keep' ELSE 'move' END
                           WHEN tr.value IS NOT DISTINCT FROM r.v AND tr.value_text IS NOT DISTINCT FROM r.t
                               THEN 'keep'
                           ELSE 'conflict'
                       END AS kind
                FROM ranked r
                LEFT JOIN telemetry_readings tr ON tr.device_id = r.d AND tr.metric = r.m AND tr.ts = r.ts
            )
            SELECT jsonb_agg(to_jsonb(cls) ORDER BY cls.i) INTO rest FROM cls WHERE cls.kind <> 'keep';

            IF rest IS NOT NULL THEN
                RETURN QUERY
                WITH c AS (
                    SELECT c.*,
                           CASE WHEN c.kind = 'missing'
                                THEN 'not stored: its (device, metric, ts) was taken, then freed during the write; send it again'
                                ELSE format('conflict: (%s, %s, %s) already stored with value %s', c.d, c.m,
                                            to_char(c.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                            coalesce(quote_literal(c.st), c.sv::text))
                           END AS reason
                    FROM jsonb_to_recordset(rest) AS c(i bigint, d text, m text, ts timestamptz, v float8, t text,
                                                       rec timestamptz, rid uuid, pos int, sv float8, st text,
                                                       kind text)
                    WHERE c.kind IN ('conflict', 'missing')
                ), q AS (
                    INSERT INTO telemetry_quarantine (received_at, request_id, device_id, position, reason, raw)
                    SELECT c.rec, c.rid, c.d, c.pos, c.reason,
                           format('device_id:%s,ts:%s,%s:%s', c.d,
                                  to_char(c.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                  c.m, coalesce(c.t, c.v::text))
                    FROM c
                )
                SELECT c.rid, 0::bigint, count(*), jsonb_agg(jsonb_build_array(c.i, c.reason) ORDER BY c.i)
                FROM c GROUP BY c.rid;

                FOR mv IN SELECT * FROM jsonb_to_recordset(rest) AS c(i bigint, d text, m text, ts timestamptz,
                                                                     v float8, t text, rec timestamptz, rid uuid,
                                                                     pos int, kind text)
                         WHERE c.kind = 'move' ORDER BY c.i
                LOOP
                    SELECT array_agg((e ->> 2)::timestamptz) INTO taken
                    FROM jsonb_array_elements(batch -> 'r') AS e
                    WHERE e ->> 0 = mv.d AND e ->> 1 = mv.m;
                    k := 0;
                    LOOP
                        k := k + 1;
                        IF k > 1000 THEN
                            why := format('conflict: no free microsecond within 1 ms after %s for (%s, %s); send a ts',
                                          to_char(mv.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), mv.d, mv.m);
                            INSERT INTO telemetry_quarantine (received_at, request_id, device_id, position, reason, raw)
                            VALUES (mv.rec, mv.rid, mv.d, mv.pos, why, format('%s:%s', mv.m, coalesce(mv.t, mv.v::text)));
                            RETURN QUERY SELECT mv.rid, 0::bigint, 1::bigint, jsonb_build_array(jsonb_build_array(mv.i, why));
                            EXIT;
                        END IF;
                        cand := mv.ts + k * interval '1 microsecond';
                        CONTINUE WHEN cand = ANY (taken) OR (mv.d || E'\x1f' || mv.m || E'\x1f' || cand::text) = ANY (moved);
                        INSERT INTO telemetry_readings (device_id, metric, ts, value, value_text, received_at, request_id)
                        VALUES (mv.d, mv.m, cand, mv.v, mv.t, mv.rec, mv.rid)
                        ON CONFLICT (device_id, metric, ts) DO NOTHING;
                        IF FOUND THEN
                            moved := moved || (mv.d || E'\x1f' || mv.m || E'\x1f' || cand::text);
                            RETURN QUERY SELECT mv.rid, 1::bigint, 0::bigint, NULL::jsonb;
                            EXIT;
                        END IF;
                        SELECT tr.request_id INTO occupant FROM telemetry_readings tr
                        WHERE tr.device_id = mv.d AND tr.metric = mv.m AND tr.ts = cand;
                        EXIT WHEN occupant = mv.rid;  -- an earlier write of this request: a duplicate
                    END LOOP;
                END LOOP;
            END IF;
        END IF;

        IF check_types THEN
            -- Batches with check_types get no "l": the latest values come from the readings
            -- that passed the type check; on a tie the reading that won the key (first) wins.
            INSERT INTO device_latest AS l (device_id, metric, ts, value, value_text, received_at)
            SELECT DISTINCT ON (r.d, r.m) r.d, r.m, r.ts, r.v, r.t, r.rec
            FROM (SELECT x.i, e ->> 0 AS d, e ->> 1 AS m, (e ->> 2)::timestamptz AS ts, (e ->> 3)::float8 AS v,
                         e ->> 4 AS t, (e ->> 5)::timestamptz AS rec
                  FROM jsonb_array_elements(batch -> 'r') WITH ORDINALITY AS x(e, i)
                  WHERE x.i <> ALL (bad)) r
            ORDER BY r.d, r.m, r.ts DESC, r.i
            ON CONFLICT (device_id, metric) DO UPDATE
                SET ts = excluded.ts, value = excluded.value, value_text = excluded.value_text,
                    received_at = excluded.received_at
                WHERE excluded.ts > l.ts;
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
