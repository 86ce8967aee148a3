//! The promoter: makes scheduled jobs (delayed, or backing off) available when their
//! `run_at` comes, which wakes the long-polling leases of their queues. Runs only while
//! it holds the `promoter` leader lease.

use std::pin::pin;
use std::time::Duration;

use super::leader::Leadership;
use crate::App;

/// Promotes due scheduled jobs; sleeps until the next one is due, or until the bus says
/// an earlier one was scheduled.
#[derive(Debug)]
pub struct Promoter;

impl Promoter {
    /// Runs until shutdown.
    pub async fn run(app: App) {
        let bus = app.store.bus();
        let mut lead = Leadership::new("promoter");
        loop {
            let mut nudged = pin!(bus.chores_nudged());
            nudged.as_mut().enable();
            let pause = if lead.check(&app).await {
                let now = app.clock.now();
                match app.store.job_promote_due(now).await {
                    Ok(sweep) if sweep.changed >= 1000 => Duration::ZERO,
                    Ok(sweep) => super::until(sweep.next_at, now),
                    Err(e) => {
                        tracing::warn!(error = %e, "promoter sweep failed");
                        super::IDLE
                    }
                }
                .min(lead.until_claim())
            } else {
                lead.until_claim()
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = nudged => {
                    // Coalesce bursts of nudges (a batch of delayed jobs).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                _ = app.shutdown.cancelled() => break,
            }
        }
        lead.resign(&app).await;
    }
}
