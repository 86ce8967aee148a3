//! The reaper: turns expired leases into failed attempts (retried with backoff, or
//! `dead` when out of attempts). It never deletes a job. Runs only while it holds the
//! `reaper` leader lease.

use std::time::Duration;

use super::leader::Leadership;
use crate::App;

/// Reaps expired leases; sleeps until the next lease expires (at most a second).
#[derive(Debug)]
pub struct Reaper;

impl Reaper {
    /// Runs until shutdown.
    pub async fn run(app: App) {
        let mut lead = Leadership::new("reaper");
        loop {
            let pause = if lead.check(&app).await {
                let now = app.clock.now();
                match app.store.job_reap_expired(now).await {
                    Ok(sweep) if sweep.changed >= 1000 => Duration::ZERO,
                    Ok(sweep) => {
                        if sweep.changed > 0 {
                            tracing::info!(count = sweep.changed, "expired leases reaped");
                        }
                        super::until(sweep.next_at, now)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reaper sweep failed");
                        super::IDLE
                    }
                }
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
