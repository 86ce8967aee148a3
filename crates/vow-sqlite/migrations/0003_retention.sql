-- vow embedded store, schema 3: retention (expand only).
-- Pruning deletes finished jobs per state, oldest first: `state = ? AND finished_at < ?
-- ORDER BY finished_at LIMIT n` walks this index. Only finished jobs have a
-- `finished_at`, so pending and running jobs are not in it and their transitions
-- never touch it.
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
