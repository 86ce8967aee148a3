//! Parameter and result structs of [`crate::Store`] methods, one per method.

use std::collections::HashMap;

use serde_json::Value;
use vow_core::api::{QueuePatch, WebhookEvent};
use vow_core::auth::Role;
use vow_core::job::NewJob;
use vow_core::notice::Breaker;
use vow_core::{
    DeliveryId, GroupKey, Job, JobId, JobState, KeyId, LeaseId, QueueName, TenantId, TenantName,
    Timestamp, WebhookId,
};

/// A stored API key (hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// Key id.
    pub id: KeyId,
    /// Owning tenant; `None` for a root key.
    pub tenant_id: Option<TenantId>,
    /// Role.
    pub role: Role,
    /// SHA-256 hex of the plaintext.
    pub hash: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Revocation time.
    pub revoked_at: Option<Timestamp>,
}

/// [`crate::Store::api_key_insert`].
#[derive(Debug, Clone)]
pub struct ApiKeyInsert {
    /// Key id (from the plaintext's prefix).
    pub id: KeyId,
    /// Owning tenant; `None` for a root key.
    pub tenant_id: Option<TenantId>,
    /// Role.
    pub role: Role,
    /// SHA-256 hex of the plaintext.
    pub hash: String,
    /// Creation time.
    pub now: Timestamp,
}

/// One item of [`JobAckMany`].
#[derive(Debug, Clone)]
pub enum AckItem {
    /// Record success.
    Complete {
        /// Job id.
        id: JobId,
        /// Lease it ran under.
        lease_id: LeaseId,
        /// Result.
        result: Option<Value>,
    },
    /// Record a failed attempt.
    Fail {
        /// Job id.
        id: JobId,
        /// Lease it ran under.
        lease_id: LeaseId,
        /// Error message.
        message: String,
        /// Error code.
        code: Option<String>,
        /// `false`: straight to dead.
        retryable: bool,
        /// Overrides the backoff delay.
        retry_after_ms: Option<u64>,
    },
}

impl AckItem {
    /// The job this item is about, and the state-machine operation it asks for.
    pub fn into_op(self) -> (JobId, vow_core::machine::Op) {
        use vow_core::machine::Op;
        match self {
            AckItem::Complete {
                id,
                lease_id,
                result,
            } => (id, Op::Complete { lease_id, result }),
            AckItem::Fail {
                id,
                lease_id,
                message,
                code,
                retryable,
                retry_after_ms,
            } => (
                id,
                Op::Fail {
                    lease_id,
                    message,
                    code,
                    retryable,
                    retry_after_ms,
                },
            ),
        }
    }
}

/// [`crate::Store::job_ack_many`].
#[derive(Debug, Clone)]
pub struct JobAckMany {
    /// Tenant of the worker.
    pub tenant_id: TenantId,
    /// The outcomes.
    pub items: Vec<AckItem>,
    /// Time of the ack.
    pub now: Timestamp,
}

/// [`crate::Store::job_cancel`].
#[derive(Debug, Clone)]
pub struct JobCancel {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Job.
    pub id: JobId,
    /// Time of the cancel.
    pub now: Timestamp,
}

/// [`crate::Store::job_event_list_since`].
#[derive(Debug, Clone)]
pub struct JobEventListSince {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Only events after this sequence number (0: from the start).
    pub after: i64,
    /// Only events of this queue.
    pub queue: Option<QueueName>,
    /// Only events of this job.
    pub job_id: Option<JobId>,
    /// Most events to return.
    pub limit: usize,
}

/// [`crate::Store::job_heartbeat`].
#[derive(Debug, Clone)]
pub struct JobHeartbeat {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Job.
    pub id: JobId,
    /// Lease being extended.
    pub lease_id: LeaseId,
    /// New deadline = now + this.
    pub extend_ms: u64,
    /// Progress to store.
    pub progress: Option<Value>,
    /// Time of the heartbeat.
    pub now: Timestamp,
}

/// [`crate::Store::job_insert_many`].
#[derive(Debug, Clone)]
pub struct JobInsertMany {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Queue (created on first use).
    pub queue: QueueName,
    /// Jobs to insert, all or none.
    pub jobs: Vec<NewJob>,
    /// Time of the enqueue.
    pub now: Timestamp,
}

