//! Test harness: a PostgreSQL to test against, and a fresh database per test.
//!
//! [`Cluster::shared`] uses `VOW_TEST_DATABASE_URL` when set (a server where the URL's
//! user may `CREATE DATABASE`); otherwise it starts one throwaway cluster per test
//! process with `initdb`/`pg_ctl` (PostgreSQL binaries from `VOW_PG_BIN`,
//! `/usr/lib/postgresql/*/bin` or `PATH`) in a temp dir on a free port.
//! [`Cluster::throwaway`] always starts a private cluster, which a test may stop and
//! start (outage tests). Clusters are stopped and deleted when the test process exits:
//! a small watchdog process waits for it to end (even on a panic or `kill -9`).
//!
//! `initdb` refuses to run as root; as root (CI containers) the cluster is created and
//! run as the `postgres` user (via `runuser`, else `su`), in a directory it owns.
//!
//! Uses only `std` and the PostgreSQL command-line tools, so other test crates can reuse
//! it without depending on a driver.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A PostgreSQL server for tests.
#[derive(Debug)]
pub struct Cluster {
    /// URL of the maintenance database (`postgres`), for `CREATE DATABASE`.
    admin_url: String,
    /// Set for a cluster this process started.
    owned: Option<Owned>,
}

#[derive(Debug)]
struct Owned {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// A fresh database; dropped (best effort) with this guard.
#[derive(Debug)]
pub struct TestDb {
    /// `postgres://…/<name>` to hand to the store.
    pub url: String,
    name: String,
    admin_url: String,
    bin: PathBuf,
}

impl TestDb {
    /// A fresh, empty database of the shared cluster ([`Cluster::shared`]), created off
    /// the runtime's threads.
    pub async fn fresh() -> TestDb {
        tokio::task::spawn_blocking(|| Cluster::shared().database())
            .await
            .expect("creating a test database")
    }

    /// A plain connection to this database (its driver spawned on the runtime), for
    /// tests that look at or change it behind the store's back.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = psql(
            &self.bin,
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("VOW_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    // The newest installed version; else rely on PATH.
    found.pop().unwrap_or_default()
}

fn tool(bin: &Path, name: &str) -> PathBuf {
    let p = bin.join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, run as `postgres` when we are root.
fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if !as_postgres {
        return Command::new(program);
    }
    if Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        let mut c = Command::new("su");
        c.args(["postgres", "-s"]).arg(program).arg("--");
        c
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn psql(bin: &Path, url: &str, sql: &str) -> Result<(), String> {
    let mut c = Command::new(tool(bin, "psql"));
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
    run(c, "psql")
}

/// A random number (std only: a fresh `RandomState` is randomly seeded).
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), t)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(55_432)
}

