//! [`Instrumented`]: wraps any [`Store`] and records, once for every backend, how long
//! each call takes and how it ended (`vow_store_call_duration_seconds{method}`,
//! `vow_store_calls_total{method, outcome}`), plus counters of job transitions
//! (`vow_jobs_total{event}`). Backends do not repeat this.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use vow_core::api::{
    CallbackSecretView, DeliveryView, JobEventView, Page, QueueView, TenantView, WebhookView,
};
use vow_core::{
    DeliveryId, Job, JobId, JobState, KeyId, QueueName, TenantId, TenantName, Timestamp, WebhookId,
};

use crate::*;

/// A store that measures the store it wraps.
pub struct Instrumented {
    inner: Arc<dyn Store>,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl Instrumented {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }
}

fn outcome<T>(r: &StoreResult<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::NotFound) => "not_found",
        Err(StoreError::LeaseLost) => "lease_lost",
        Err(StoreError::InvalidState(_)) => "invalid_state",
        Err(StoreError::IdempotencyConflict(_)) => "idempotency_conflict",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Internal(_)) => "internal",
    }
}

async fn timed<T>(
    method: &'static str,
    fut: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let started = Instant::now();
    let r = fut.await;
    metrics::histogram!("vow_store_call_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("vow_store_calls_total", "method" => method, "outcome" => outcome(&r))
        .increment(1);
    r
}

fn count_jobs(event: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("vow_jobs_total", "event" => event).increment(n as u64);
    }
}

fn state_event(state: JobState) -> &'static str {
    match state {
        JobState::Completed => "completed",
        JobState::Dead => "dead",
        JobState::Scheduled => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Available => "retried",
        JobState::Running => "running",
    }
}

#[async_trait]
impl Store for Instrumented {
    fn bus(&self) -> &Bus {
        self.inner.bus()
    }
    async fn close(&self) {
        self.inner.close().await
    }

    async fn api_key_get(&self, id: &KeyId) -> StoreResult<Option<ApiKeyRecord>> {
        timed("api_key_get", self.inner.api_key_get(id)).await
    }
    async fn api_key_insert(&self, p: &ApiKeyInsert) -> StoreResult<ApiKeyRecord> {
        timed("api_key_insert", self.inner.api_key_insert(p)).await
    }
    async fn api_key_list(&self, tenant_id: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        timed("api_key_list", self.inner.api_key_list(tenant_id)).await
    }
    async fn api_key_revoke(&self, id: &KeyId, now: Timestamp) -> StoreResult<ApiKeyRecord> {
        timed("api_key_revoke", self.inner.api_key_revoke(id, now)).await
    }

    async fn callback_secret_exists(&self, tenant_id: &TenantId) -> StoreResult<bool> {
        timed(
            "callback_secret_exists",
            self.inner.callback_secret_exists(tenant_id),
        )
        .await
    }
    async fn callback_secret_rotate(&self, p: &SecretRotate) -> StoreResult<CallbackSecretView> {
        timed(
            "callback_secret_rotate",
            self.inner.callback_secret_rotate(p),
        )
        .await
    }

    async fn delivery_claim(&self, p: &DeliveryClaim) -> StoreResult<Vec<DeliveryTask>> {
        timed("delivery_claim", self.inner.delivery_claim(p)).await
    }
    async fn delivery_get(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
    ) -> StoreResult<Option<DeliveryView>> {
        timed("delivery_get", self.inner.delivery_get(tenant_id, id)).await
    }
    async fn delivery_list(&self, p: &DeliveryList) -> StoreResult<Page<DeliveryView>> {
        timed("delivery_list", self.inner.delivery_list(p)).await
    }
    async fn delivery_record(&self, p: &DeliveryOutcome) -> StoreResult<()> {
        let r = timed("delivery_record", self.inner.delivery_record(p)).await;
        if r.is_ok() {
            let outcome = match p.next {
                DeliveryNext::Delivered => "delivered",
                DeliveryNext::RetryAt(_) => "failed",
                DeliveryNext::Dead => "dead",
            };
            metrics::counter!("vow_delivery_attempts_total", "outcome" => outcome).increment(1);
        }
        r
    }
    async fn delivery_retry(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
        now: Timestamp,
    ) -> StoreResult<DeliveryView> {
        timed(
            "delivery_retry",
            self.inner.delivery_retry(tenant_id, id, now),
        )
        .await
    }

