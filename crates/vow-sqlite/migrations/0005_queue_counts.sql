-- vow embedded store, schema 5: counts kept per queue, no index that every transition
-- rewrites for listing.
--
-- `jobs_queue_state (tenant_id, queue, state, id)` served two readers: the queue's
-- counts (`GROUP BY state`, a walk of every job of the queue at each `GET /v1/queues`:
-- 334 ms at 300,000 jobs) and listing by state. Every transition deleted and inserted
-- its entry. Now:
--
-- * `queue_counts` holds each queue's count of jobs per state, kept by the store in the
--   transaction that changes them (one row per queue and state; rows may hold 0).
-- * `jobs_queue (tenant_id, queue, id)` lists a queue's jobs newest first; it never
--   changes after the insert. Listing by state walks it and skips the other states,
--   except for the states a queue holds few of and people look for: `jobs_parked`
--   covers scheduled, dead and cancelled jobs, which only an enqueue with a delay, a
--   retry's backoff, a death or a cancel touch. Running jobs are listed from
--   `jobs_expiry`, and available ones from `jobs_lease` when there are not many.
CREATE TABLE queue_counts (
    tenant_id TEXT NOT NULL,
    queue     TEXT NOT NULL,
    state     TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, queue, state)
) WITHOUT ROWID;
INSERT INTO queue_counts (tenant_id, queue, state, n)
    SELECT tenant_id, queue, state, COUNT(*) FROM jobs GROUP BY tenant_id, queue, state;
CREATE INDEX jobs_queue ON jobs (tenant_id, queue, id);
CREATE INDEX jobs_parked ON jobs (tenant_id, queue, state, id)
    WHERE state IN ('scheduled', 'dead', 'cancelled');
DROP INDEX jobs_queue_state;
