//! Tenants and API keys (root key only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vow_core::api::{Items, KeyCreate, KeyCreated, KeyView, TenantCreate, TenantView};
use vow_core::auth::{ApiKeySecret, Role};
use vow_core::{KeyId, TenantId};
use vow_store::{ApiKeyInsert, ApiKeyRecord, StoreError, TenantInsert};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::App;

fn key_view(r: ApiKeyRecord) -> KeyView {
    KeyView {
        id: r.id,
        tenant_id: r.tenant_id,
        role: r.role,
        created_at: r.created_at,
        revoked_at: r.revoked_at,
    }
}

async fn tenant_by_ref(app: &App, r: &str) -> Result<TenantView, ApiError> {
    let found = match r.parse::<TenantId>() {
        Ok(id) => app.store.tenant_get(&id).await?,
        Err(_) => match r.parse() {
            Ok(name) => app.store.tenant_get_by_name(&name).await?,
            Err(_) => None,
        },
    };
    found.ok_or(ApiError::NotFound("tenant"))
}

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantCreate,
    responses((status = 201, body = TenantView), (status = 409, description = "Name taken", body = vow_core::api::Problem)),
    security(("api_key" = [])))]
pub async fn create(
    State(app): State<App>,
    principal: Principal,
    ApiJson(req): ApiJson<TenantCreate>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    principal.require_root()?;
    let t = app
        .store
        .tenant_insert(&TenantInsert {
            id: TenantId::generate(),
            name: req.name,
            max_pending: req.max_pending,
            now: app.clock.now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Items<TenantView>)), security(("api_key" = [])))]
pub async fn list(
    State(app): State<App>,
    principal: Principal,
) -> Result<Json<Items<TenantView>>, ApiError> {
    principal.require_root()?;
    Ok(Json(Items {
        items: app.store.tenant_list().await?,
    }))
}

/// Create an API key for a tenant; the plaintext is shown once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name or id")),
    request_body = KeyCreate,
    responses((status = 201, body = KeyCreated)), security(("api_key" = [])))]
pub async fn key_create(
    State(app): State<App>,
    principal: Principal,
    Path(tenant): Path<String>,
    ApiJson(req): ApiJson<KeyCreate>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    principal.require_root()?;
    if req.role == Role::Root {
        return Err(ApiError::Validation(
            "role: a tenant key is admin, producer or worker".into(),
        ));
    }
    let tenant = tenant_by_ref(&app, &tenant).await?;
    let secret = ApiKeySecret::generate();
    let record = app
        .store
        .api_key_insert(&ApiKeyInsert {
            id: secret.id().clone(),
            tenant_id: Some(tenant.id),
            role: req.role,
            hash: secret.hash(),
            now: app.clock.now(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            record: key_view(record),
            key: secret.expose().to_owned(),
        }),
    ))
}

/// List a tenant's keys (never the secrets).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name or id")),
    responses((status = 200, body = Items<KeyView>)), security(("api_key" = [])))]
pub async fn key_list(
    State(app): State<App>,
    principal: Principal,
    Path(tenant): Path<String>,
) -> Result<Json<Items<KeyView>>, ApiError> {
    principal.require_root()?;
    let tenant = tenant_by_ref(&app, &tenant).await?;
    let keys = app.store.api_key_list(Some(&tenant.id)).await?;
    Ok(Json(Items {
        items: keys.into_iter().map(key_view).collect(),
    }))
}

/// Revoke a key.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "tenants",
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 200, body = KeyView)), security(("api_key" = [])))]
pub async fn key_revoke(
    State(app): State<App>,
    principal: Principal,
    Path(key_id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    principal.require_root()?;
    let id: KeyId = key_id.parse().map_err(|_| ApiError::NotFound("key"))?;
    let record = app
        .store
        .api_key_revoke(&id, app.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("key"),
            e => e.into(),
        })?;
    app.keys.clear();
    Ok(Json(key_view(record)))
}
