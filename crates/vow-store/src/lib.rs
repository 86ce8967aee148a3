//! The storage seam of vow: one [`Store`] trait that every backend (SQLite, PostgreSQL)
//! implements, one parameter struct per method, one error type, and the [`Bus`] through
//! which a store tells the server that work is available or a job changed.
//!
//! Methods are named noun-then-verb and kept sorted so the trait reads like an index.
//! Every method that touches tenant data takes the tenant id: isolation is enforced in
//! the store's queries, not only at the HTTP edge.

mod bus;
mod error;
mod instrumented;
mod params;

pub use bus::{Bus, BusEvent, JobWaiter};
pub use error::StoreError;
pub use instrumented::Instrumented;
pub use params::*;

use async_trait::async_trait;
use vow_core::api::{
    CallbackSecretView, DeliveryView, JobEventView, Page, QueueView, TenantView, WebhookView,
};
use vow_core::{
    DeliveryId, Job, JobId, KeyId, QueueName, TenantId, TenantName, Timestamp, WebhookId,
};

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A durable home for tenants, keys, queues, jobs and their events.
///
/// Every write is durable when its future resolves (fsync'd or committed), and the
/// corresponding [`Bus`] notifications are sent after that point, never before.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The bus this store publishes wake-ups and job events on.
    fn bus(&self) -> &Bus;

    /// Finishes what the store still owes before the process exits. Both stores refuse
    /// new writes (`Unavailable`) and wait for those in flight; the PostgreSQL store then
    /// sends the notifications still queued for the other nodes, the SQLite store
    /// checkpoints and truncates its log. Called once, at the end of a graceful
    /// shutdown; bounded in time.
    async fn close(&self) {}

    /// Looks up an API key by id (revoked keys included, with `revoked_at` set).
    async fn api_key_get(&self, id: &KeyId) -> StoreResult<Option<ApiKeyRecord>>;
    /// Stores a new key's hash.
    async fn api_key_insert(&self, p: &ApiKeyInsert) -> StoreResult<ApiKeyRecord>;
    /// Keys of a tenant (`None`: the root keys).
    async fn api_key_list(&self, tenant_id: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes a key; `NotFound` when there is no such key.
    async fn api_key_revoke(&self, id: &KeyId, now: Timestamp) -> StoreResult<ApiKeyRecord>;

    /// Whether a tenant has a secret for `callback_url` notices (jobs with a
    /// `callback_url` are refused until it has one, so every notice is verifiable).
    async fn callback_secret_exists(&self, tenant_id: &TenantId) -> StoreResult<bool>;
    /// Sets a tenant's secret for `callback_url` notices (creating it, or rotating it with
    /// the previous one valid for `p.grace_ms`).
    async fn callback_secret_rotate(&self, p: &SecretRotate) -> StoreResult<CallbackSecretView>;

    /// Claims due pending deliveries (all tenants), oldest due first, holding each for
    /// `p.hold_ms`. Endpoints whose breaker is open are skipped; a half-open one yields
    /// one delivery (its probe) and is held shut while the probe runs. A tenant without
    /// a callback secret gets one here.
    async fn delivery_claim(&self, p: &DeliveryClaim) -> StoreResult<Vec<DeliveryTask>>;
    /// One delivery of a tenant, with its attempt log.
    async fn delivery_get(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
    ) -> StoreResult<Option<DeliveryView>>;
    /// A tenant's deliveries, newest first, by subscription and/or job.
    async fn delivery_list(&self, p: &DeliveryList) -> StoreResult<Page<DeliveryView>>;
    /// Records an attempt, moves the delivery on and updates its endpoint's health.
    async fn delivery_record(&self, p: &DeliveryOutcome) -> StoreResult<()>;
    /// Sends a delivery again (replay): pending, due now, with a fresh retry schedule.
    async fn delivery_retry(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
        now: Timestamp,
    ) -> StoreResult<DeliveryView>;

    /// Records completions and failures in one transaction; one outcome per item, in order.
    /// A stale lease is `Err(LeaseLost)` for that item only.
    async fn job_ack_many(&self, p: JobAckMany) -> StoreResult<Vec<StoreResult<Job>>>;
    /// Cancels a non-terminal job (`InvalidState` when terminal).
    async fn job_cancel(&self, p: &JobCancel) -> StoreResult<Job>;
    /// A job's events, oldest first.
    async fn job_event_list(
        &self,
        tenant_id: &TenantId,
        id: &JobId,
    ) -> StoreResult<Vec<JobEventView>>;
    /// A tenant's events with `seq > p.after`, oldest first, at most `p.limit`, optionally
    /// only of one queue or one job: the replay behind `GET /v1/events` and its
    /// `Last-Event-ID` resume. Every backend overrides this; the default only reports
    /// the store as unable to replay.
    async fn job_event_list_since(&self, p: &JobEventListSince) -> StoreResult<Vec<JobEventView>> {
        let _ = p;
        Err(StoreError::Unavailable(
            "this store cannot replay events".into(),
        ))
    }
    /// One job of a tenant.
    async fn job_get(&self, tenant_id: &TenantId, id: &JobId) -> StoreResult<Option<Job>>;
    /// Extends a running lease; returns the new deadline (`LeaseLost` when stale).
    async fn job_heartbeat(&self, p: JobHeartbeat) -> StoreResult<Timestamp>;
    /// Inserts jobs atomically (all or none), honouring idempotency keys.
    async fn job_insert_many(&self, p: JobInsertMany) -> StoreResult<Vec<Inserted>>;
    /// Leases up to `max_jobs` available jobs of a queue: priority, then `run_at`, then id.
    /// Returns nothing for a paused queue.
    async fn job_lease(&self, p: &JobLease) -> StoreResult<Vec<Job>>;
    /// Lists a tenant's jobs, newest first.
    async fn job_list(&self, p: &JobList) -> StoreResult<Page<Job>>;
    /// Makes due scheduled jobs available (all tenants); returns how many, and when the
    /// next scheduled job falls due.
    async fn job_promote_due(&self, now: Timestamp) -> StoreResult<Sweep>;
    /// Deletes, in one bounded batch (at most `p.limit` jobs, oldest `finished_at`
    /// first), finished jobs of all tenants whose state has a cut-off in `p` and that
    /// finished before it, together with their events (and so their idempotency keys).
    /// Never touches a job that is not `completed`, `cancelled` or `dead`. Fewer than
    /// `p.limit` deleted means nothing more is due.
    async fn job_prune(&self, p: &JobPrune) -> StoreResult<Pruned>;
    /// Turns expired leases into failed attempts (all tenants); returns how many, and
    /// when the next running lease expires.
    async fn job_reap_expired(&self, now: Timestamp) -> StoreResult<Sweep>;
    /// Replays a dead or cancelled job (`InvalidState` otherwise).
    async fn job_retry(&self, p: &JobRetry) -> StoreResult<Job>;

    /// Claims or renews the leader lease of a duty (`p.name`) for `p.node_id` until
    /// `p.now + p.ttl_ms`; returns whether `p.node_id` holds it now. Another node gets it
    /// only once the holder's lease has expired (or was resigned). A single-node store
    /// (SQLite) always answers `true`: its process is the only node.
    async fn leader_elect(&self, p: &LeaderElect) -> StoreResult<bool>;
    /// Gives up the lease of a duty if `p.node_id` holds it, so another node can take
    /// over at once (graceful shutdown).
    async fn leader_resign(&self, p: &LeaderResign) -> StoreResult<()>;

    /// One queue with its counts; `None` if it has never been used.
    async fn queue_get(
        &self,
        tenant_id: &TenantId,
        name: &QueueName,
        now: Timestamp,
    ) -> StoreResult<Option<QueueView>>;
    /// All queues of a tenant with their counts, by name.
    async fn queue_list(&self, tenant_id: &TenantId, now: Timestamp)
        -> StoreResult<Vec<QueueView>>;
    /// Changes a queue's settings, creating it if needed.
    async fn queue_update(&self, p: &QueueUpdate) -> StoreResult<QueueView>;

    /// Whether the store answers and its schema is current.
    async fn ready(&self) -> StoreResult<()>;

    /// One tenant by id.
    async fn tenant_get(&self, id: &TenantId) -> StoreResult<Option<TenantView>>;
    /// One tenant by name.
    async fn tenant_get_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantView>>;
    /// Creates a tenant (`Conflict` when the name is taken).
    async fn tenant_insert(&self, p: &TenantInsert) -> StoreResult<TenantView>;
    /// All tenants, by name.
    async fn tenant_list(&self) -> StoreResult<Vec<TenantView>>;

    /// Removes a subscription; its pending deliveries become dead.
    async fn webhook_delete(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// One subscription of a tenant (without its secret).
    async fn webhook_get(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
    ) -> StoreResult<Option<WebhookView>>;
    /// Creates a subscription; the answer carries its secret.
    async fn webhook_insert(&self, p: &WebhookInsert) -> StoreResult<WebhookView>;
    /// A tenant's subscriptions, oldest first (without secrets).
    async fn webhook_list(&self, tenant_id: &TenantId) -> StoreResult<Vec<WebhookView>>;
    /// Rotates a subscription's secret; the answer carries the new one.
    async fn webhook_secret_rotate(&self, p: &SecretRotate) -> StoreResult<WebhookView>;
}
