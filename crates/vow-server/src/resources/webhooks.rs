//! Completion notices: webhook subscriptions, the callback secret, deliveries (with
//! their attempt log) and replay.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vow_core::api::{
    CallbackSecretView, DeliveryView, Items, Page, PageQuery, WebhookCreate, WebhookView,
};
use vow_core::auth::Action;
use vow_core::{DeliveryId, WebhookId};
use vow_store::{DeliveryList, SecretRotate, WebhookInsert};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::service::job_id;
use crate::App;

/// Most deliveries `GET /v1/jobs/{id}/deliveries` returns (a job has a handful).
const JOB_DELIVERIES: usize = 500;

fn webhook_id(s: &str) -> Result<WebhookId, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound("webhook"))
}

fn delivery_id(s: &str) -> Result<DeliveryId, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound("delivery"))
}

/// Subscribe to completion notices of the tenant's jobs. The answer carries the signing
/// secret: the only time it is shown.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body = WebhookCreate,
    responses((status = 201, body = WebhookView), (status = 400, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn create(
    State(app): State<App>,
    principal: Principal,
    ApiJson(body): ApiJson<WebhookCreate>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let tenant_id = principal.tenant_for(Action::ManageWebhooks)?;
    body.validate()?;
    let mut events = Vec::with_capacity(body.events.len());
    for e in body.events {
        if !events.contains(&e) {
            events.push(e);
        }
    }
    let view = app
        .store
        .webhook_insert(&WebhookInsert {
            tenant_id,
            id: WebhookId::generate(),
            url: body.url,
            events,
            queues: body.queues,
            secret: vow_core::webhook::generate_secret(),
            now: app.clock.now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tenant's subscriptions (without secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Items<WebhookView>)), security(("api_key" = [])))]
pub async fn list(
    State(app): State<App>,
    principal: Principal,
) -> Result<Json<Items<WebhookView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let items = app.store.webhook_list(&tenant_id).await?;
    Ok(Json(Items { items }))
}

/// One subscription (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn get(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let view = app.store.webhook_get(&tenant_id, &webhook_id(&id)?).await?;
    Ok(Json(view.ok_or(ApiError::NotFound("webhook"))?))
}

/// Remove a subscription; its pending deliveries become dead.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Removed"), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn delete(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant_id = principal.tenant_for(Action::ManageWebhooks)?;
    app.store
        .webhook_delete(&tenant_id, &webhook_id(&id)?, app.clock.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a subscription's signing secret. The answer carries the new secret; the old
/// one keeps signing (a second signature) for `secret_grace_ms` (default 24 h).
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::ManageWebhooks)?;
    let view = app
        .store
        .webhook_secret_rotate(&SecretRotate {
            tenant_id,
            webhook_id: Some(webhook_id(&id)?),
            secret: vow_core::webhook::generate_secret(),
            now: app.clock.now(),
            grace_ms: app.webhooks.secret_grace_ms,
        })
        .await?;
    Ok(Json(view))
}

/// A subscription's deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), PageQuery),
    responses((status = 200, body = Page<DeliveryView>), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn deliveries(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let id = webhook_id(&id)?;
    if app.store.webhook_get(&tenant_id, &id).await?.is_none() {
        return Err(ApiError::NotFound("webhook"));
    }
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > app.limits.max_list_limit {
        return Err(ApiError::Validation(format!(
            "limit: must be 1 to {}",
            app.limits.max_list_limit
        )));
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse()
                .map_err(|_| ApiError::Validation("cursor: not a cursor from this API".into()))
        })
        .transpose()?;
    let page = app
        .store
        .delivery_list(&DeliveryList {
            tenant_id,
            webhook_id: Some(id),
            job_id: None,
            limit,
            before,
        })
        .await?;
    Ok(Json(page))
}

/// A job's notices (its `callback_url` and the subscriptions it matched), newest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Items<DeliveryView>), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn job_deliveries(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Items<DeliveryView>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let id = job_id(&id)?;
    let page = app
        .store
        .delivery_list(&DeliveryList {
            tenant_id: tenant_id.clone(),
            webhook_id: None,
            job_id: Some(id.clone()),
            limit: JOB_DELIVERIES,
            before: None,
        })
        .await?;
    if page.items.is_empty() && app.store.job_get(&tenant_id, &id).await?.is_none() {
        return Err(ApiError::NotFound("job"));
    }
    Ok(Json(Items { items: page.items }))
}

/// One delivery with its attempt log (status, latency, start of the answer).
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id (its webhook-id)")),
    responses((status = 200, body = DeliveryView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn delivery_get(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let view = app
        .store
        .delivery_get(&tenant_id, &delivery_id(&id)?)
        .await?;
    Ok(Json(view.ok_or(ApiError::NotFound("delivery"))?))
}

/// Send a delivery again now (replay), with a fresh retry schedule: for dead deliveries,
/// or to re-send one that was delivered. Same `webhook-id`.
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id (its webhook-id)")),
    responses((status = 200, body = DeliveryView), (status = 404, body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn delivery_retry(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Control)?;
    let view = app
        .store
        .delivery_retry(&tenant_id, &delivery_id(&id)?, app.clock.now())
        .await?;
    Ok(Json(view))
}

/// Create or rotate the tenant's secret for per-job `callback_url` notices. The answer
/// carries it: the only time it is shown. The previous one keeps signing for
/// `secret_grace_ms` (default 24 h).
#[utoipa::path(post, path = "/v1/callback-secret", tag = "webhooks",
    responses((status = 200, body = CallbackSecretView)), security(("api_key" = [])))]
pub async fn callback_secret(
    State(app): State<App>,
    principal: Principal,
) -> Result<Json<CallbackSecretView>, ApiError> {
    let tenant_id = principal.tenant_for(Action::ManageWebhooks)?;
    let view = app
        .store
        .callback_secret_rotate(&SecretRotate {
            tenant_id,
            webhook_id: None,
            secret: vow_core::webhook::generate_secret(),
            now: app.clock.now(),
            grace_ms: app.webhooks.secret_grace_ms,
        })
        .await?;
    Ok(Json(view))
}
