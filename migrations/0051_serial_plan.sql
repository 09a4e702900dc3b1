-- A statement that calls a PARALLEL UNSAFE function is planned without parallel workers
-- (PostgreSQL's documented rule, "When Can Parallel Query Be Used?"). Rollup reads call this
-- one (backend/store/aggregates.py): the same effect as SET LOCAL
-- max_parallel_workers_per_gather = 0, for that statement only, without the transaction a
-- SET LOCAL needs (BEGIN, SET, the read, COMMIT: four round trips instead of one). Works
-- through transaction-mode poolers too: nothing is set on the session.
-- IMMUTABLE with no arguments: the planner folds the call to true, so running it costs nothing.
CREATE OR REPLACE FUNCTION telemetry_serial_plan() RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL UNSAFE AS 'SELECT true';