impl Cluster {
    /// The cluster of this test process: `VOW_TEST_DATABASE_URL`, or a throwaway one
    /// started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("VOW_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Cluster::at(&url),
            _ => Cluster::throwaway(),
        })
    }

    /// An existing cluster at `url` (its databases are made through the `postgres`
    /// database of the same server).
    pub fn at(url: &str) -> Cluster {
        Cluster {
            admin_url: crate::url_with_database(url, "postgres"),
            owned: None,
        }
    }

    /// Starts a private cluster (panics with the reason if it cannot).
    pub fn throwaway() -> Cluster {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("vow-pg-{}-{:x}", std::process::id(), nonce()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("create the cluster dir");
        if as_postgres {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(&dir);
            run(c, "chown").expect("give the cluster dir to postgres");
        }
        let mut c = pg_command(as_postgres, &tool(&bin, "initdb"));
        c.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(c, "initdb").expect("initdb");
        let owned = Owned {
            bin,
            dir,
            port: 0,
            as_postgres,
        };
        let mut cluster = Cluster {
            admin_url: String::new(),
            owned: Some(owned),
        };
        cluster.watch();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let o = cluster.owned.as_mut().expect("owned");
            o.port = port;
            // fsync off: this cluster dies with the test process, and no test simulates
            // an OS crash; commits still wait for PostgreSQL (synchronous_commit = on).
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
                 max_connections = 400\nfsync = off\nfull_page_writes = off\n\
                 shared_buffers = 64MB\nlog_min_messages = warning\n"
            );
            std::fs::write(o.dir.join("data/postgresql.auto.conf"), conf)
                .expect("write postgresql.auto.conf");
            cluster.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            match cluster.try_start() {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("cannot start a throwaway PostgreSQL: {last}");
    }

    /// A watchdog that stops and deletes this cluster when the test process exits.
    fn watch(&self) {
        let Some(o) = &self.owned else { return };
        let pg_ctl = tool(&o.bin, "pg_ctl");
        let data = o.dir.join("data");
        let stop = if o.as_postgres {
            format!(
                "runuser -u postgres -- '{}' -D '{}' -m immediate stop || su postgres -s '{}' -- -D '{}' -m immediate stop",
                pg_ctl.display(),
                data.display(),
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "'{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = o.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn try_start(&self) -> Result<(), String> {
        let o = self.owned.as_ref().ok_or("not an owned cluster")?;
        let mut c = pg_command(o.as_postgres, &tool(&o.bin, "pg_ctl"));
        c.arg("-D")
            .arg(o.dir.join("data"))
            .arg("-l")
            .arg(o.dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = c
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}",
                std::fs::read_to_string(o.dir.join("log")).unwrap_or_default()
            ))
        }
    }

    /// Starts an owned cluster again after [`Cluster::stop`] (same port and data).
    pub fn start(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Stops an owned cluster (`pg_ctl stop -m fast`: connections are cut at once).
    pub fn stop(&self) {
        let o = self
            .owned
            .as_ref()
            .expect("only an owned cluster can be stopped");
        let mut c = pg_command(o.as_postgres, &tool(&o.bin, "pg_ctl"));
        c.arg("-D")
            .arg(o.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop").expect("pg_ctl stop");
    }

    /// The port of an owned cluster.
    pub fn port(&self) -> Option<u16> {
        self.owned.as_ref().map(|o| o.port)
    }

    /// Creates a fresh, empty database with a random name.
    pub fn database(&self) -> TestDb {
        let bin = self
            .owned
            .as_ref()
            .map(|o| o.bin.clone())
            .unwrap_or_else(bin_dir);
        let name = format!("vow_test_{:016x}", nonce());
        psql(&bin, &self.admin_url, &format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        TestDb {
            url: crate::url_with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
            bin,
        }
    }
}

/// The lease statement and the settings it runs under, for tests that check its plan.
pub fn lease_statement() -> (&'static str, &'static str) {
    (crate::jobs::lease_sql(), crate::jobs::LEASE_TX_SETTINGS)
}

/// The read of a queue's oldest available job (`$1` tenant, `$2` queue), for tests that
/// check its plan.
pub fn oldest_statement() -> &'static str {
    crate::tenants::OLDEST_SQL
}

/// The settings the deliveries claim runs under, for tests that check its plan.
pub fn claim_settings() -> &'static str {
    crate::jobs::LEASE_SETTINGS
}

/// The deliveries claim's pick for `fetch` rows (`$1` now, `$2`/`$3` tenants and
/// endpoints at their cap), for tests that check its plan; it runs under
/// [`claim_settings`].
pub fn claim_statement(fetch: usize) -> String {
    crate::notices::claim_sql(fetch)
}

/// The lookups of a tenant's rows by unique id, each with the table whose id it takes
/// and the index it must walk: `$1` the id (or an array of ids), `$2` the tenant. For
/// tests that check their plans.
pub fn lookups_by_id() -> Vec<(String, &'static str, &'static str)> {
    use crate::jobs::{job_events_sql, job_sql, jobs_by_id_sql};
    use crate::notices::{delivery_orphaned_sql, delivery_sql, webhook_sql};
    vec![
        (jobs_by_id_sql(true), "jobs", "jobs_pkey"),
        (jobs_by_id_sql(false), "jobs", "jobs_pkey"),
        (job_sql(), "jobs", "jobs_pkey"),
        (job_events_sql(), "jobs", "job_events_job"),
        (delivery_sql(), "deliveries", "deliveries_pkey"),
        (delivery_orphaned_sql(), "deliveries", "deliveries_pkey"),
        (webhook_sql(), "webhooks", "webhooks_pkey"),
    ]
}

/// A setting as the store's pooled sessions see it (`SHOW`), for tests that check what
/// the store forces on every connection whatever the server's defaults.
pub async fn session_setting(store: &crate::PgStore, name: &str) -> String {
    let conn = store.shared.conn().await.expect("a pooled connection");
    let row = conn
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("SHOW");
    row.get(0)
}

/// Applies the migrations up to `version` to the database of `client`, as the release
/// that ended there left it (for upgrade tests; without the store's advisory lock).
pub async fn migrate_through(client: &mut tokio_postgres::Client, version: i64) {
    crate::schema::apply_pending(client, version)
        .await
        .expect("migrations");
}

/// Folds the queue count deltas into the totals now (what every node does about once a
/// second); returns how many deltas it folded (0 when another roll-up held the lock).
pub async fn roll_up_counts(store: &crate::PgStore) -> u64 {
    let conn = store.shared.conn().await.expect("a pooled connection");
    crate::counts::roll_up(&conn).await.expect("roll-up")
}
