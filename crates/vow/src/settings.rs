//! Where settings come from: the server's configuration (flags over file over
//! defaults) and the client's API key (flag or variable over the key file).

use std::path::{Path, PathBuf};

use anyhow::Context;
use vow_server::ServerConfig;

use crate::cli::ServeArgs;

/// The data dir when neither `--data-dir` nor `VOW_DATA_DIR` is given.
pub const DEFAULT_DATA_DIR: &str = "vow-data";

/// Which bootstrap key file a command falls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// `default-admin.key`: everything within the `default` tenant.
    Admin,
    /// `root.key`: tenants and keys.
    Root,
}

impl KeyFile {
    fn name(self) -> &'static str {
        match self {
            KeyFile::Admin => "default-admin.key",
            KeyFile::Root => "root.key",
        }
    }
}

/// The API key to use: `explicit` (from `--api-key` or `VOW_API_KEY`) if given, else
/// the contents of the key file in `data_dir`.
pub fn resolve_api_key(
    explicit: Option<&str>,
    data_dir: Option<&Path>,
    file: KeyFile,
) -> anyhow::Result<String> {
    if let Some(key) = explicit.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(key.to_owned());
    }
    let dir = data_dir.unwrap_or(Path::new(DEFAULT_DATA_DIR));
    let path = dir.join(file.name());
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no API key: pass --api-key or set VOW_API_KEY (and could not read {})",
            path.display()
        )
    })?;
    let key = key.trim();
    anyhow::ensure!(!key.is_empty(), "the key file {} is empty", path.display());
    Ok(key.to_owned())
}

/// The server configuration: `file` (TOML text of the --config file) over the
/// defaults, then each flag or `VOW_*` variable that is set over that.
pub fn server_config(
    file: Option<(&Path, &str)>,
    args: &ServeArgs,
    data_dir: Option<&PathBuf>,
) -> anyhow::Result<ServerConfig> {
    let mut cfg = match file {
        Some((path, text)) => toml::from_str::<ServerConfig>(text)
            .with_context(|| format!("invalid config file {}", path.display()))?,
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(dir) = data_dir {
        cfg.data_dir = dir.clone();
    }
    if let Some(store) = &args.store {
        cfg.store = Some(store.clone());
    }
    if let Some(key) = &args.root_key {
        cfg.root_key = Some(key.clone());
    }
    if let Some(cidrs) = &args.webhook_allow_cidrs {
        cfg.webhook_allow_cidrs = cidrs
            .iter()
            .filter(|c| !c.trim().is_empty())
            .cloned()
            .collect();
    }
    cfg.egress_policy()
        .context("invalid webhook_allow_cidrs (VOW_WEBHOOK_ALLOW_CIDRS)")?;
    Ok(cfg)
}

/// Reads the --config file, if given, and builds the server configuration.
pub fn load_server_config(
    args: &ServeArgs,
    data_dir: Option<&PathBuf>,
) -> anyhow::Result<ServerConfig> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read config file {}", path.display()))?;
            server_config(Some((path, &text)), args, data_dir)
        }
        None => server_config(None, args, data_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: Option<&str>, store: Option<&str>) -> ServeArgs {
        ServeArgs {
            listen: listen.map(|l| l.parse().unwrap()),
            store: store.map(str::to_owned),
            config: None,
            root_key: None,
            webhook_allow_cidrs: None,
        }
    }

    #[test]
    fn explicit_key_wins_over_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default-admin.key"), "file-admin\n").unwrap();
        std::fs::write(dir.path().join("root.key"), "file-root\n").unwrap();
        let d = Some(dir.path());
        assert_eq!(
            resolve_api_key(Some("flag"), d, KeyFile::Admin).unwrap(),
            "flag"
        );
        assert_eq!(
            resolve_api_key(None, d, KeyFile::Admin).unwrap(),
            "file-admin"
        );
        assert_eq!(
            resolve_api_key(None, d, KeyFile::Root).unwrap(),
            "file-root"
        );
        assert_eq!(
            resolve_api_key(Some("  "), d, KeyFile::Root).unwrap(),
            "file-root"
        );
    }

    #[test]
    fn a_missing_key_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_api_key(None, Some(dir.path()), KeyFile::Admin).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--api-key") && msg.contains("default-admin.key"),
            "{msg}"
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let path = Path::new("vow.toml");
        let text = "listen = \"0.0.0.0:8000\"\ndata_dir = \"/from/file\"\nstore = \"sqlite:///file.db\"\nshutdown_grace_ms = 5\n";
        let cfg = server_config(Some((path, text)), &args(None, None), None).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/from/file"));
        assert_eq!(cfg.shutdown_grace_ms, 5);

        let dir = PathBuf::from("/from/flag");
        let cfg = server_config(
            Some((path, text)),
            &args(Some("127.0.0.1:9"), Some("sqlite:")),
            Some(&dir),
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(cfg.data_dir, dir);
        assert_eq!(cfg.store.as_deref(), Some("sqlite:"));
        assert_eq!(
            cfg.shutdown_grace_ms, 5,
            "settings without a flag keep the file's value"
        );

        let cfg = server_config(None, &args(None, None), None).unwrap();
        assert_eq!(cfg.listen, ServerConfig::default().listen);
    }

    #[test]
    fn webhook_allow_cidrs_come_from_the_file_or_the_flag_and_are_checked() {
        let path = Path::new("vow.toml");
        let text = "webhook_allow_cidrs = [\"10.0.0.0/8\"]\n";
        let cfg = server_config(Some((path, text)), &args(None, None), None).unwrap();
        assert_eq!(cfg.webhook_allow_cidrs, vec!["10.0.0.0/8".to_owned()]);
        let mut a = args(None, None);
        a.webhook_allow_cidrs = Some(vec!["127.0.0.1/32".into(), "::1".into()]);
        let cfg = server_config(Some((path, text)), &a, None).unwrap();
        assert_eq!(cfg.webhook_allow_cidrs, vec!["127.0.0.1/32", "::1"]);
        assert!(cfg
            .egress_policy()
            .unwrap()
            .permits("127.0.0.1".parse().unwrap()));
        a.webhook_allow_cidrs = Some(vec!["not-a-cidr".into()]);
        let err = server_config(None, &a, None).unwrap_err();
        assert!(format!("{err:#}").contains("not-a-cidr"), "{err:#}");
    }

    #[test]
    fn bad_config_files_are_errors_that_name_the_file() {
        for text in ["listen = 1", "lisen = \"127.0.0.1:1\""] {
            let err = server_config(Some((Path::new("v.toml"), text)), &args(None, None), None)
                .unwrap_err();
            assert!(format!("{err:#}").contains("v.toml"), "{err:#}");
        }
    }
}
