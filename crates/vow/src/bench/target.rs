//! The server under test: a fresh `vow serve` child process per workload (its own temp
//! data dir, a free port, a root key the bench made up), or an existing server at
//! `--url`.
//!
//! Each workload gets a [`Session`]: a client with an admin key, the queue to use and,
//! when known, the server's pid for CPU and RSS figures. On a child server the session
//! also gets a tenant of its own, created with the root key, so a shared store (e.g.
//! PostgreSQL given with `--store`) starts every workload with empty counts too.
//!
//! A child for W6 may send completion notices to loopback (`--webhook-allow-cidrs
//! 127.0.0.1/32`), where the bench's receiver listens; the others keep the SSRF guard's
//! default. Every child runs on the default settings unless `--server-config` gave a
//! file (passed as `--config`).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use vow_client::Client;
use vow_core::api::{KeyCreate, TenantCreate};
use vow_core::auth::{ApiKeySecret, Role};

/// How long a child server may take to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A settings file for the spawned servers (`vow bench --server-config`).
#[derive(Debug, Clone)]
pub struct ServerConfigFile {
    /// Passed to each child as `--config`.
    pub path: PathBuf,
    /// Its notice retry delays (W6 reports them).
    pub retry_schedule_ms: Vec<u64>,
    /// Whether its `[webhooks]` settings are the defaults.
    pub default_webhooks: bool,
}

impl ServerConfigFile {
    /// Reads and checks the file as `vow serve --config` would.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the server config {}", path.display()))?;
        let cfg: vow_server::ServerConfig = toml::from_str(&text)
            .with_context(|| format!("invalid server config {}", path.display()))?;
        let defaults = vow_server::ServerConfig::default();
        Ok(Self {
            path: path.to_owned(),
            retry_schedule_ms: cfg.webhooks.retry_schedule_ms.0.clone(),
            default_webhooks: cfg.webhooks == defaults.webhooks,
        })
    }
}

/// Where workloads run.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start `vow serve` (this executable) per workload, passing `store` through.
    Spawn {
        /// `--store` for the child; `None` is the embedded store in its data dir.
        store: Option<String>,
        /// `--config` for the child; `None` is the default settings.
        config: Option<ServerConfigFile>,
    },
    /// An existing server.
    External {
        /// Its base URL.
        url: String,
        /// An API key with admin rights on the tenant to use.
        api_key: String,
        /// Its pid, when the caller told us, for CPU and RSS figures.
        pid: Option<u32>,
    },
}

