//! Server configuration: flags and `VOW_*` variables for the common settings, a TOML
//! file for everything (see `docs/vow.example.toml`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use vow_core::egress::EgressPolicy;
use vow_core::limits::Limits;
use vow_core::notice::{Breaker, RetrySchedule};

/// Everything `vow serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory of the embedded store (and of the bootstrap key files).
    pub data_dir: PathBuf,
    /// Store URL: `None` or `sqlite:` for the embedded store in `data_dir`;
    /// `sqlite:///path/to/file.db` for another file; `postgres://…` for PostgreSQL
    /// (any number of nodes on one database).
    pub store: Option<String>,
    /// Input limits.
    pub limits: Limits,
    /// How long to wait for in-flight requests after SIGTERM/SIGINT before exiting.
    pub shutdown_grace_ms: u64,
    /// How long finished jobs are kept, and how often they are pruned.
    pub retention: Retention,
    /// Plaintext root key to accept instead of (or besides) the stored one.
    #[serde(skip)]
    pub root_key: Option<String>,
    /// Address ranges completion notices may reach although they are loopback, private,
    /// link-local or metadata addresses (the SSRF guard refuses those otherwise), as
    /// CIDRs, e.g. `["10.1.0.0/16"]`. Env: `VOW_WEBHOOK_ALLOW_CIDRS` (comma-separated).
    pub webhook_allow_cidrs: Vec<String>,
    /// Delivery of completion notices.
    pub webhooks: WebhookSettings,
}

/// How completion notices are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Longest wait for a receiver's answer (connect included).
    pub timeout_ms: u64,
    /// Delays after the 1st, 2nd, … failed attempt; past the last the delivery is dead.
    pub retry_schedule_ms: RetrySchedule,
    /// Circuit breaker per endpoint.
    pub breaker: Breaker,
    /// Most deliveries in flight at once (on the node running the dispatcher).
    pub max_in_flight: usize,
    /// Most deliveries in flight to one endpoint (a tenant's receiver origin).
    pub max_in_flight_per_endpoint: usize,
    /// How long a rotated secret keeps signing deliveries beside the new one.
    pub secret_grace_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            retry_schedule_ms: RetrySchedule::default(),
            breaker: Breaker::default(),
            max_in_flight: 64,
            max_in_flight_per_endpoint: 8,
            secret_grace_ms: 86_400_000,
        }
    }
}

impl ServerConfig {
    /// The SSRF guard for outbound notices, from `webhook_allow_cidrs`.
    pub fn egress_policy(&self) -> Result<EgressPolicy, vow_core::ValidationError> {
        self.webhook_allow_cidrs.join(",").parse()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("vow-data"),
            store: None,
            limits: Limits::default(),
            shutdown_grace_ms: 30_000,
            retention: Retention::default(),
            root_key: None,
            webhook_allow_cidrs: Vec::new(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// Retention of finished jobs: how long after it finished a job (with its events and
/// idempotency key) is deleted, per terminal state; `0` keeps that state forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// How long `completed` jobs are kept, in milliseconds (`0`: forever).
    pub completed_ms: u64,
    /// How long `cancelled` jobs are kept, in milliseconds (`0`: forever).
    pub cancelled_ms: u64,
    /// How long `dead` jobs are kept, in milliseconds (`0`: forever).
    pub dead_ms: u64,
    /// How often the pruner looks for jobs past their retention (`0`: never prune).
    pub interval_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_ms: 24 * 3_600_000,
            cancelled_ms: 24 * 3_600_000,
            dead_ms: 7 * 24 * 3_600_000,
            interval_ms: 60_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_lists_every_setting_with_its_default() {
        let text = include_str!("../../../docs/vow.example.toml");
        let parsed: ServerConfig = toml::from_str(text).expect("the example parses");
        let d = ServerConfig::default();
        assert_eq!(
            (
                parsed.listen,
                &parsed.data_dir,
                &parsed.store,
                &parsed.limits,
                parsed.shutdown_grace_ms,
                &parsed.retention
            ),
            (
                d.listen,
                &d.data_dir,
                &d.store,
                &d.limits,
                d.shutdown_grace_ms,
                &d.retention
            )
        );
        assert_eq!(
            (&parsed.webhook_allow_cidrs, &parsed.webhooks),
            (&d.webhook_allow_cidrs, &d.webhooks)
        );
        // Every setting of each table is spelled out (none left to its serde default).
        let table: toml::Table = toml::from_str(text).unwrap();
        let spelled = |path: &str, want: serde_json::Value| {
            let mut t = &table;
            for part in path.split('.') {
                t = t[part].as_table().unwrap();
            }
            for key in want.as_object().unwrap().keys() {
                assert!(
                    t.contains_key(key),
                    "docs/vow.example.toml lacks {path}.{key}"
                );
            }
        };
        spelled("limits", serde_json::to_value(Limits::default()).unwrap());
        spelled(
            "retention",
            serde_json::to_value(Retention::default()).unwrap(),
        );
        spelled("webhooks", serde_json::to_value(&d.webhooks).unwrap());
        spelled(
            "webhooks.breaker",
            serde_json::to_value(d.webhooks.breaker).unwrap(),
        );
        assert!(table.contains_key("webhook_allow_cidrs"));
    }

    #[test]
    fn retention_is_read_from_its_table_and_rejects_typos() {
        let cfg: ServerConfig =
            toml::from_str("[retention]\ncompleted_ms = 0\ninterval_ms = 5\n").unwrap();
        let want = Retention {
            completed_ms: 0,
            interval_ms: 5,
            ..Retention::default()
        };
        assert_eq!(cfg.retention, want);
        assert!(toml::from_str::<ServerConfig>("[retention]\ncompleted = 1\n").is_err());
    }
}
