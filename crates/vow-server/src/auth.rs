//! Authentication: `Authorization: Bearer <key>` resolved to a [`Principal`] (tenant and
//! role), with a short-lived cache so a hot producer does not hit the store per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use vow_core::auth::{hash_key, hashes_match, Action, ApiKeySecret, Role};
use vow_core::{KeyId, TenantId};

use crate::error::ApiError;
use crate::App;

/// How long a verified key is trusted without asking the store again; bounds how long a
/// revoked key keeps working on another node.
const CACHE_TTL: Duration = Duration::from_secs(2);

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (`None` for the `VOW_ROOT_KEY` from the environment).
    pub key_id: Option<KeyId>,
    /// The key's tenant; `None` for root.
    pub tenant_id: Option<TenantId>,
    /// The key's role.
    pub role: Role,
}

impl Principal {
    /// The caller's tenant, if its role allows `action`; `403` otherwise.
    pub fn tenant_for(&self, action: Action) -> Result<TenantId, ApiError> {
        match (&self.tenant_id, self.role.allows(action)) {
            (Some(t), true) => Ok(t.clone()),
            _ => Err(ApiError::Forbidden(format!(
                "a {} key may not do this",
                self.role
            ))),
        }
    }

    /// Succeeds for the root key only.
    pub fn require_root(&self) -> Result<(), ApiError> {
        if self.role.allows(Action::ManageTenants) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only the root key manages tenants and keys".into(),
            ))
        }
    }
}

/// Verified keys by hash, with the time they were verified.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl KeyCache {
    fn get(&self, hash: &str) -> Option<Principal> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, hash: String, p: Principal) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        map.insert(hash, (p, Instant::now()));
    }

    /// Forgets every cached key (after a revocation on this node).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl App {
    /// Resolves a presented key.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, ApiError> {
        let hash = hash_key(presented);
        if let Some(p) = self.keys.get(&hash) {
            return Ok(p);
        }
        if let Some(root) = &self.root_key_hash {
            if hashes_match(root, &hash) {
                return Ok(Principal {
                    key_id: None,
                    tenant_id: None,
                    role: Role::Root,
                });
            }
        }
        let secret = ApiKeySecret::parse(presented).ok_or(ApiError::Unauthorized)?;
        let record = self
            .store
            .api_key_get(secret.id())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if record.revoked_at.is_some() || !hashes_match(&record.hash, &hash) {
            return Err(ApiError::Unauthorized);
        }
        let p = Principal {
            key_id: Some(record.id),
            tenant_id: record.tenant_id,
            role: record.role,
        };
        self.keys.put(hash, p.clone());
        Ok(p)
    }
}

impl FromRequestParts<App> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthorized)?
            .trim();
        app.authenticate(key).await
    }
}
