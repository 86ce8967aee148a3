//! Rust client for vow's HTTP API v1, and a [`Worker`] that leases jobs from queues and
//! runs async handlers on them.
//!
//! [`Client`] has one method per endpoint and speaks the wire types of
//! [`vow_core::api`], so it cannot drift from the server. API errors come back as
//! [`Error::Api`] carrying the server's problem document; [`Error::code`] gives its
//! stable code (`not_found`, `lease_lost`, …).
//!
//! ```no_run
//! # async fn demo() -> Result<(), vow_client::Error> {
//! use vow_client::{Client, Outcome, Worker};
//! use vow_core::api::EnqueueRequest;
//!
//! let client = Client::new("http://127.0.0.1:7400", "vow_key_…")?;
//! client.enqueue("emails", &EnqueueRequest::new(serde_json::json!({"to": "a@b.c"}))).await?;
//!
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! Worker::new(client)
//!     .handle("emails".parse().unwrap(), 4, |job| async move {
//!         let _payload = &job.job().payload;
//!         Outcome::Complete(None)
//!     })
//!     .run(shutdown)
//!     .await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod worker;

pub use client::{Client, Enqueued};
pub use error::Error;
pub use worker::{JobContext, Outcome, Worker};

/// Verifying vow's signed completion notices (Standard Webhooks): call
/// [`webhook::verify`] with the `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` headers and the raw body before trusting a notice.
pub mod webhook {
    pub use vow_core::webhook::{verify, VerifyError, DEFAULT_TOLERANCE_SECS, SECRET_PREFIX};
}
