//! Store errors: the outcomes a caller must tell apart, plus the store being down.

use vow_core::{JobId, JobState};

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object in this tenant.
    #[error("not found")]
    NotFound,
    /// The lease is stale: the job is not running under this lease any more.
    #[error("the lease is no longer held")]
    LeaseLost,
    /// The operation does not apply to a job in this state.
    #[error("the job is {0}")]
    InvalidState(JobState),
    /// An idempotency key was reused with a different request.
    #[error("idempotency key already used for job {0} with a different request")]
    IdempotencyConflict(JobId),
    /// A uniqueness rule was broken (e.g. a tenant name is taken).
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached or is shutting down; the caller may retry.
    #[error("store unavailable")]
    Unavailable(#[source] Source),
    /// Anything else: a bug or corruption. Logged with its cause, shown as a 500.
    #[error("store failure")]
    Internal(#[source] Source),
}

impl StoreError {
    /// Wraps an unexpected backend error.
    pub fn internal(e: impl Into<Source>) -> Self {
        Self::Internal(e.into())
    }
}
