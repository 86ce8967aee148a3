//! Background chores, each a loop with one lifecycle: started by the server, stopped
//! through the shutdown token. Each acts only while it holds its leader lease
//! ([`leader`]): on PostgreSQL one node at a time runs each duty; on the embedded store
//! this process is the only node and always holds it.

mod dispatcher;
mod leader;
mod promoter;
mod pruner;
mod reaper;

pub use dispatcher::Dispatcher;
pub use promoter::Promoter;
pub use pruner::Pruner;
pub use reaper::Reaper;

use std::time::Duration;
use vow_core::Timestamp;

/// Longest sleep between two sweeps when nothing is known to be due.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// How long to sleep until `next` (at most [`IDLE`]).
pub(crate) fn until(next: Option<Timestamp>, now: Timestamp) -> Duration {
    match next {
        Some(t) => Duration::from_millis((t.0 - now.0).clamp(0, IDLE.as_millis() as i64) as u64),
        None => IDLE,
    }
}
