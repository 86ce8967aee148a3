//! Configurable limits on input, with the defaults of API.md.

use serde::{Deserialize, Serialize};

/// Limits enforced at the edge. Every one is configurable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest serialized payload (and result, progress, metadata) in bytes.
    pub max_payload_bytes: usize,
    /// Most jobs in one batch enqueue.
    pub max_batch: usize,
    /// Largest request body in bytes (a batch of big payloads needs room).
    pub max_body_bytes: usize,
    /// Largest page of a list.
    pub max_list_limit: usize,
    /// Most jobs one lease request may take.
    pub max_lease_jobs: u32,
    /// Longest long-poll of a lease request.
    pub max_wait_ms: u64,
    /// Longest lease, job timeout or heartbeat extension.
    pub max_lease_ms: u64,
    /// Most attempts a job may ask for.
    pub max_attempts: u32,
    /// Longest `/wait`.
    pub max_job_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_batch: 1_000,
            max_body_bytes: 16 * 1024 * 1024,
            max_list_limit: 500,
            max_lease_jobs: 1_000,
            max_wait_ms: 60_000,
            max_lease_ms: 24 * 3_600_000,
            max_attempts: 1_000,
            max_job_wait_ms: 300_000,
        }
    }
}
