//! The pruner: deletes finished jobs (`completed`, `cancelled`, `dead`), with their
//! events and idempotency keys, and settled completion notices (delivered ones by the
//! `completed` retention, dead ones by the `dead` one), once they are older than their retention
//! (`[retention]` in the configuration). Runs only while it holds the `pruner` leader
//! lease, so on PostgreSQL one node prunes at a time.
//!
//! Every `interval_ms` it deletes batches of at most [`BATCH`] jobs, each its own short
//! transaction (so no lock is held long, and on SQLite other writes interleave), until a
//! batch comes back short. Deleted jobs are counted in `vow_jobs_total{event="pruned"}`.

use std::time::Duration;

use tokio::time::Instant;
use vow_core::Timestamp;
use vow_store::{JobPrune, Pruned};

use super::leader::Leadership;
use crate::config::Retention;
use crate::App;

/// Most jobs one prune transaction deletes.
pub(crate) const BATCH: usize = 1_000;

/// Prunes finished jobs past their retention every `interval_ms`.
#[derive(Debug)]
pub struct Pruner;

/// What a pass asks the store to delete at `now`: per state, jobs that finished more
/// than its retention ago (`0`: none).
pub(crate) fn prune_params(r: &Retention, now: Timestamp, limit: usize) -> JobPrune {
    let before = |ms: u64| (ms > 0).then(|| now.plus_ms(-(ms.min(i64::MAX as u64) as i64)));
    JobPrune {
        completed_before: before(r.completed_ms),
        cancelled_before: before(r.cancelled_ms),
        dead_before: before(r.dead_ms),
        limit,
    }
}

impl Pruner {
    /// Runs until shutdown (returns at once when pruning is off).
    pub async fn run(app: App) {
        let r = app.retention.clone();
        let nothing = prune_params(&r, app.clock.now(), BATCH);
        if r.interval_ms == 0 || nothing.cutoffs().next().is_none() {
            tracing::info!("pruning of finished jobs is off");
            return;
        }
        let interval = Duration::from_millis(r.interval_ms);
        let mut lead = Leadership::new("pruner");
        let mut next = Instant::now();
        loop {
            let pause = if lead.check(&app).await {
                if Instant::now() >= next {
                    pass(&app, &r, &mut lead).await;
                    next = Instant::now() + interval;
                }
                next.saturating_duration_since(Instant::now())
                    .min(lead.until_claim())
            } else {
                lead.until_claim()
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = app.shutdown.cancelled() => break,
            }
        }
        lead.resign(&app).await;
    }
}

/// Deletes batches until one comes back short, the lease is lost or the server stops.
async fn pass(app: &App, r: &Retention, lead: &mut Leadership) {
    let started = Instant::now();
    let mut total = Pruned::default();
    let mut batches = 0;
    loop {
        let p = prune_params(r, app.clock.now(), BATCH);
        match app.store.job_prune(&p).await {
            Ok(n) => {
                batches += 1;
                total.jobs += n.jobs;
                total.events += n.events;
                total.deliveries += n.deliveries;
                if n.jobs + n.deliveries < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning finished jobs failed");
                break;
            }
        }
        // Renews the lease when due; a node that lost it leaves the rest to the new leader.
        if app.shutdown.is_cancelled() || !lead.check(app).await {
            break;
        }
    }
    if total.jobs + total.deliveries > 0 {
        tracing::info!(
            jobs = total.jobs,
            events = total.events,
            deliveries = total.deliveries,
            batches,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pruned finished jobs past their retention"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vow_core::JobState;

    #[test]
    fn cut_offs_are_now_minus_each_retention_and_zero_keeps_forever() {
        let now = Timestamp(10_000_000);
        let r = Retention {
            completed_ms: 1_000,
            cancelled_ms: 0,
            dead_ms: 5_000,
            interval_ms: 1,
        };
        let p = prune_params(&r, now, 7);
        assert_eq!(p.limit, 7);
        assert_eq!(
            p.cutoffs().collect::<Vec<_>>(),
            vec![
                (JobState::Completed, Timestamp(9_999_000)),
                (JobState::Dead, Timestamp(9_995_000)),
            ]
        );
        let forever = Retention {
            completed_ms: 0,
            cancelled_ms: 0,
            dead_ms: 0,
            interval_ms: 1,
        };
        assert!(prune_params(&forever, now, 7).cutoffs().next().is_none());
        let huge = Retention {
            completed_ms: u64::MAX,
            ..r
        };
        assert!(prune_params(&huge, now, 7).completed_before.unwrap().0 < 0);
    }
}
