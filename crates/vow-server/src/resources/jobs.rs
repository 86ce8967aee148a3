//! Jobs (producer side): enqueue, batch enqueue, get, list, events, wait, cancel, retry.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vow_core::api::{
    BatchEnqueueRequest, EnqueueRequest, Items, JobEventView, JobListQuery, JobView, Page,
    WaitQuery,
};
use vow_core::auth::Action;
use vow_core::job::NewJob;
use vow_core::{JobState, TenantId};
use vow_store::{JobCancel, JobInsertMany, JobList, JobRetry};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::service::{job_id, queue_name};
use crate::App;

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
            _ => Err(ApiError::Validation(
                "Idempotency-Key: must be 1 to 255 visible ASCII characters".into(),
            )),
        },
    }
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    header_str(headers, "traceparent").filter(|t| t.len() <= 128)
}

/// Enqueue one job.
#[utoipa::path(post, path = "/v1/queues/{queue}/jobs", tag = "jobs",
    params(("queue" = String, Path, description = "Queue name"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the original job")),
    request_body = EnqueueRequest,
    responses((status = 202, description = "Durably enqueued", body = JobView),
              (status = 200, description = "Same Idempotency-Key and body: the original job", body = JobView),
              (status = 409, description = "Same Idempotency-Key, different body (`idempotency_conflict`), or a callback_url before the tenant has a callback secret (`callback_secret_missing`)", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn enqueue(
    State(app): State<App>,
    principal: Principal,
    Path(queue): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> Result<Response, ApiError> {
    let tenant_id = principal.tenant_for(Action::Enqueue)?;
    let queue = queue_name(&queue)?;
    let now = app.clock.now();
    let job = req.validate(
        &app.limits,
        now,
        idempotency_key(&headers)?,
        traceparent(&headers),
    )?;
    require_callback_secret(&app, &tenant_id, std::slice::from_ref(&job)).await?;
    let mut inserted = app
        .store
        .job_insert_many(JobInsertMany {
            tenant_id,
            queue,
            jobs: vec![job],
            now,
        })
        .await?;
    let inserted = inserted.pop().ok_or(ApiError::Internal)?;
    let status = if inserted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/jobs/{}", inserted.job.id);
    let mut resp = (status, Json(JobView::from(inserted.job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Refuses jobs with a `callback_url` while the tenant has no callback secret: their
/// notices could not be verified by anyone.
async fn require_callback_secret(
    app: &App,
    tenant_id: &TenantId,
    jobs: &[NewJob],
) -> Result<(), ApiError> {
    if jobs.iter().any(|j| j.callback_url.is_some())
        && !app.store.callback_secret_exists(tenant_id).await?
    {
        return Err(ApiError::CallbackSecretMissing);
    }
    Ok(())
}

/// Enqueue up to 1000 jobs atomically.
#[utoipa::path(post, path = "/v1/queues/{queue}/jobs/batch", tag = "jobs",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = BatchEnqueueRequest,
    responses((status = 202, description = "All jobs durably enqueued", body = Items<JobView>),
              (status = 409, description = "A callback_url before the tenant has a callback secret (`callback_secret_missing`)", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn enqueue_batch(
    State(app): State<App>,
    principal: Principal,
    Path(queue): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BatchEnqueueRequest>,
) -> Result<(StatusCode, Json<Items<JobView>>), ApiError> {
    let tenant_id = principal.tenant_for(Action::Enqueue)?;
    let queue = queue_name(&queue)?;
    if req.jobs.is_empty() || req.jobs.len() > app.limits.max_batch {
        return Err(ApiError::Validation(format!(
            "jobs: a batch holds 1 to {} jobs, this one has {}",
            app.limits.max_batch,
            req.jobs.len()
        )));
    }
    let now = app.clock.now();
    let trace = traceparent(&headers);
    let jobs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            j.validate(&app.limits, now, None, trace.clone())
                .map_err(|e| {
                    let e = ApiError::from(e);
                    match e {
                        ApiError::Validation(m) => ApiError::Validation(format!("jobs[{i}].{m}")),
                        ApiError::PayloadTooLarge(m) => {
                            ApiError::PayloadTooLarge(format!("jobs[{i}]: {m}"))
                        }
                        other => other,
                    }
                })
        })
        .collect::<Result<Vec<NewJob>, ApiError>>()?;
    require_callback_secret(&app, &tenant_id, &jobs).await?;
    let inserted = app
        .store
        .job_insert_many(JobInsertMany {
            tenant_id,
            queue,
            jobs,
            now,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Items {
            items: inserted.into_iter().map(|i| JobView::from(i.job)).collect(),
        }),
    ))
}

/// Get one job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn get(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let id = job_id(&id)?;
    let job = app
        .store
        .job_get(&tenant_id, &id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    Ok(Json(job.into()))
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListQuery),
    responses((status = 200, body = Page<JobView>)),
    security(("api_key" = [])))]
pub async fn list(
    State(app): State<App>,
    principal: Principal,
    ApiQuery(q): ApiQuery<JobListQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > app.limits.max_list_limit {
        return Err(ApiError::Validation(format!(
            "limit: must be 1 to {}",
            app.limits.max_list_limit
        )));
    }
    let params = JobList {
        tenant_id: Some(tenant_id),
        queue: q.queue.as_deref().map(queue_name).transpose()?,
        state: q.state.as_deref().map(str::parse::<JobState>).transpose()?,
        group: q.group.as_deref().map(str::parse).transpose()?,
        tag: q.tag,
        limit,
        before: q
            .cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| ApiError::Validation("cursor: not a cursor from this API".into()))
            })
            .transpose()?,
    };
    let page = app.store.job_list(&params).await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(JobView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A job's events (transitions and attempts), oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Items<JobEventView>)),
    security(("api_key" = [])))]
pub async fn events(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Items<JobEventView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let id = job_id(&id)?;
    let items = app.store.job_event_list(&tenant_id, &id).await?;
    if items.is_empty() && app.store.job_get(&tenant_id, &id).await?.is_none() {
        return Err(ApiError::NotFound("job"));
    }
    Ok(Json(Items { items }))
}

/// Wait until the job is terminal, or the timeout passes (then the current job).
#[utoipa::path(get, path = "/v1/jobs/{id}/wait", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), WaitQuery),
    responses((status = 200, description = "The job: terminal, or as it is at the timeout", body = JobView)),
    security(("api_key" = [])))]
pub async fn wait(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let id = job_id(&id)?;
    let timeout = q.timeout_ms.unwrap_or(30_000);
    if timeout > app.limits.max_job_wait_ms {
        return Err(ApiError::Validation(format!(
            "timeout_ms: must be at most {}",
            app.limits.max_job_wait_ms
        )));
    }
    let job = app
        .wait(&tenant_id, &id, Duration::from_millis(timeout))
        .await?;
    Ok(Json(job.into()))
}

/// Cancel a job that has not finished.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 409, description = "Already terminal", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Control)?;
    let id = job_id(&id)?;
    let job = app
        .store
        .job_cancel(&JobCancel {
            tenant_id,
            id,
            now: app.clock.now(),
        })
        .await?;
    Ok(Json(job.into()))
}

/// Replay a dead or cancelled job (attempts reset).
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 409, description = "Not dead or cancelled", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn retry(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Control)?;
    let id = job_id(&id)?;
    let job = app
        .store
        .job_retry(&JobRetry {
            tenant_id,
            id,
            now: app.clock.now(),
        })
        .await?;
    Ok(Json(job.into()))
}
