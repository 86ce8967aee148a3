//! API v1 wire types (see `API.md`), shared by the server, the client and the CLI so
//! they cannot drift apart. Requests reject unknown fields: a typo is a `400`, not a
//! silently ignored option.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::Role;
use crate::job::{Idempotency, NewJob};
use crate::limits::Limits;
use crate::machine::EventKind;
use crate::{
    Backoff, ErrorInfo, GroupKey, Job, JobId, JobState, KeyId, LeaseId, QueueName, TenantId,
    TenantName, Timestamp, ValidationError,
};

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in patches.
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An RFC 7807 problem document, as every error response carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this instance, for humans.
    pub detail: String,
    /// Stable machine-readable code, e.g. `lease_lost`.
    pub code: String,
}

/// `POST /v1/queues/{queue}/jobs` body (and one item of a batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Any JSON value, handed to the worker as is.
    pub payload: Value,
    /// 0 (first) … 9 (last); default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Do not run before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    /// Do not run before now + this (exclusive with `run_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Attempts before the job is `dead`; default 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Default lease length per attempt; default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Fairness group key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupKey>,
    /// Retry delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Where to send the completion notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Labels for filtering (at most 20, each at most 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// A JSON object passed to workers with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl EnqueueRequest {
    /// A request with only a payload.
    pub fn new(payload: Value) -> Self {
        Self {
            payload,
            priority: None,
            run_at: None,
            delay_ms: None,
            max_attempts: None,
            timeout_ms: None,
            group: None,
            backoff: None,
            callback_url: None,
            tags: None,
            metadata: None,
        }
    }

    /// SHA-256 of the canonical form of this request (fields in declaration order,
    /// object keys sorted), used to tell a retried request from a conflicting one.
    pub fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }

    /// Validates the request and turns it into a [`NewJob`].
    pub fn validate(
        self,
        limits: &Limits,
        now: Timestamp,
        idempotency_key: Option<String>,
        traceparent: Option<String>,
    ) -> Result<NewJob, ValidationError> {
        let idempotency = idempotency_key.map(|key| Idempotency {
            request_hash: self.fingerprint(),
            key,
        });
        let priority = self.priority.unwrap_or(5);
        if priority > 9 {
            return Err(ValidationError::invalid(
                "priority",
                "must be 0 (first) to 9 (last)",
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(25);
        if max_attempts == 0 || max_attempts > limits.max_attempts {
            return Err(ValidationError::invalid(
                "max_attempts",
                format!("must be 1 to {}", limits.max_attempts),
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(30_000);
        check_lease_ms("timeout_ms", timeout_ms, limits)?;
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::invalid(
                    "run_at",
                    "give either run_at or delay_ms, not both",
                ))
            }
            (Some(t), None) => t,
            (None, Some(d)) if d > 10 * 365 * 86_400_000 => {
                return Err(ValidationError::invalid(
                    "delay_ms",
                    "must be at most ten years",
                ))
            }
            (None, Some(d)) => now.plus_ms(d as i64),
            (None, None) => now,
        };
        let backoff = self.backoff.unwrap_or_default();
        if !backoff.multiplier.is_finite() || backoff.multiplier < 1.0 || backoff.multiplier > 100.0
        {
            return Err(ValidationError::invalid(
                "backoff.multiplier",
                "must be 1.0 to 100.0",
            ));
        }
        if backoff.initial_ms > backoff.max_ms {
            return Err(ValidationError::invalid(
                "backoff.initial_ms",
                "must not exceed backoff.max_ms",
            ));
        }
        if let Some(url) = &self.callback_url {
            validate_notice_url("callback_url", url)?;
        }
        let tags = self.tags.unwrap_or_default();
        if tags.len() > 20 || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
            return Err(ValidationError::invalid(
                "tags",
                "at most 20 tags, each 1 to 64 bytes",
            ));
        }
        let metadata = Value::Object(self.metadata.unwrap_or_default());
        check_size(
            "metadata",
            &metadata,
            limits.max_payload_bytes.min(64 * 1024),
        )?;
        let payload_value = self.payload;
        let payload = serde_json::to_string(&payload_value).unwrap_or_default();
        if payload.len() > limits.max_payload_bytes {
            return Err(ValidationError::TooLarge {
                what: "payload".into(),
                actual: payload.len(),
                limit: limits.max_payload_bytes,
            });
        }
        Ok(NewJob {
            id: JobId::generate(),
            state: if run_at > now {
                JobState::Scheduled
            } else {
                JobState::Available
            },
            priority,
            group: self.group,
            max_attempts,
            payload,
            payload_value,
            run_at,
            timeout_ms,
            backoff,
            callback_url: self.callback_url,
            tags,
            metadata,
            traceparent,
            idempotency,
        })
    }
}

/// Checks a lease length, job timeout or heartbeat extension.
pub fn check_lease_ms(field: &str, ms: u64, limits: &Limits) -> Result<(), ValidationError> {
    if ms < 100 || ms > limits.max_lease_ms {
        return Err(ValidationError::invalid(
            field,
            format!("must be 100 to {} milliseconds", limits.max_lease_ms),
        ));
    }
    Ok(())
}

/// Checks the serialized size of a result, progress or metadata value.
pub fn check_size(what: &str, v: &Value, limit: usize) -> Result<(), ValidationError> {
    let actual = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if actual > limit {
        return Err(ValidationError::TooLarge {
            what: what.into(),
            actual,
            limit,
        });
    }
    Ok(())
}

/// `POST /v1/queues/{queue}/jobs/batch` body: all jobs are inserted, or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEnqueueRequest {
    /// 1 to 1000 jobs.
    pub jobs: Vec<EnqueueRequest>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: JobId,
    /// Queue name.
    pub queue: QueueName,
    /// Current state.
    pub state: JobState,
    /// 0 (first) … 9 (last).
    pub priority: u8,
    /// Fairness group.
    pub group: Option<GroupKey>,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The producer's payload.
    pub payload: Value,
    /// The worker's result, once completed.
    pub result: Option<Value>,
    /// The most recent failure.
    pub last_error: Option<ErrorInfo>,
    /// Progress from the last heartbeat.
    pub progress: Option<Value>,
    /// Earliest start of the next attempt.
    pub run_at: Timestamp,
    /// Enqueue time.
    pub created_at: Timestamp,
    /// Start of the current or last attempt.
    pub started_at: Option<Timestamp>,
    /// When it became terminal.
    pub finished_at: Option<Timestamp>,
    /// Labels.
    pub tags: Vec<String>,
    /// Producer metadata.
    pub metadata: Value,
    /// Default lease length per attempt.
    pub timeout_ms: u64,
    /// Retry delays.
    pub backoff: Backoff,
    /// Completion notice target.
    pub callback_url: Option<String>,
    /// Deadline of the current lease, while running.
    pub lease_expires_at: Option<Timestamp>,
    /// Worker holding the lease, while running.
    pub worker_id: Option<String>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        Self {
            id: j.id,
            queue: j.queue,
            state: j.state,
            priority: j.priority,
            group: j.group,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            payload: j.payload,
            result: j.result,
            last_error: j.last_error,
            progress: j.progress,
            run_at: j.run_at,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            tags: j.tags,
            metadata: j.metadata,
            timeout_ms: j.timeout_ms,
            backoff: j.backoff,
            callback_url: j.callback_url,
            lease_expires_at: j.lease_expires_at,
            worker_id: j.worker_id,
        }
    }
}

