-- vow PostgreSQL store, schema 2: completion notices (webhooks).
-- Expand only: new tables, nothing existing changes. Same shape as the embedded store's,
-- except that lists are arrays (`events`, `queues`) so the outbox insert can join them.

-- Tenant-wide subscriptions.
CREATE TABLE webhooks (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    url                 TEXT NOT NULL,
    events              TEXT[] NOT NULL,  -- notice types
    queues              TEXT[],           -- NULL: every queue
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at BIGINT,
    created_at          BIGINT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at);

-- Per-tenant secret signing per-job callback_url notices.
CREATE TABLE callback_secrets (
    tenant_id           TEXT PRIMARY KEY,
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at BIGINT,
    updated_at          BIGINT NOT NULL
);

-- The outbox: one row per notice per target, written in the job's transition. Updated
-- a few times in its life (claim, outcome): room for HOT updates; `next_attempt_at` is
-- the only indexed column that changes, in a partial index rows leave once settled.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,  -- webhook-id, time-sortable
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    webhook_id      TEXT,              -- NULL: the job's callback_url
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    endpoint        TEXT NOT NULL,     -- origin of url: breaker and concurrency cap
    body            TEXT NOT NULL,
    traceparent     TEXT,              -- the job's W3C trace context, sent as a header
    state           TEXT NOT NULL,     -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    round_start     INTEGER NOT NULL DEFAULT 0,  -- attempts when the current round began
    next_attempt_at BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
) WITH (fillfactor = 80);
-- The claim's ORDER BY (next_attempt_at, id): a batch of notices shares one
-- next_attempt_at, so `id` in the key lets `LIMIT n` stop after n entries.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (tenant_id, job_id, id);
CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id) WHERE webhook_id IS NOT NULL;
CREATE INDEX deliveries_tenant ON deliveries (tenant_id, id);
-- Retention: settled deliveries by age (the pruner's scan); pending ones are not in it.
CREATE INDEX deliveries_settled ON deliveries (state, created_at) WHERE state <> 'pending';

-- The delivery log.
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    status      INTEGER,
    latency_ms  BIGINT NOT NULL,
    error       TEXT,
    response    TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- Health of each receiver, per tenant (one tenant's failures never hold back another's).
CREATE TABLE endpoints (
    tenant_id  TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    failures   INTEGER NOT NULL DEFAULT 0,
    open_until BIGINT,
    PRIMARY KEY (tenant_id, endpoint)
) WITH (fillfactor = 70);
