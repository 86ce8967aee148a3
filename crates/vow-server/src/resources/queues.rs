//! Queues: list with counts, get, patch (pause/resume and limits).

use axum::extract::{Path, State};
use axum::Json;
use vow_core::api::{Items, QueuePatch, QueueView};
use vow_core::auth::Action;
use vow_store::QueueUpdate;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::service::queue_name;
use crate::App;

/// The tenant's queues with job counts by state.
#[utoipa::path(get, path = "/v1/queues", tag = "queues",
    responses((status = 200, body = Items<QueueView>)), security(("api_key" = [])))]
pub async fn list(
    State(app): State<App>,
    principal: Principal,
) -> Result<Json<Items<QueueView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let items = app.store.queue_list(&tenant_id, app.clock.now()).await?;
    Ok(Json(Items { items }))
}

/// One queue.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn get(
    State(app): State<App>,
    principal: Principal,
    Path(queue): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let queue = queue_name(&queue)?;
    let q = app
        .store
        .queue_get(&tenant_id, &queue, app.clock.now())
        .await?;
    Ok(Json(q.ok_or(ApiError::NotFound("queue"))?))
}

/// Change a queue's settings (creating it if needed): pause/resume, limits.
#[utoipa::path(patch, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = QueuePatch,
    responses((status = 200, body = QueueView)), security(("api_key" = [])))]
pub async fn patch(
    State(app): State<App>,
    principal: Principal,
    Path(queue): Path<String>,
    ApiJson(patch): ApiJson<QueuePatch>,
) -> Result<Json<QueueView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::ManageQueues)?;
    let name = queue_name(&queue)?;
    if let Some(Some(r)) = &patch.rate_limit {
        if !(r.per_second.is_finite() && r.per_second > 0.0) || r.burst == 0 {
            return Err(ApiError::Validation(
                "rate_limit: per_second > 0 and burst ≥ 1".into(),
            ));
        }
    }
    if matches!(patch.concurrency_limit, Some(Some(0)))
        || matches!(patch.group_concurrency_limit, Some(Some(0)))
    {
        return Err(ApiError::Validation(
            "concurrency limits must be at least 1 (null removes the limit)".into(),
        ));
    }
    let resumed = patch.paused == Some(false);
    let view = app
        .store
        .queue_update(&QueueUpdate {
            tenant_id: tenant_id.clone(),
            name: name.clone(),
            patch,
            now: app.clock.now(),
        })
        .await?;
    if resumed {
        app.store.bus().wake_queue(&tenant_id, &name);
    }
    Ok(Json(view))
}
