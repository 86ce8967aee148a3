//! Each queue's count of jobs per state (schemas 4 and 5): triggers on `jobs` append
//! what each statement changed to `queue_count_deltas`; [`roll_up`] folds those deltas
//! into `queue_counts` about once a second; [`read`] adds the two up in one snapshot, so
//! a count is exact whatever the roll-ups have done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool};
use vow_core::api::QueueCounts;
use vow_core::TenantId;
use vow_store::StoreResult;

use crate::internal;
use crate::jobs::query;

/// How often each node tries to roll the deltas up (one node at a time does).
const ROLL_UP_EVERY: Duration = Duration::from_secs(1);

/// Least time between two `VACUUM`s of the deltas after roll-ups. The roll-up deletes
/// every delta it folds; vacuuming the small table now and then keeps it (and the reads
/// that scan it) small between the visits of autovacuum, which come at most once a
/// minute per database by default.
const VACUUM_EVERY: Duration = Duration::from_secs(10);

/// Key of the advisory lock one roll-up at a time holds ("vow-cnts").
const ROLL_UP_LOCK: i64 = 0x766f_772d_636e_7473;

/// Folds the deltas into the totals in one statement (its own transaction), if no other
/// node is doing the same (then nothing happens). Returns the number of deltas folded.
const ROLL_UP_SQL: &str = "WITH lock AS (SELECT pg_try_advisory_xact_lock($1) AS held), \
     gone AS (DELETE FROM queue_count_deltas WHERE (SELECT held FROM lock) \
              RETURNING tenant_id, queue, state, n), \
     folded AS (INSERT INTO queue_counts AS c (tenant_id, queue, state, n) \
                SELECT tenant_id, queue, state, sum(n) FROM gone \
                GROUP BY tenant_id, queue, state ORDER BY tenant_id, queue, state \
                ON CONFLICT (tenant_id, queue, state) DO UPDATE SET n = c.n + excluded.n \
                RETURNING 1) \
     SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded)";

/// A tenant's counts (`$1`), of one queue (`$2`) or of all (`$2` NULL): the totals plus
/// the deltas not yet folded into them, read in one snapshot.
const READ_SQL: &str = "SELECT queue, state, sum(n)::int8 FROM ( \
       SELECT queue, state, n FROM queue_counts \
       WHERE tenant_id = $1 AND ($2::text IS NULL OR queue = $2) \
       UNION ALL \
       SELECT queue, state, n FROM queue_count_deltas \
       WHERE tenant_id = $1 AND ($2::text IS NULL OR queue = $2)) AS c \
     GROUP BY queue, state";

/// The counts of `tenant`'s queues (only `queue` if given), by queue name.
pub(crate) async fn read(
    c: &impl GenericClient,
    tenant: &TenantId,
    queue: Option<&str>,
) -> StoreResult<HashMap<String, QueueCounts>> {
    let mut out: HashMap<String, QueueCounts> = HashMap::new();
    for r in query(c, READ_SQL, &[&tenant.as_str(), &queue]).await? {
        let state: &str = r.get(1);
        let n: i64 = r.get(2);
        out.entry(r.get(0))
            .or_default()
            .add(state.parse().map_err(internal)?, n.max(0) as u64);
    }
    Ok(out)
}

/// Folds the deltas written so far into the totals, unless another roll-up is running;
/// returns how many deltas it folded.
pub(crate) async fn roll_up(c: &impl GenericClient) -> StoreResult<u64> {
    let rows = query(c, ROLL_UP_SQL, &[&ROLL_UP_LOCK]).await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
}

/// Rolls the deltas up every [`ROLL_UP_EVERY`] until `stop`'s sender is gone, and
/// vacuums the deltas table after roll-ups at most every [`VACUUM_EVERY`].
pub(crate) async fn roll_up_loop(pool: Pool, mut stop: tokio::sync::watch::Receiver<()>) {
    let mut tick = tokio::time::interval(ROLL_UP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_vacuum = Instant::now();
    let mut folded_since = 0u64;
    // Consecutive failed rounds: the first is logged as a warning, then one a minute,
    // since deltas that are never folded make every read of the counts slower.
    let mut failing = 0u32;
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let rolled = match pool.get().await {
            Ok(c) => roll_up(&c).await.map(|n| (c, n)),
            Err(e) => Err(crate::pool_err(e)),
        };
        let (c, n) = match rolled {
            Ok(ok) => ok,
            Err(e) => {
                if failing.is_multiple_of(60) {
                    tracing::warn!(error = %e, failed_rounds = failing + 1, "could not roll up the queue counts; reads of the counts grow slower until it can");
                }
                failing = failing.saturating_add(1);
                continue;
            }
        };
        if failing > 0 {
            tracing::info!(failed_rounds = failing, "queue counts rolled up again");
            failing = 0;
        }
        folded_since += n;
        if folded_since > 0 && last_vacuum.elapsed() >= VACUUM_EVERY {
            if let Err(e) = c.batch_execute("VACUUM queue_count_deltas").await {
                tracing::debug!(error = %e, "could not vacuum the queue count deltas");
            }
            last_vacuum = Instant::now();
            folded_since = 0;
        }
    }
}