/// A page of a list; pass `next_cursor` back as `?cursor=` for the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Cursor of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// A complete (unpaginated) list: batch enqueue results, queues, tenants, keys, events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// `GET /v1/jobs/{id}/wait` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Longest wait; default 30000.
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/jobs` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only jobs carrying this tag.
    pub tag: Option<String>,
    /// Page size, at most 500 (default 50).
    pub limit: Option<usize>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Query of a plain paginated list (`limit`, `cursor`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, at most 500 (default 50).
    pub limit: Option<usize>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// One entry of a job's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEventView {
    /// Position in the tenant's event stream (increasing).
    pub seq: i64,
    /// The job.
    pub job_id: JobId,
    /// The job's queue.
    pub queue: QueueName,
    /// What happened.
    pub kind: EventKind,
    /// State before (`null` for `enqueued`).
    pub from_state: Option<JobState>,
    /// State after.
    pub to_state: JobState,
    /// Attempt number at the time.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
    /// Extra facts: the error of a failure, the worker of a lease.
    pub detail: Option<Value>,
}

/// `POST /v1/queues/{queue}/lease` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Who is leasing (for operators), e.g. `host-1/pid-77`.
    pub worker_id: String,
    /// Most jobs to take; default 1.
    #[serde(default)]
    pub max_jobs: Option<u32>,
    /// Long-poll up to this long when nothing is available; default 0.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Lease length; default the job's `timeout_ms`.
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeasedJob {
    /// Job id.
    pub id: JobId,
    /// Fencing token: send it back with heartbeat, complete and fail.
    pub lease_id: LeaseId,
    /// Heartbeat before this or lose the lease.
    pub lease_expires_at: Timestamp,
    /// The lease length granted, in milliseconds: heartbeat well within it (e.g. every
    /// third), extending by the same amount.
    pub lease_ms: u64,
    /// This attempt's number (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The producer's payload.
    pub payload: Value,
    /// Queue name.
    pub queue: QueueName,
    /// Priority.
    pub priority: u8,
    /// Fairness group.
    pub group: Option<GroupKey>,
    /// Producer metadata.
    pub metadata: Value,
    /// W3C trace context of the enqueue.
    pub traceparent: Option<String>,
}

/// `POST /v1/queues/{queue}/lease` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    /// Leased jobs; empty when the wait ran out.
    pub jobs: Vec<LeasedJob>,
}

/// `POST /v1/jobs/{id}/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease being extended.
    pub lease_id: LeaseId,
    /// New deadline = now + this; default 30000.
    #[serde(default)]
    pub extend_ms: Option<u64>,
    /// Progress to record (any JSON).
    #[serde(default)]
    pub progress: Option<Value>,
}

