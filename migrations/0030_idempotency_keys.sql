-- Idempotency-Key (issue 15): the first answer to a request that carried the header, kept
-- 24 h per (API key, Idempotency-Key), so a re-send gets that answer and stores nothing again.
-- backend/ingest/idempotency.py is the only writer. A row is 'in_flight' while its first
-- request runs (owner, lease_until: a crashed owner's claim can be taken over after the lease),
-- then 'done' with the status and body that were answered.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope        text        NOT NULL,  -- the API key's id ('anonymous' for ANONYMOUS_DEVICES writers)
    idem_key     text        NOT NULL,
    fingerprint  bytea       NOT NULL,  -- sha256 of method, path, query, content headers and body
    state        text        NOT NULL CHECK (state IN ('in_flight', 'done')),
    owner        uuid        NOT NULL,
    lease_until  timestamptz NOT NULL,
    status       integer,
    content_type text,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, idem_key)
);

-- The expiry sweep (IdempotencyStore.purge_expired) deletes by this.
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);
