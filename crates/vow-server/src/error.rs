//! The one mapping from errors to HTTP: status, stable `code`, `detail`, as
//! `application/problem+json`. Internal causes are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use vow_core::api::Problem;
use vow_core::ValidationError;
use vow_store::StoreError;

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// The input breaks a rule (unknown field, bad value, bad name).
    #[error("{0}")]
    Validation(String),
    /// A body, payload or batch is over its limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not `application/json`.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// No key, or a key vow does not know (or revoked).
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthorized,
    /// The key is valid but its role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such object for this tenant (also: another tenant's object).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The lease is stale.
    #[error("the lease is no longer held: it expired, the job was cancelled, or another attempt took over")]
    LeaseLost,
    /// Same idempotency key, different request.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The job is in a state that does not allow this.
    #[error("{0}")]
    InvalidState(String),
    /// Uniqueness conflict (e.g. tenant name).
    #[error("{0}")]
    Conflict(String),
    /// A job names a `callback_url` but its tenant has no callback secret to sign with.
    #[error("jobs with a callback_url need the tenant's callback secret first: create it once with POST /v1/callback-secret (or `vow callback-secret rotate`) and give it to the receiver")]
    CallbackSecretMissing,
    /// The store is unreachable; retry later.
    #[error("the store is unavailable; retry later")]
    Unavailable,
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another node or later")]
    ShuttingDown,
    /// A bug. The cause is logged, not shown.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status and stable code of this error.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Validation(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            NotFound(_) | NoRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            LeaseLost => (StatusCode::CONFLICT, "lease_lost"),
            IdempotencyConflict(_) => (StatusCode::CONFLICT, "idempotency_conflict"),
            CallbackSecretMissing => (StatusCode::CONFLICT, "callback_secret_missing"),
            InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_code();
        Problem {
            kind: format!("https://vow.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_code();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            ValidationError::Invalid { .. } => ApiError::Validation(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("job"),
            StoreError::LeaseLost => ApiError::LeaseLost,
            StoreError::InvalidState(s) => {
                ApiError::InvalidState(format!("the job is {s}, which does not allow this"))
            }
            StoreError::IdempotencyConflict(id) => ApiError::IdempotencyConflict(format!(
                "this Idempotency-Key was used for job {id} with a different request body"
            )),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "store unavailable");
                ApiError::Unavailable
            }
            StoreError::Internal(source) => {
                tracing::error!(error = %source, chain = ?source, "store failure");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_and_statuses_match() {
        let doc = include_str!("../../../docs/errors.md");
        let all = [
            ApiError::InvalidJson(String::new()),
            ApiError::Validation(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::UnsupportedMediaType,
            ApiError::Unauthorized,
            ApiError::Forbidden(String::new()),
            ApiError::NotFound("job"),
            ApiError::NoRoute(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::LeaseLost,
            ApiError::IdempotencyConflict(String::new()),
            ApiError::InvalidState(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::CallbackSecretMissing,
            ApiError::Unavailable,
            ApiError::ShuttingDown,
            ApiError::Internal,
        ];
        for e in all {
            let (status, code) = e.status_code();
            let row = format!("| `{code}` | {} |", status.as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
            let p = e.problem();
            assert_eq!((p.status, p.code.as_str()), (status.as_u16(), code));
        }
    }
}