    async fn job_ack_many(&self, p: JobAckMany) -> StoreResult<Vec<StoreResult<Job>>> {
        let r = timed("job_ack_many", self.inner.job_ack_many(p)).await;
        if let Ok(items) = &r {
            for job in items.iter().flatten() {
                count_jobs(state_event(job.state), 1);
            }
        }
        r
    }
    async fn job_cancel(&self, p: &JobCancel) -> StoreResult<Job> {
        let r = timed("job_cancel", self.inner.job_cancel(p)).await;
        count_jobs("cancelled", usize::from(r.is_ok()));
        r
    }
    async fn job_event_list(
        &self,
        tenant_id: &TenantId,
        id: &JobId,
    ) -> StoreResult<Vec<JobEventView>> {
        timed("job_event_list", self.inner.job_event_list(tenant_id, id)).await
    }
    async fn job_event_list_since(&self, p: &JobEventListSince) -> StoreResult<Vec<JobEventView>> {
        timed("job_event_list_since", self.inner.job_event_list_since(p)).await
    }
    async fn job_get(&self, tenant_id: &TenantId, id: &JobId) -> StoreResult<Option<Job>> {
        timed("job_get", self.inner.job_get(tenant_id, id)).await
    }
    async fn job_heartbeat(&self, p: JobHeartbeat) -> StoreResult<Timestamp> {
        timed("job_heartbeat", self.inner.job_heartbeat(p)).await
    }
    async fn job_insert_many(&self, p: JobInsertMany) -> StoreResult<Vec<Inserted>> {
        let r = timed("job_insert_many", self.inner.job_insert_many(p)).await;
        if let Ok(items) = &r {
            count_jobs("enqueued", items.iter().filter(|i| i.created).count());
        }
        r
    }
    async fn job_lease(&self, p: &JobLease) -> StoreResult<Vec<Job>> {
        let r = timed("job_lease", self.inner.job_lease(p)).await;
        if let Ok(jobs) = &r {
            count_jobs("leased", jobs.len());
        }
        r
    }
    async fn job_list(&self, p: &JobList) -> StoreResult<Page<Job>> {
        timed("job_list", self.inner.job_list(p)).await
    }
    async fn job_promote_due(&self, now: Timestamp) -> StoreResult<Sweep> {
        let r = timed("job_promote_due", self.inner.job_promote_due(now)).await;
        if let Ok(s) = &r {
            count_jobs("promoted", s.changed);
        }
        r
    }
    async fn job_prune(&self, p: &JobPrune) -> StoreResult<Pruned> {
        let r = timed("job_prune", self.inner.job_prune(p)).await;
        if let Ok(n) = &r {
            count_jobs("pruned", n.jobs);
        }
        r
    }
    async fn job_reap_expired(&self, now: Timestamp) -> StoreResult<Sweep> {
        let r = timed("job_reap_expired", self.inner.job_reap_expired(now)).await;
        if let Ok(s) = &r {
            count_jobs("lease_expired", s.changed);
        }
        r
    }
    async fn job_retry(&self, p: &JobRetry) -> StoreResult<Job> {
        let r = timed("job_retry", self.inner.job_retry(p)).await;
        count_jobs("retried", usize::from(r.is_ok()));
        r
    }

    async fn leader_elect(&self, p: &LeaderElect) -> StoreResult<bool> {
        timed("leader_elect", self.inner.leader_elect(p)).await
    }
    async fn leader_resign(&self, p: &LeaderResign) -> StoreResult<()> {
        timed("leader_resign", self.inner.leader_resign(p)).await
    }

    async fn queue_get(
        &self,
        tenant_id: &TenantId,
        name: &QueueName,
        now: Timestamp,
    ) -> StoreResult<Option<QueueView>> {
        timed("queue_get", self.inner.queue_get(tenant_id, name, now)).await
    }
    async fn queue_list(
        &self,
        tenant_id: &TenantId,
        now: Timestamp,
    ) -> StoreResult<Vec<QueueView>> {
        timed("queue_list", self.inner.queue_list(tenant_id, now)).await
    }
    async fn queue_update(&self, p: &QueueUpdate) -> StoreResult<QueueView> {
        timed("queue_update", self.inner.queue_update(p)).await
    }

    async fn ready(&self) -> StoreResult<()> {
        timed("ready", self.inner.ready()).await
    }

    async fn tenant_get(&self, id: &TenantId) -> StoreResult<Option<TenantView>> {
        timed("tenant_get", self.inner.tenant_get(id)).await
    }
    async fn tenant_get_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantView>> {
        timed("tenant_get_by_name", self.inner.tenant_get_by_name(name)).await
    }
    async fn tenant_insert(&self, p: &TenantInsert) -> StoreResult<TenantView> {
        timed("tenant_insert", self.inner.tenant_insert(p)).await
    }
    async fn tenant_list(&self) -> StoreResult<Vec<TenantView>> {
        timed("tenant_list", self.inner.tenant_list()).await
    }

    async fn webhook_delete(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<()> {
        timed(
            "webhook_delete",
            self.inner.webhook_delete(tenant_id, id, now),
        )
        .await
    }
    async fn webhook_get(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
    ) -> StoreResult<Option<WebhookView>> {
        timed("webhook_get", self.inner.webhook_get(tenant_id, id)).await
    }
    async fn webhook_insert(&self, p: &WebhookInsert) -> StoreResult<WebhookView> {
        timed("webhook_insert", self.inner.webhook_insert(p)).await
    }
    async fn webhook_list(&self, tenant_id: &TenantId) -> StoreResult<Vec<WebhookView>> {
        timed("webhook_list", self.inner.webhook_list(tenant_id)).await
    }
    async fn webhook_secret_rotate(&self, p: &SecretRotate) -> StoreResult<WebhookView> {
        timed("webhook_secret_rotate", self.inner.webhook_secret_rotate(p)).await
    }
}
