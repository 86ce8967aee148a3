//! The leader lease a chore must hold before it acts, so that on a multi-node store
//! exactly one node runs each duty at a time (the embedded store always grants it).
//!
//! Each chore claims its own lease (`promoter`, `reaper`, ...) under its own random node
//! id, renews it every [`RENEW`], and acts only while its last successful claim is younger
//! than [`TTL`] minus a margin; so it stops acting before another node can take over. A
//! node that dies stops renewing: another takes over within [`TTL`] + [`RENEW`].
//! On shutdown the lease is resigned, so the takeover is immediate.
//!
//! Exclusivity is for efficiency, not correctness: every sweep locks its rows and
//! re-checks each job's state, so two nodes sweeping at once cannot double-apply.

use std::time::Duration;

use tokio::time::Instant;
use vow_store::{LeaderElect, LeaderResign};

use crate::App;

/// How long a claim lasts in the store.
pub(crate) const TTL: Duration = Duration::from_secs(5);
/// How often the holder renews (and a follower retries).
pub(crate) const RENEW: Duration = Duration::from_secs(1);
/// Stop acting this long before the claim could lapse (clock skew, slow renewals).
const MARGIN: Duration = Duration::from_millis(1_500);

/// One chore's view of its leader lease.
#[derive(Debug)]
pub(crate) struct Leadership {
    name: &'static str,
    node_id: String,
    valid_until: Option<Instant>,
    next_claim: Instant,
}

impl Leadership {
    /// A lease for duty `name`, not yet claimed.
    pub(crate) fn new(name: &'static str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        Self {
            name,
            node_id: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            valid_until: None,
            next_claim: Instant::now(),
        }
    }

    fn holds(&self) -> bool {
        self.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// Claims or renews the lease when due; whether this chore may act now.
    pub(crate) async fn check(&mut self, app: &App) -> bool {
        let start = Instant::now();
        if start < self.next_claim {
            return self.holds();
        }
        let was = self.holds();
        let claim = LeaderElect {
            name: self.name.into(),
            node_id: self.node_id.clone(),
            ttl_ms: TTL.as_millis() as u64,
            now: app.clock.now(),
        };
        self.next_claim = start + RENEW;
        match app.store.leader_elect(&claim).await {
            Ok(true) => {
                self.valid_until = Some(start + TTL - MARGIN);
                if !was {
                    tracing::info!(duty = self.name, node = %self.node_id, "leading");
                }
            }
            Ok(false) => {
                if was {
                    tracing::info!(duty = self.name, node = %self.node_id, "no longer leading");
                }
                self.valid_until = None;
            }
            Err(e) => {
                // Keep acting until the last claim runs out; the sweeps will fail anyway
                // while the store is down.
                tracing::warn!(duty = self.name, error = %e, "cannot renew the leader lease");
            }
        }
        self.holds()
    }

    /// How long until the next claim is due.
    pub(crate) fn until_claim(&self) -> Duration {
        self.next_claim.saturating_duration_since(Instant::now())
    }

    /// Gives the lease up (best effort, bounded), so another node takes over at once.
    pub(crate) async fn resign(&self, app: &App) {
        if self.valid_until.is_none() {
            return;
        }
        let p = LeaderResign {
            name: self.name.into(),
            node_id: self.node_id.clone(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), app.store.leader_resign(&p)).await;
    }
}