/// `POST /v1/jobs/{id}/heartbeat` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// The lease's new deadline.
    pub lease_expires_at: Timestamp,
}

/// `POST /v1/jobs/{id}/complete` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The lease under which the job ran.
    pub lease_id: LeaseId,
    /// Result to store with the job.
    #[serde(default)]
    pub result: Option<Value>,
}

/// A worker's description of a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureBody {
    /// Human-readable message.
    pub message: String,
    /// Optional machine-readable code.
    #[serde(default)]
    pub code: Option<String>,
}

/// `POST /v1/jobs/{id}/fail` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The lease under which the job ran.
    pub lease_id: LeaseId,
    /// What went wrong.
    pub error: FailureBody,
    /// `false` makes the job `dead` at once; default `true`.
    #[serde(default)]
    pub retryable: Option<bool>,
    /// Retry after this long instead of the backoff delay.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// One completion in a batch ack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckComplete {
    /// Job id.
    pub id: JobId,
    /// The lease under which it ran.
    pub lease_id: LeaseId,
    /// Result to store.
    #[serde(default)]
    pub result: Option<Value>,
}

/// One failure in a batch ack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckFail {
    /// Job id.
    pub id: JobId,
    /// The lease under which it ran.
    pub lease_id: LeaseId,
    /// What went wrong.
    pub error: FailureBody,
    /// `false` makes the job `dead` at once; default `true`.
    #[serde(default)]
    pub retryable: Option<bool>,
    /// Retry after this long instead of the backoff delay.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// `POST /v1/acks` body: many completes and fails in one request and one commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Completions.
    #[serde(default)]
    pub complete: Vec<AckComplete>,
    /// Failures.
    #[serde(default)]
    pub fail: Vec<AckFail>,
}

/// The outcome of one ack item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AckItemResult {
    /// Job id.
    pub id: JobId,
    /// Whether the outcome was recorded.
    pub ok: bool,
    /// The job's state afterwards, when recorded.
    pub state: Option<JobState>,
    /// Why not, when not: a stable code such as `lease_lost` or `not_found`.
    pub code: Option<String>,
}

/// `POST /v1/acks` response, item for item in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AckResponse {
    /// Results of the completions.
    pub complete: Vec<AckItemResult>,
    /// Results of the failures.
    pub fail: Vec<AckItemResult>,
}

