-- vow PostgreSQL store, schema 5: the queue counts of the jobs already there (expand
-- only; see migration 4).
--
-- Since migration 4 committed, every write to `jobs` has appended its deltas. One
-- statement sees one snapshot: it counts the jobs as of that snapshot and deletes the
-- deltas visible in it, which those counts already include; deltas committed after it
-- stay, for the roll-ups. Writers are not held off meanwhile. The scan of every job
-- takes as long as it takes (about 110 ms at 300,000 jobs), so no statement timeout.
SET LOCAL statement_timeout = 0;
WITH counted AS (DELETE FROM queue_count_deltas RETURNING 1)
INSERT INTO queue_counts (tenant_id, queue, state, n)
SELECT tenant_id, queue, state, count(*) FROM jobs GROUP BY tenant_id, queue, state;