impl Target {
    /// What the JSON calls the store: `sqlite` (embedded), `postgres`, or `unknown` for
    /// a server the bench did not start. Never includes credentials.
    pub fn store_kind(&self) -> &'static str {
        match self {
            Target::Spawn { store: None, .. } => "sqlite",
            Target::Spawn {
                store: Some(url), ..
            } => store_kind_of(url),
            Target::External { .. } => "unknown (external server)",
        }
    }

    /// The notice retry delays of the servers and whether the `[webhooks]` settings are
    /// the defaults; `None` for an external server (unknown).
    pub fn notice_settings(&self) -> Option<(Vec<u64>, bool)> {
        match self {
            Target::Spawn {
                config: Some(c), ..
            } => Some((c.retry_schedule_ms.clone(), c.default_webhooks)),
            Target::Spawn { config: None, .. } => Some((
                vow_server::ServerConfig::default()
                    .webhooks
                    .retry_schedule_ms
                    .0,
                true,
            )),
            Target::External { .. } => None,
        }
    }

    /// Prepares a fresh place for workload `tag` (e.g. `w3a`); `loopback_notices` lets a
    /// spawned server send completion notices to 127.0.0.1 (W6's receiver).
    pub async fn session(&self, tag: &str, loopback_notices: bool) -> anyhow::Result<Session> {
        match self {
            Target::Spawn { store, config } => {
                let database = match store.as_deref() {
                    Some(url) if store_kind_of(url) == "postgres" => {
                        FreshDatabase::create(url, tag).await?
                    }
                    _ => None,
                };
                let child_store = match (&database, store) {
                    (Some(db), Some(url)) => Some(vow_postgres::url_with_database(url, &db.name)),
                    _ => store.clone(),
                };
                let mut server = ChildServer::start(
                    child_store.as_deref(),
                    config.as_ref().map(|c| c.path.as_path()),
                    loopback_notices,
                )?;
                let root = Client::new(&server.url, &server.root_key)?;
                server.wait_ready(&root).await?;
                let tenant = format!("bench-{tag}-{}", unix_ms());
                let name = tenant
                    .parse()
                    .map_err(|e| anyhow::anyhow!("bad tenant name {tenant}: {e}"))?;
                root.create_tenant(&TenantCreate {
                    name,
                    max_pending: None,
                })
                .await
                .context("creating the bench tenant")?;
                let key = root
                    .create_key(&tenant, &KeyCreate { role: Role::Admin })
                    .await
                    .context("creating the bench tenant's admin key")?;
                Ok(Session {
                    client: Client::new(&server.url, &key.key)?,
                    queue: "bench".to_owned(),
                    server_pid: Some(server.child.id()),
                    store_reset: match (&database, store) {
                        (Some(_), _) => "a database of its own",
                        (None, Some(_)) => "a tenant of its own (shared database)",
                        (None, None) => "a data dir of its own",
                    },
                    child: Some(server),
                    _database: database,
                })
            }
            Target::External { url, api_key, pid } => {
                let client = Client::new(url, api_key)?;
                client
                    .readyz()
                    .await
                    .with_context(|| format!("the server at {url} is not ready"))?;
                Ok(Session {
                    client,
                    // A queue of its own per run and workload: counts start at zero.
                    queue: format!("bench-{}-{tag}", unix_ms()),
                    server_pid: *pid,
                    store_reset: "a queue of its own (external server)",
                    child: None,
                    _database: None,
                })
            }
        }
    }
}

/// `sqlite` or `postgres` from a store URL.
fn store_kind_of(url: &str) -> &'static str {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        "postgres"
    } else if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "other"
    }
}

/// One workload's server, client and queue.
#[derive(Debug)]
pub struct Session {
    /// A client with an admin key of the tenant to use.
    pub client: Client,
    /// The queue to use: `bench`, or a unique one on an external server.
    pub queue: String,
    /// The server's pid, if known.
    pub server_pid: Option<u32>,
    /// How the store was reset for the workload (BENCH.md: a freshly reset store).
    pub store_reset: &'static str,
    // Dropped in this order: the server first, then its database (held for its drop).
    child: Option<ChildServer>,
    _database: Option<FreshDatabase>,
}

impl Session {
    /// Stops the child server, if the bench started one, then drops the workload's
    /// database, if it had one (as dropping the session does, on an early return). A
    /// server that already exited (crashed) is reported with its log's last lines.
    pub fn finish(mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => child.stop(),
            None => Ok(()),
        }
    }
}

/// A PostgreSQL database made for one workload on the cluster of `--store`, so that
/// every workload starts on a freshly reset store (BENCH.md): no rows, dead tuples or
/// WAL of the workloads before it. Dropped with its [`Session`], after the server.
#[derive(Debug)]
struct FreshDatabase {
    /// `--store`: the connection it is created and dropped through.
    admin: String,
    name: String,
}

impl FreshDatabase {
    /// Creates `vow_bench_<tag>_<ms>` through `store`, then checkpoints the cluster where
    /// the role may, so that the WAL of the workloads before does not set off a
    /// checkpoint during this one. `None` when the role may not create databases: the
    /// workload then runs in `store`'s own database, on a tenant of its own (said on
    /// stderr and in the JSON).
    async fn create(store: &str, tag: &str) -> anyhow::Result<Option<Self>> {
        let client = admin_client(store).await?;
        let name = format!("vow_bench_{tag}_{}", unix_ms());
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            eprintln!(
                "note: cannot create a database for {tag} ({:#}); it runs in the --store \
                 database, on a tenant of its own",
                anyhow::Error::new(e)
            );
            return Ok(None);
        }
        if let Err(e) = client.batch_execute("CHECKPOINT").await {
            tracing::debug!(error = %e, "no checkpoint before the workload");
        }
        Ok(Some(Self {
            admin: store.to_owned(),
            name,
        }))
    }
}