/// Job counts of one queue by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueCounts {
    /// Waiting for `run_at`.
    pub scheduled: u64,
    /// Ready to lease.
    pub available: u64,
    /// Leased.
    pub running: u64,
    /// Done.
    pub completed: u64,
    /// Out of attempts.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl QueueCounts {
    /// Adds `n` to the count of `state`.
    pub fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Scheduled => &mut self.scheduled,
            JobState::Available => &mut self.available,
            JobState::Running => &mut self.running,
            JobState::Completed => &mut self.completed,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

/// A token-bucket rate limit for leases of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained leases per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// A queue as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub name: QueueName,
    /// Paused queues hand out no leases.
    pub paused: bool,
    /// Job counts by state.
    pub counts: QueueCounts,
    /// Age of the oldest available job, if any.
    pub oldest_available_age_ms: Option<i64>,
    /// Most jobs running at once in this queue.
    pub concurrency_limit: Option<u32>,
    /// Most jobs running at once per group in this queue.
    pub group_concurrency_limit: Option<u32>,
    /// Lease rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Most pending (scheduled + available + running) jobs before enqueue gets `429`.
    pub max_pending: Option<u64>,
}

/// `PATCH /v1/queues/{queue}` body; absent fields stay as they are, `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    /// Pause or resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Most running at once; `null` for no limit.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub concurrency_limit: Option<Option<u32>>,
    /// Most running at once per group; `null` for no limit.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub group_concurrency_limit: Option<Option<u32>>,
    /// Lease rate limit; `null` for none.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Pending-job quota; `null` for none.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_pending: Option<Option<u64>>,
}

/// `POST /v1/tenants` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// Unique name.
    pub name: TenantName,
    /// Quota of pending jobs across the tenant's queues.
    #[serde(default)]
    pub max_pending: Option<u64>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// Tenant id.
    pub id: TenantId,
    /// Unique name.
    pub name: TenantName,
    /// Pending-job quota.
    pub max_pending: Option<u64>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// `POST /v1/tenants/{tenant}/keys` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// `admin`, `producer` or `worker`.
    pub role: Role,
}

/// An API key's record (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Key id.
    pub id: KeyId,
    /// Owning tenant; `null` for the root key.
    pub tenant_id: Option<TenantId>,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
    /// When revoked, if revoked.
    pub revoked_at: Option<Timestamp>,
}

/// A freshly created key: the only time the plaintext is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    /// The key's record.
    #[serde(flatten)]
    pub record: KeyView,
    /// The plaintext key; store it now, it is not shown again.
    pub key: String,
}

/// The events a completion notice can be about; also its body's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum WebhookEvent {
    /// The job completed.
    #[serde(rename = "job.completed")]
    JobCompleted,
    /// The job is dead: out of attempts, or failed for good.
    #[serde(rename = "job.dead")]
    JobDead,
    /// The job was cancelled.
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    /// An attempt failed and the job will be retried (subscriptions only).
    #[serde(rename = "job.retrying")]
    JobRetrying,
}

/// `POST /v1/webhooks` body: a tenant-wide subscription to completion notices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Where notices are POSTed (http or https).
    pub url: String,
    /// Which notices; at least one.
    pub events: Vec<WebhookEvent>,
    /// Only jobs of these queues; `null` or absent: every queue.
    #[serde(default)]
    pub queues: Option<Vec<QueueName>>,
}

impl WebhookCreate {
    /// Checks the URL, the event list and the queue filter.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_notice_url("url", &self.url)?;
        if self.events.is_empty() {
            return Err(ValidationError::invalid(
                "events",
                "name at least one event",
            ));
        }
        if self
            .queues
            .as_ref()
            .is_some_and(|q| q.is_empty() || q.len() > 100)
        {
            return Err(ValidationError::invalid(
                "queues",
                "1 to 100 queue names, or null for every queue",
            ));
        }
        Ok(())
    }
}

