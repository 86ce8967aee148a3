//! The job: its states, its record, and the validated shape of a job about to be inserted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

use crate::{GroupKey, JobId, LeaseId, QueueName, TenantId, Timestamp, ValidationError};

/// Where a job is in its life. See `docs/state-machine.md`.
///
/// `scheduled → available → running → completed | (retry →) scheduled | dead`, and
/// `cancelled` from any non-terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` (delayed, or backing off before a retry).
    Scheduled,
    /// Ready to be leased.
    Available,
    /// Leased by a worker; the lease has a deadline.
    Running,
    /// Finished successfully (terminal).
    Completed,
    /// Out of attempts, or failed as non-retryable (terminal; replayable by `retry`).
    Dead,
    /// Cancelled by a caller (terminal; replayable by `retry`).
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Completed, dead and cancelled jobs never change again (except by an explicit retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        )
    }
}

impl FromStr for JobState {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                ValidationError::invalid(
                    "state",
                    format!("`{s}` is not one of scheduled, available, running, completed, dead, cancelled"),
                )
            })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff between attempts; the delay before retry `n` is drawn uniformly
/// from `[0, min(max_ms, initial_ms * multiplier^(n-1))]` (full jitter).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Upper bound of the first retry's delay.
    #[serde(default = "Backoff::default_initial")]
    pub initial_ms: u64,
    /// Cap on any retry's delay.
    #[serde(default = "Backoff::default_max")]
    pub max_ms: u64,
    /// Growth factor per attempt.
    #[serde(default = "Backoff::default_multiplier")]
    pub multiplier: f64,
}

impl Backoff {
    fn default_initial() -> u64 {
        1_000
    }
    fn default_max() -> u64 {
        3_600_000
    }
    fn default_multiplier() -> f64 {
        2.0
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: Self::default_initial(),
            max_ms: Self::default_max(),
            multiplier: Self::default_multiplier(),
        }
    }
}

/// The last error a job's attempt reported (or `lease_expired`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// Human-readable message from the worker.
    pub message: String,
    /// Optional machine-readable code from the worker.
    pub code: Option<String>,
    /// When the failure was recorded.
    pub at: Timestamp,
}

/// A job as the store keeps it, including fields the API never shows (lease, tenant).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The owning tenant.
    pub tenant_id: TenantId,
    /// The queue, within the tenant.
    pub queue: QueueName,
    /// Current state.
    pub state: JobState,
    /// 0 (first) … 9 (last).
    pub priority: u8,
    /// Fairness group, if any.
    pub group: Option<GroupKey>,
    /// Number of attempts started so far (0 before the first lease).
    pub attempt: u32,
    /// After this many failed attempts the job is `dead`.
    pub max_attempts: u32,
    /// The producer's payload.
    pub payload: Value,
    /// The worker's result, once completed.
    pub result: Option<Value>,
    /// The most recent failure.
    pub last_error: Option<ErrorInfo>,
    /// Progress reported by the last heartbeat.
    pub progress: Option<Value>,
    /// Not leased before this time.
    pub run_at: Timestamp,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When the current (or last) attempt started.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// Free-form labels for filtering.
    pub tags: Vec<String>,
    /// Free-form producer metadata (a JSON object), passed to workers.
    pub metadata: Value,
    /// Default lease length for an attempt.
    pub timeout_ms: u64,
    /// Retry delays.
    pub backoff: Backoff,
    /// Completion notice target, if any.
    pub callback_url: Option<String>,
    /// The current lease's fencing token, while running.
    pub lease_id: Option<LeaseId>,
    /// The current lease's deadline, while running.
    pub lease_expires_at: Option<Timestamp>,
    /// The worker holding the lease, while running.
    pub worker_id: Option<String>,
    /// W3C trace context carried from enqueue to the worker.
    pub traceparent: Option<String>,
}

/// A validated job about to be inserted (built from an enqueue request).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Id assigned at the edge, so a retried request can be recognised.
    pub id: JobId,
    /// Initial state: `available`, or `scheduled` when `run_at` is in the future.
    pub state: JobState,
    /// 0 (first) … 9 (last).
    pub priority: u8,
    /// Fairness group, if any.
    pub group: Option<GroupKey>,
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// Payload, already serialized (and size-checked): what the store keeps.
    pub payload: String,
    /// The same payload as decoded from the request: what the new job is answered with,
    /// so that the store never parses `payload` back.
    pub payload_value: Value,
    /// Not leased before this.
    pub run_at: Timestamp,
    /// Default lease length.
    pub timeout_ms: u64,
    /// Retry delays.
    pub backoff: Backoff,
    /// Completion notice target.
    pub callback_url: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// Metadata object.
    pub metadata: Value,
    /// Trace context from the enqueue request.
    pub traceparent: Option<String>,
    /// Idempotency key (per tenant and queue) with the hash of the request it came with.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and the fingerprint of the request body it was first used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key as sent.
    pub key: String,
    /// SHA-256 (hex) of the canonical request body.
    pub request_hash: String,
}

impl NewJob {
    /// The job record this insert creates, as of `now` (a copy; see [`NewJob::into_job`]).
    pub fn to_job(&self, tenant_id: &TenantId, queue: &QueueName, now: Timestamp) -> Job {
        self.clone().into_job(tenant_id, queue, now)
    }

    /// The job record this insert creates, as of `now`.
    pub fn into_job(self, tenant_id: &TenantId, queue: &QueueName, now: Timestamp) -> Job {
        Job {
            id: self.id,
            tenant_id: tenant_id.clone(),
            queue: queue.clone(),
            state: self.state,
            priority: self.priority,
            group: self.group,
            attempt: 0,
            max_attempts: self.max_attempts,
            payload: self.payload_value,
            result: None,
            last_error: None,
            progress: None,
            run_at: self.run_at,
            created_at: now,
            started_at: None,
            finished_at: None,
            tags: self.tags,
            metadata: self.metadata,
            timeout_ms: self.timeout_ms,
            backoff: self.backoff,
            callback_url: self.callback_url,
            lease_id: None,
            lease_expires_at: None,
            worker_id: None,
            traceparent: self.traceparent,
        }
    }
}
