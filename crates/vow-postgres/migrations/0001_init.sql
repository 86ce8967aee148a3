-- vow PostgreSQL store, schema 1.
-- Times are milliseconds since the Unix epoch (UTC, BIGINT), as in the embedded store;
-- JSON documents are TEXT written and read by vow (only `tags` is ever looked into).
-- See docs/postgres.md for why the tables and indexes look the way they do.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    max_pending BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT,              -- NULL for root keys
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL,     -- SHA-256 hex of the plaintext
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE queues (
    tenant_id               TEXT NOT NULL,
    name                    TEXT NOT NULL,
    paused                  BOOLEAN NOT NULL DEFAULT false,
    concurrency_limit       BIGINT,
    group_concurrency_limit BIGINT,
    rate_per_second         DOUBLE PRECISION,
    rate_burst              BIGINT,
    max_pending             BIGINT,
    created_at              BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- The hot table: every transition updates a row here. fillfactor 70 leaves room on
-- each page so the new row version lands beside the old one (HOT for heartbeats, which
-- touch no indexed column; same-page for transitions), and autovacuum is told to visit
-- it after 2 % of its rows changed instead of the default 20 %.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         SMALLINT NOT NULL,
    grp              TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_id         TEXT,
    lease_expires_at BIGINT,
    worker_id        TEXT,
    timeout_ms       BIGINT NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT,
    callback_url     TEXT,
    traceparent      TEXT,
    backoff          TEXT NOT NULL,
    tags             TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    last_error       TEXT,
    progress         TEXT,
    result           TEXT,
    payload          TEXT NOT NULL
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02
);
-- Exactly what the lease query reads, only for available jobs (SKIP LOCKED walks it).
CREATE INDEX jobs_lease ON jobs (tenant_id, queue, priority, run_at, id) WHERE state = 'available';
-- The promoter's scan.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled';
-- The reaper's scan: running jobs, keyed by the immutable id so that a heartbeat (which
-- moves lease_expires_at) changes no indexed column and stays a HOT update.
CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';
-- Idempotency is per tenant and queue.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Listing (newest first) and per-queue counts.
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);
CREATE INDEX jobs_queue_state ON jobs (tenant_id, queue, state);

-- Append-only log; seq comes from one sequence, so it increases across all nodes.
CREATE TABLE job_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    queue      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    at         BIGINT NOT NULL,
    detail     TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
-- Replay of a tenant's stream (SSE resume).
CREATE INDEX job_events_tenant ON job_events (tenant_id, seq);

-- Leader leases of the maintenance chores: one row per duty, renewed by its holder.
CREATE TABLE leaders (
    name       TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
