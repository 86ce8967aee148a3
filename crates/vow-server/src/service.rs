//! The services behind the handlers: everything beyond a single store call (long-poll
//! leasing, waiting for a job to end, id parsing), callable from tests without HTTP.

use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;
use vow_core::api::{LeaseRequest, LeasedJob};
use vow_core::{Job, JobId, QueueName, TenantId};
use vow_store::JobLease;

use crate::error::ApiError;
use crate::App;

/// Parses a job id from a path; a malformed id names no job: `404`.
pub fn job_id(s: &str) -> Result<JobId, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound("job"))
}

/// Parses a queue name from a path: `400` when it breaks the naming rule.
pub fn queue_name(s: &str) -> Result<QueueName, ApiError> {
    Ok(s.parse()?)
}

impl App {
    /// Leases jobs, long-polling up to `wait_ms` when none is available. Returns as soon
    /// as a job becomes available (woken by the bus), and early on shutdown.
    pub async fn lease(
        &self,
        tenant_id: TenantId,
        queue: QueueName,
        req: LeaseRequest,
    ) -> Result<Vec<LeasedJob>, ApiError> {
        let limits = &self.limits;
        if req.worker_id.is_empty() || req.worker_id.len() > 200 {
            return Err(ApiError::Validation(
                "worker_id: must be 1 to 200 bytes".into(),
            ));
        }
        let max_jobs = req.max_jobs.unwrap_or(1);
        if max_jobs == 0 || max_jobs > limits.max_lease_jobs {
            return Err(ApiError::Validation(format!(
                "max_jobs: must be 1 to {}",
                limits.max_lease_jobs
            )));
        }
        let wait_ms = req.wait_ms.unwrap_or(0);
        if wait_ms > limits.max_wait_ms {
            return Err(ApiError::Validation(format!(
                "wait_ms: must be at most {}",
                limits.max_wait_ms
            )));
        }
        if let Some(ms) = req.lease_ms {
            vow_core::api::check_lease_ms("lease_ms", ms, limits)?;
        }
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let waiter = self.store.bus().queue_waiter(&tenant_id, &queue);
        let mut params = JobLease {
            tenant_id,
            queue,
            worker_id: req.worker_id,
            max_jobs,
            lease_ms: req.lease_ms,
            now: self.clock.now(),
        };
        loop {
            // Register for the wake-up before looking, so an enqueue between the look and
            // the wait is not missed.
            let mut woken = pin!(waiter.notified());
            woken.as_mut().enable();
            params.now = self.clock.now();
            let jobs = self.store.job_lease(&params).await?;
            if !jobs.is_empty() || Instant::now() >= deadline || self.shutdown.is_cancelled() {
                return jobs.into_iter().map(leased).collect();
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Returns the job once it is terminal, or as it is when `timeout` passes (or the
    /// server shuts down).
    pub async fn wait(
        &self,
        tenant_id: &TenantId,
        id: &JobId,
        timeout: Duration,
    ) -> Result<Job, ApiError> {
        let waiter = self.store.bus().job_waiter(id);
        let deadline = Instant::now() + timeout;
        loop {
            // Register before reading so the end cannot slip between the read and the wait.
            let mut ended = pin!(waiter.notified());
            ended.as_mut().enable();
            let job = self
                .store
                .job_get(tenant_id, id)
                .await?
                .ok_or(ApiError::NotFound("job"))?;
            if job.state.is_terminal() || Instant::now() >= deadline || self.shutdown.is_cancelled()
            {
                return Ok(job);
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }
}

fn leased(j: Job) -> Result<LeasedJob, ApiError> {
    let Some(lease_id) = j.lease_id.clone() else {
        tracing::error!(job = %j.id, "store returned a leased job without a lease id");
        return Err(ApiError::Internal);
    };
    let lease_expires_at = j.lease_expires_at.unwrap_or(j.run_at);
    let started_at = j.started_at.unwrap_or(lease_expires_at);
    Ok(LeasedJob {
        lease_id,
        lease_expires_at,
        lease_ms: (lease_expires_at.0 - started_at.0).max(0) as u64,
        id: j.id,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        payload: j.payload,
        queue: j.queue,
        priority: j.priority,
        group: j.group,
        metadata: j.metadata,
        traceparent: j.traceparent,
    })
}
