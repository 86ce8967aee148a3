-- vow:no-transaction
-- vow PostgreSQL store, schema 3: retention (expand only).
-- Pruning deletes finished jobs per state, oldest first, in small batches:
-- `state = '...' AND finished_at < $1 ORDER BY finished_at LIMIT n FOR UPDATE SKIP LOCKED`
-- walks this index. Only finished jobs have a `finished_at`, so the pending and running
-- jobs are not in it and their transitions never touch it.
-- Built CONCURRENTLY (no lock that blocks writes), so this migration runs outside a
-- transaction; the DROP first removes an invalid index that an interrupted build left.
DROP INDEX CONCURRENTLY IF EXISTS jobs_finished;
CREATE INDEX CONCURRENTLY jobs_finished ON jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
