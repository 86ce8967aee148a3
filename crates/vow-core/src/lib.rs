//! vow's domain: typed ids, time, validated names, the job model and its state
//! machine, the retry policy and the API v1 wire types shared by server and client.
//!
//! Nothing here does I/O; every decision that can be made without a store is made here
//! so that it can be tested in isolation (see `machine` and `retry`).

pub mod api;
pub mod auth;
pub mod egress;
pub mod error;
pub mod ids;
pub mod job;
pub mod limits;
pub mod machine;
pub mod names;
pub mod notice;
pub mod retry;
pub mod time;
pub mod webhook;

pub use error::ValidationError;
pub use ids::{DeliveryId, JobId, KeyId, LeaseId, TenantId, WebhookId};
pub use job::{Backoff, ErrorInfo, Job, JobState};
pub use names::{GroupKey, QueueName, TenantName};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
