-- vow embedded store, schema 1.
-- Times are milliseconds since the Unix epoch (UTC); JSON is stored as TEXT.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    max_pending INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT,              -- NULL for root keys
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL,     -- SHA-256 hex of the plaintext
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE queues (
    tenant_id               TEXT NOT NULL,
    name                    TEXT NOT NULL,
    paused                  INTEGER NOT NULL DEFAULT 0,
    concurrency_limit       INTEGER,
    group_concurrency_limit INTEGER,
    rate_per_second         REAL,
    rate_burst              INTEGER,
    max_pending             INTEGER,
    created_at              INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) WITHOUT ROWID;

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,  -- rowid; rows are large (payloads), so not WITHOUT ROWID
    id               TEXT NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    grp              TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    result           TEXT,
    last_error       TEXT,
    progress         TEXT,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    tags             TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    backoff          TEXT NOT NULL,
    callback_url     TEXT,
    lease_id         TEXT,
    lease_expires_at INTEGER,
    worker_id        TEXT,
    traceparent      TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT
);
-- Exactly what the lease query reads, only for available jobs.
CREATE INDEX jobs_lease ON jobs (tenant_id, queue, priority, run_at, id) WHERE state = 'available';
-- The promoter's and the reaper's scans.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_expiry ON jobs (lease_expires_at) WHERE state = 'running';
-- Idempotency is per tenant and queue.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Listing (newest first) and per-queue counts.
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);
CREATE INDEX jobs_queue_state ON jobs (tenant_id, queue, state, id);

CREATE TABLE job_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: SSE resumes from it
    tenant_id  TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    queue      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    detail     TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