/// One result of [`crate::Store::job_insert_many`].
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The job (the original one when an idempotency key matched).
    pub job: Job,
    /// `false` when an existing job was returned for a repeated idempotency key.
    pub created: bool,
}

/// [`crate::Store::job_lease`].
#[derive(Debug, Clone)]
pub struct JobLease {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Queue.
    pub queue: QueueName,
    /// Worker taking the lease.
    pub worker_id: String,
    /// Most jobs to lease.
    pub max_jobs: u32,
    /// Lease length; each job's `timeout_ms` when `None`.
    pub lease_ms: Option<u64>,
    /// Time of the lease.
    pub now: Timestamp,
}

/// [`crate::Store::leader_elect`].
#[derive(Debug, Clone)]
pub struct LeaderElect {
    /// The duty, e.g. `promoter`; each has its own lease.
    pub name: String,
    /// The node asking (unique per process).
    pub node_id: String,
    /// How long the lease lasts from `now` unless renewed. Must exceed the clock skew
    /// between nodes and the renewal interval.
    pub ttl_ms: u64,
    /// Time of the claim.
    pub now: Timestamp,
}

/// [`crate::Store::leader_resign`].
#[derive(Debug, Clone)]
pub struct LeaderResign {
    /// The duty.
    pub name: String,
    /// The node giving it up; nothing happens unless it holds the lease.
    pub node_id: String,
}

/// [`crate::Store::job_list`].
#[derive(Debug, Clone, Default)]
pub struct JobList {
    /// Tenant.
    pub tenant_id: Option<TenantId>,
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this group.
    pub group: Option<GroupKey>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Only jobs with ids below this (the previous page's last id).
    pub before: Option<JobId>,
}

/// [`crate::Store::job_retry`].
#[derive(Debug, Clone)]
pub struct JobRetry {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Job.
    pub id: JobId,
    /// Time of the retry.
    pub now: Timestamp,
}

/// [`crate::Store::job_prune`]: which finished jobs to delete, per terminal state.
///
/// A job goes when its state has a cut-off and its `finished_at` is before it; a state
/// without a cut-off is kept forever.
#[derive(Debug, Clone, Default)]
pub struct JobPrune {
    /// Delete `completed` jobs that finished before this.
    pub completed_before: Option<Timestamp>,
    /// Delete `cancelled` jobs that finished before this.
    pub cancelled_before: Option<Timestamp>,
    /// Delete `dead` jobs that finished before this.
    pub dead_before: Option<Timestamp>,
    /// Most jobs to delete in this call (one short transaction).
    pub limit: usize,
}

impl JobPrune {
    /// The terminal states that have a cut-off, each with its cut-off.
    pub fn cutoffs(&self) -> impl Iterator<Item = (JobState, Timestamp)> {
        [
            (JobState::Completed, self.completed_before),
            (JobState::Cancelled, self.cancelled_before),
            (JobState::Dead, self.dead_before),
        ]
        .into_iter()
        .filter_map(|(state, before)| before.map(|b| (state, b)))
    }
}

/// Result of [`crate::Store::job_prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Jobs deleted.
    pub jobs: usize,
    /// Events of those jobs deleted with them.
    pub events: usize,
    /// Settled notices deleted (with their attempt logs): delivered ones created before
    /// `completed_before`, dead ones created before `dead_before`. Pending ones stay.
    pub deliveries: usize,
}

/// Result of a maintenance sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Jobs changed.
    pub changed: usize,
    /// When the next sweep has something to do, if known.
    pub next_at: Option<Timestamp>,
}

/// [`crate::Store::queue_update`].
#[derive(Debug, Clone)]
pub struct QueueUpdate {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Queue.
    pub name: QueueName,
    /// Changes.
    pub patch: QueuePatch,
    /// Time of the change.
    pub now: Timestamp,
}

/// [`crate::Store::tenant_insert`].
#[derive(Debug, Clone)]
pub struct TenantInsert {
    /// New tenant's id.
    pub id: TenantId,
    /// Unique name.
    pub name: TenantName,
    /// Pending-job quota.
    pub max_pending: Option<u64>,
    /// Creation time.
    pub now: Timestamp,
}

