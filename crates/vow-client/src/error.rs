//! The client's error type: API problems kept apart from transport failures.

use vow_core::api::Problem;

/// Why a call to the server did not return what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an RFC 7807 problem document (any 4xx or 5xx that
    /// carries one). [`Error::code`] gives its stable `code`.
    #[error("{} ({}): {}", .0.code, .0.status, .0.detail)]
    Api(Problem),
    /// The server answered with an error status but no problem document (a proxy in
    /// between, or a server that is not vow).
    #[error("HTTP {status} without a problem document: {body}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The request did not complete: connection refused, timeout, TLS, broken body.
    #[error("request to the server failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// A successful response whose body is not what the API promises.
    #[error("could not decode the server's response: {0}")]
    Decode(#[source] serde_json::Error),
    /// The base URL given to [`crate::Client::new`] cannot be used.
    #[error("invalid base URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The problem's stable code (`not_found`, `lease_lost`, …) for API errors; `None`
    /// for transport and decoding failures.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(p) => Some(&p.code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(p) => Some(p.status),
            Error::UnexpectedStatus { status, .. } => Some(*status),
            Error::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The problem document, for API errors.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the server rejected a heartbeat, complete or fail because the lease is
    /// stale or unknown (`409 lease_lost`): someone else owns the job now.
    pub fn is_lease_lost(&self) -> bool {
        self.code() == Some("lease_lost")
    }

    /// Whether retrying the same request later may succeed: transport failures, `5xx`,
    /// `429` and `503`. Validation, auth and conflict errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api(_) | Error::UnexpectedStatus { .. } => {
                matches!(self.status(), Some(s) if s == 429 || s == 408 || s >= 500)
            }
            Error::Decode(_) | Error::InvalidUrl { .. } => false,
        }
    }
}
