//! The worker protocol: lease (long-poll), heartbeat, complete, fail, batch acks.

use axum::extract::{Path, State};
use axum::Json;
use vow_core::api::{
    check_lease_ms, check_size, AckItemResult, AckRequest, AckResponse, CompleteRequest,
    FailRequest, HeartbeatRequest, HeartbeatResponse, JobView, LeaseRequest, LeaseResponse,
};
use vow_core::auth::Action;
use vow_core::{Job, TenantId};
use vow_store::{AckItem, JobAckMany, JobHeartbeat, StoreError};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::service::{job_id, queue_name};
use crate::App;

/// Lease jobs; long-polls up to `wait_ms` when none is available.
#[utoipa::path(post, path = "/v1/queues/{queue}/lease", tag = "worker",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = LeaseRequest,
    responses((status = 200, description = "Leased jobs (empty after the wait)", body = LeaseResponse)),
    security(("api_key" = [])))]
pub async fn lease(
    State(app): State<App>,
    principal: Principal,
    Path(queue): Path<String>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Work)?;
    let queue = queue_name(&queue)?;
    let jobs = app.lease(tenant_id, queue, req).await?;
    Ok(Json(LeaseResponse { jobs }))
}

/// Extend a lease and report progress.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "worker",
    params(("id" = String, Path, description = "Job id")),
    request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse),
              (status = 409, description = "lease_lost: stop working on this job", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn heartbeat(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Work)?;
    let id = job_id(&id)?;
    let extend_ms = req.extend_ms.unwrap_or(30_000);
    check_lease_ms("extend_ms", extend_ms, &app.limits)?;
    if let Some(p) = &req.progress {
        check_size("progress", p, app.limits.max_payload_bytes)?;
    }
    let lease_expires_at = app
        .store
        .job_heartbeat(JobHeartbeat {
            tenant_id,
            id,
            lease_id: req.lease_id,
            extend_ms,
            progress: req.progress,
            now: app.clock.now(),
        })
        .await?;
    Ok(Json(HeartbeatResponse { lease_expires_at }))
}

async fn ack_one(app: &App, tenant_id: TenantId, item: AckItem) -> Result<Job, ApiError> {
    let mut out = app
        .store
        .job_ack_many(JobAckMany {
            tenant_id,
            items: vec![item],
            now: app.clock.now(),
        })
        .await?;
    Ok(out.pop().ok_or(ApiError::Internal)??)
}

/// Record success.
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "worker",
    params(("id" = String, Path, description = "Job id")),
    request_body = CompleteRequest,
    responses((status = 200, body = JobView),
              (status = 409, description = "lease_lost: the outcome was not recorded", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn complete(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Work)?;
    let id = job_id(&id)?;
    if let Some(r) = &req.result {
        check_size("result", r, app.limits.max_payload_bytes)?;
    }
    let item = AckItem::Complete {
        id,
        lease_id: req.lease_id,
        result: req.result,
    };
    Ok(Json(ack_one(&app, tenant_id, item).await?.into()))
}

/// Record a failed attempt: retried with backoff, or dead.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "worker",
    params(("id" = String, Path, description = "Job id")),
    request_body = FailRequest,
    responses((status = 200, body = JobView),
              (status = 409, description = "lease_lost: the outcome was not recorded", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn fail(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Work)?;
    let id = job_id(&id)?;
    let item = fail_item(
        &app,
        id,
        req.lease_id,
        req.error,
        req.retryable,
        req.retry_after_ms,
    )?;
    Ok(Json(ack_one(&app, tenant_id, item).await?.into()))
}

fn fail_item(
    app: &App,
    id: vow_core::JobId,
    lease_id: vow_core::LeaseId,
    error: vow_core::api::FailureBody,
    retryable: Option<bool>,
    retry_after_ms: Option<u64>,
) -> Result<AckItem, ApiError> {
    if error.message.len() > 16 * 1024 || error.code.as_ref().is_some_and(|c| c.len() > 128) {
        return Err(ApiError::Validation(
            "error: message at most 16 KiB, code at most 128 bytes".into(),
        ));
    }
    if let Some(ms) = retry_after_ms {
        if ms > app.limits.max_lease_ms * 365 {
            return Err(ApiError::Validation(
                "retry_after_ms: too far in the future".into(),
            ));
        }
    }
    Ok(AckItem::Fail {
        id,
        lease_id,
        message: error.message,
        code: error.code,
        retryable: retryable.unwrap_or(true),
        retry_after_ms,
    })
}

/// Record many completions and failures in one request and one commit.
#[utoipa::path(post, path = "/v1/acks", tag = "worker",
    request_body = AckRequest,
    responses((status = 200, description = "One result per item, in request order", body = AckResponse)),
    security(("api_key" = [])))]
pub async fn acks(
    State(app): State<App>,
    principal: Principal,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Work)?;
    let n_complete = req.complete.len();
    if n_complete + req.fail.len() > app.limits.max_batch {
        return Err(ApiError::Validation(format!(
            "at most {} acks per request",
            app.limits.max_batch
        )));
    }
    let mut items = Vec::with_capacity(n_complete + req.fail.len());
    let mut ids = Vec::with_capacity(items.capacity());
    for c in req.complete {
        if let Some(r) = &c.result {
            check_size("result", r, app.limits.max_payload_bytes)?;
        }
        ids.push(c.id.clone());
        items.push(AckItem::Complete {
            id: c.id,
            lease_id: c.lease_id,
            result: c.result,
        });
    }
    for f in req.fail {
        ids.push(f.id.clone());
        items.push(fail_item(
            &app,
            f.id,
            f.lease_id,
            f.error,
            f.retryable,
            f.retry_after_ms,
        )?);
    }
    let outcomes = if items.is_empty() {
        Vec::new()
    } else {
        app.store
            .job_ack_many(JobAckMany {
                tenant_id,
                items,
                now: app.clock.now(),
            })
            .await?
    };
    let mut results: Vec<AckItemResult> = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, r)| match r {
            Ok(job) => AckItemResult {
                id,
                ok: true,
                state: Some(job.state),
                code: None,
            },
            Err(e) => {
                let code = match e {
                    StoreError::NotFound => "not_found",
                    StoreError::LeaseLost | StoreError::InvalidState(_) => "lease_lost",
                    _ => "internal_error",
                };
                AckItemResult {
                    id,
                    ok: false,
                    state: None,
                    code: Some(code.into()),
                }
            }
        })
        .collect();
    let fail = results.split_off(n_complete.min(results.len()));
    Ok(Json(AckResponse {
        complete: results,
        fail,
    }))
}
