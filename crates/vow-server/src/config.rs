//! Server configuration: flags and `VOW_*` variables for the common settings, a TOML
//! file for everything (see `docs/vow.example.toml`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use vow_core::limits::Limits;

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
        // Every limit and retention setting is spelled out (none left to its serde default).
        let table: toml::Table = toml::from_str(text).unwrap();
        for (name, want) in [
            ("limits", serde_json::to_value(Limits::default()).unwrap()),
            (
                "retention",
                serde_json::to_value(Retention::default()).unwrap(),
            ),
        ] {
            let section = table[name].as_table().unwrap();
            for key in want.as_object().unwrap().keys() {
                assert!(
                    section.contains_key(key),
                    "docs/vow.example.toml lacks {name}.{key}"
                );
            }
        }
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