/// [`crate::Store::webhook_insert`].
#[derive(Debug, Clone)]
pub struct WebhookInsert {
    /// Tenant.
    pub tenant_id: TenantId,
    /// New subscription's id.
    pub id: WebhookId,
    /// Target URL (validated).
    pub url: String,
    /// Notices it receives.
    pub events: Vec<WebhookEvent>,
    /// Queue filter; `None`: every queue.
    pub queues: Option<Vec<QueueName>>,
    /// Signing secret.
    pub secret: String,
    /// Creation time.
    pub now: Timestamp,
}

/// [`crate::Store::webhook_secret_rotate`] and [`crate::Store::callback_secret_rotate`].
#[derive(Debug, Clone)]
pub struct SecretRotate {
    /// Tenant.
    pub tenant_id: TenantId,
    /// The subscription (ignored for the callback secret).
    pub webhook_id: Option<WebhookId>,
    /// The new secret.
    pub secret: String,
    /// Time of the rotation.
    pub now: Timestamp,
    /// How long the previous secret keeps signing deliveries.
    pub grace_ms: u64,
}

/// [`crate::Store::delivery_claim`].
#[derive(Debug, Clone)]
pub struct DeliveryClaim {
    /// Deliveries due at or before this time are claimed.
    pub now: Timestamp,
    /// Most deliveries claimed at once.
    pub limit: usize,
    /// How long a claimed delivery is held (not claimed again) while it is being sent;
    /// if its sender dies, it is sent again (same id) after this.
    pub hold_ms: u64,
    /// Decides which endpoints may be sent to (open: none; half-open: one probe).
    pub breaker: Breaker,
    /// Most deliveries in flight per endpoint (tenant and origin): the concurrency cap.
    pub per_endpoint: usize,
    /// The claimer's deliveries still in flight, per (tenant, endpoint): they count
    /// against `per_endpoint`, so a saturated endpoint yields nothing. The cap is the
    /// claimer's; it is global because one node (the dispatcher's leader) claims.
    pub in_flight: HashMap<(TenantId, String), usize>,
}

/// A claimed delivery, with what is needed to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryTask {
    /// Delivery id (`webhook-id`).
    pub id: DeliveryId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// The job the notice is about.
    pub job_id: JobId,
    /// The subscription; `None` for the job's `callback_url`.
    pub webhook_id: Option<WebhookId>,
    /// Notice type.
    pub event: WebhookEvent,
    /// Target URL.
    pub url: String,
    /// The target's endpoint (origin), for the breaker and the concurrency cap.
    pub endpoint: String,
    /// The exact body to send.
    pub body: String,
    /// The job's W3C trace context (from its enqueue), sent as `traceparent`.
    pub traceparent: Option<String>,
    /// Attempts made before this one (the fence for [`DeliveryOutcome`]).
    pub attempts: u32,
    /// Attempts made in the current round (since creation or the last replay).
    pub round_attempts: u32,
    /// Secrets to sign with: the current one, and the previous one during a rotation.
    pub secrets: Vec<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Acknowledged (2xx).
    Delivered,
    /// Failed; try again at this time.
    RetryAt(Timestamp),
    /// Failed for good (schedule spent, or the target is refused).
    Dead,
}

/// [`crate::Store::delivery_record`]: the outcome of one attempt.
#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    /// Delivery.
    pub id: DeliveryId,
    /// `attempts` of the claimed task; if the delivery moved on since (claimed again
    /// after its hold ran out), the attempt is logged but the state is left alone.
    pub attempts_before: u32,
    /// When the attempt was made.
    pub at: Timestamp,
    /// HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Time to the answer or the failure.
    pub latency_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The start of the response body.
    pub response: Option<String>,
    /// What happens next.
    pub next: DeliveryNext,
    /// Updates the endpoint's health: a success closes its breaker, a failure counts.
    pub breaker: Breaker,
}

/// [`crate::Store::delivery_list`].
#[derive(Debug, Clone)]
pub struct DeliveryList {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Only deliveries of this subscription.
    pub webhook_id: Option<WebhookId>,
    /// Only deliveries about this job.
    pub job_id: Option<JobId>,
    /// Page size.
    pub limit: usize,
    /// Only deliveries with ids below this (the previous page's last id).
    pub before: Option<DeliveryId>,
}
