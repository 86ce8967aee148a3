-- vow PostgreSQL store, schema 4: counts kept per queue (expand only).
--
-- A queue's counts (`GET /v1/queues`, `GET /v1/queues/{queue}`) were a `GROUP BY state`
-- over every job of the queue: 21 ms at 30,000 jobs, and linear in the jobs retained.
-- Now they are kept as they change:
--
-- * Statement-level triggers on `jobs` append what each statement changed (per tenant,
--   queue and state, a signed number of jobs) to `queue_count_deltas`. A trigger
--   counts every writer: this release, a node of the previous release during a
--   rolling upgrade, and an operator's SQL. The table has no index and no key, so
--   concurrent writers never wait for each other on it.
-- * Each node's store rolls the deltas up into `queue_counts` about once a second (one
--   node at a time, under an advisory lock): it deletes the deltas it read and adds them
--   to the totals in one transaction.
-- * A read sums `queue_counts` and the deltas not yet rolled up, in one snapshot: exact.
--
-- The counts of the jobs already there are filled by migration 5, once the triggers
-- count every write: creating a trigger waits for the writes under way and holds new
-- ones off only until this migration commits, not for a scan of every job.

CREATE TABLE queue_counts (
    tenant_id TEXT NOT NULL,
    queue     TEXT NOT NULL,
    state     TEXT NOT NULL,
    n         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, queue, state)
);

CREATE TABLE queue_count_deltas (
    tenant_id TEXT NOT NULL,
    queue     TEXT NOT NULL,
    state     TEXT NOT NULL,
    n         BIGINT NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    -- A vacuum that gives back the table's empty end pages takes an exclusive lock for
    -- it, which would hold up every writer's trigger for a moment; the space is reused.
    vacuum_truncate = false
);

CREATE FUNCTION vow_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO queue_count_deltas (tenant_id, queue, state, n)
        SELECT tenant_id, queue, state, count(*) FROM new_rows GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO queue_count_deltas (tenant_id, queue, state, n)
        SELECT tenant_id, queue, state, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    ELSE
        -- Heartbeats and other updates that move no job between states add nothing.
        INSERT INTO queue_count_deltas (tenant_id, queue, state, n)
        SELECT tenant_id, queue, state, sum(d) FROM (
            SELECT tenant_id, queue, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT tenant_id, queue, state, -1 FROM old_rows
        ) AS moved
        GROUP BY 1, 2, 3
        HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vow_count_jobs();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vow_count_jobs();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vow_count_jobs();

-- `TRUNCATE jobs` (an operator starting over) leaves no job to count.
CREATE FUNCTION vow_count_no_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM queue_count_deltas;
    DELETE FROM queue_counts;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION vow_count_no_jobs();