/// Checks a notice target: http(s), a host, no credentials, at most 2048 characters.
pub fn validate_notice_url(field: &'static str, url: &str) -> Result<(), ValidationError> {
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::invalid(
            field,
            "must be an http(s) URL of at most 2048 characters",
        ));
    }
    crate::notice::endpoint_of(url)
        .map(drop)
        .map_err(|reason| ValidationError::invalid(field, reason))
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Subscription id.
    pub id: crate::WebhookId,
    /// Target URL.
    pub url: String,
    /// Notices it receives.
    pub events: Vec<WebhookEvent>,
    /// Queue filter; `null`: every queue.
    pub queues: Option<Vec<QueueName>>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Until when the previous secret still signs deliveries (after a rotation).
    pub previous_secret_valid_until: Option<Timestamp>,
    /// The signing secret (`whsec_…`): only in the answer to a create or a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `POST /v1/callback-secret` answer: the tenant's secret for per-job `callback_url`
/// notices, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallbackSecretView {
    /// The new signing secret (`whsec_…`).
    pub secret: String,
    /// Until when the previous secret (if any) still signs deliveries.
    pub previous_secret_valid_until: Option<Timestamp>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not acknowledged yet: being sent or waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The retry schedule ran out (or the target is refused); replay to send it again.
    Dead,
}

impl DeliveryState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One completion notice to one URL, and how its sending went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// Delivery id, sent as `webhook-id` (the same on every retry).
    pub id: crate::DeliveryId,
    /// The job the notice is about.
    pub job_id: JobId,
    /// The subscription it is for; `null` for the job's own `callback_url`.
    pub webhook_id: Option<crate::WebhookId>,
    /// Notice type.
    pub event: WebhookEvent,
    /// Target URL.
    pub url: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt, while pending.
    pub next_attempt_at: Option<Timestamp>,
    /// HTTP status of the last attempt (`null`: no answer).
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the notice was produced (the job's transition).
    pub created_at: Timestamp,
    /// When the receiver acknowledged it.
    pub delivered_at: Option<Timestamp>,
    /// The attempts, oldest first (only on `GET /v1/deliveries/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<DeliveryAttemptView>>,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttemptView {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it was made.
    pub at: Timestamp,
    /// HTTP status (`null`: no answer, see `error`).
    pub status: Option<u16>,
    /// Time to the answer or the failure.
    pub latency_ms: u64,
    /// Why it failed (connect error, timeout, refused address, non-2xx).
    pub error: Option<String>,
    /// The start of the response body.
    pub response: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_value::<EnqueueRequest>(json!({"payload": 1, "priorty": 3}));
        assert!(err.unwrap_err().to_string().contains("priorty"));
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a: EnqueueRequest = serde_json::from_str(r#"{"payload":{"a":1,"b":2}}"#).unwrap();
        let b: EnqueueRequest = serde_json::from_str(r#"{"payload":{"b":2,"a":1}}"#).unwrap();
        let c: EnqueueRequest = serde_json::from_str(r#"{"payload":{"a":1,"b":3}}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn validation_applies_defaults_and_limits() {
        let limits = Limits::default();
        let now = Timestamp(1_000);
        let job = EnqueueRequest::new(json!({"x": 1}))
            .validate(&limits, now, None, None)
            .unwrap();
        assert_eq!(
            (job.priority, job.max_attempts, job.timeout_ms),
            (5, 25, 30_000)
        );
        assert_eq!((job.state, job.run_at), (JobState::Available, now));

        let mut delayed = EnqueueRequest::new(json!(1));
        delayed.delay_ms = Some(500);
        let job = delayed.validate(&limits, now, None, None).unwrap();
        assert_eq!(
            (job.state, job.run_at),
            (JobState::Scheduled, Timestamp(1_500))
        );

        let mut bad = EnqueueRequest::new(json!(1));
        bad.priority = Some(10);
        assert!(bad.validate(&limits, now, None, None).is_err());

        let big = EnqueueRequest::new(json!("x".repeat(limits.max_payload_bytes)));
        assert!(matches!(
            big.validate(&limits, now, None, None),
            Err(ValidationError::TooLarge { .. })
        ));
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let p: QueuePatch = serde_json::from_str(r#"{"concurrency_limit": null}"#).unwrap();
        assert_eq!(p.concurrency_limit, Some(None));
        assert_eq!(p.max_pending, None);
        let p: QueuePatch = serde_json::from_str(r#"{"concurrency_limit": 3}"#).unwrap();
        assert_eq!(p.concurrency_limit, Some(Some(3)));
    }
}
