//! Server configuration: flags and `VOW_*` variables for the common settings, a TOML
//! file for everything (see `docs/vow.example.toml`).

use serde::Deserialize;
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
            root_key: None,
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
                parsed.shutdown_grace_ms
            ),
            (
                d.listen,
                &d.data_dir,
                &d.store,
                &d.limits,
                d.shutdown_grace_ms
            )
        );
        // Every limit is spelled out (none left to its serde default).
        let table: toml::Table = toml::from_str(text).unwrap();
        let limits = table["limits"].as_table().unwrap();
        let want = serde_json::to_value(Limits::default()).unwrap();
        for key in want.as_object().unwrap().keys() {
            assert!(
                limits.contains_key(key),
                "docs/vow.example.toml lacks limits.{key}"
            );
        }
    }
}