impl Drop for FreshDatabase {
    /// Drops the database (closing any connection left to it), on a thread and runtime
    /// of its own: it is dropped from async code, whose runtime cannot block on it.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async { Ok(admin_client(&admin).await?.batch_execute(&sql).await?) })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cannot drop the bench database {name}: {e:#}"),
            Err(_) => eprintln!("warning: dropping the bench database {name} panicked"),
        }
    }
}

/// A plain connection to the database of `store` (a `--store` URL).
async fn admin_client(store: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config = vow_postgres::PgConfig::from_url(store)
        .map_err(|e| anyhow::anyhow!("bad --store URL: {e}"))?;
    let (client, conn) = config
        .pg
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the --store database")?;
    tokio::spawn(conn);
    Ok(client)
}

/// A `vow serve` child with its own data dir; killed and cleaned up on drop.
#[derive(Debug)]
struct ChildServer {
    child: Child,
    url: String,
    root_key: String,
    dir: PathBuf,
    log: PathBuf,
}

impl ChildServer {
    fn start(
        store: Option<&str>,
        config: Option<&Path>,
        loopback_notices: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the vow executable")?;
        let dir =
            std::env::temp_dir().join(format!("vow-bench-{}-{}", std::process::id(), unix_ms()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log)?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let root_key = ApiKeySecret::generate().expose().to_owned();
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .env("VOW_ROOT_KEY", &root_key)
            .env("RUST_LOG", "warn")
            .env_remove("VOW_CONFIG")
            .env_remove("VOW_STORE")
            .env_remove("VOW_LISTEN")
            .env_remove("VOW_DATA_DIR")
            .env_remove("VOW_WEBHOOK_ALLOW_CIDRS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(store) = store {
            cmd.arg("--store").arg(store);
        }
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        if loopback_notices {
            cmd.arg("--webhook-allow-cidrs").arg("127.0.0.1/32");
        }
        let child = cmd.spawn().context("cannot start `vow serve`")?;
        Ok(Self {
            child,
            url,
            root_key,
            dir,
            log,
        })
    }

    async fn wait_ready(&mut self, root: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if root.readyz().await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "`vow serve` exited at start ({status}); its log:\n{}",
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "`vow serve` was not ready within {} s; its log:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "the server died during the workload ({status}); its log:\n{}",
                tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on right now (the kernel's pick for port 0).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    let mut out = Vec::new();
    for l in &lines[start..] {
        let _ = writeln!(out, "  {l}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_kinds_never_show_the_url() {
        assert_eq!(
            Target::Spawn {
                store: None,
                config: None
            }
            .store_kind(),
            "sqlite"
        );
        let pg = Target::Spawn {
            store: Some("postgres://u:secret@h/db".into()),
            config: None,
        };
        assert_eq!(pg.store_kind(), "postgres");
        assert_eq!(store_kind_of("sqlite:///tmp/x.db"), "sqlite");
    }

    #[test]
    fn a_server_config_says_whether_its_webhook_settings_are_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vow.toml");
        std::fs::write(&path, "shutdown_grace_ms = 1000\n").unwrap();
        let c = ServerConfigFile::read(&path).unwrap();
        assert!(c.default_webhooks);
        assert_eq!(c.retry_schedule_ms[0], 5_000);
        std::fs::write(&path, "[webhooks]\nretry_schedule_ms = [200]\n").unwrap();
        let c = ServerConfigFile::read(&path).unwrap();
        assert!(!c.default_webhooks);
        assert_eq!(c.retry_schedule_ms, [200]);
        std::fs::write(&path, "nosuch = 1\n").unwrap();
        assert!(ServerConfigFile::read(&path).is_err());
    }
}
