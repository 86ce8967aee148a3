//! vow's multi-node store: PostgreSQL, shared by any number of stateless `vow serve`
//! nodes.
//!
//! - Every write is one PostgreSQL transaction, committed with `synchronous_commit = on`
//!   (forced per connection) before its future resolves; PostgreSQL's own group commit
//!   batches the WAL flushes of concurrent transactions.
//! - Single-job transitions load the rows `FOR UPDATE`, apply the domain state machine
//!   ([`vow_core::machine::apply`]) and write them back with one `UNNEST` update, so the
//!   store cannot disagree with the reference model. Leasing is one statement
//!   (`UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`).
//! - Wake-ups and job events are published on the local [`Bus`] after commit and queued
//!   for the other nodes, which a notifier task sends with `NOTIFY` on a connection of
//!   its own; one `LISTEN` connection per node feeds them into its bus (`listener.rs`).
//!   Not inside the writing transaction: PostgreSQL holds one database-wide lock from a
//!   notifying transaction's pre-commit until its commit record is flushed, so writes
//!   that notify commit one at a time and lose group commit. A notify-only transaction
//!   writes no WAL before its commit record, is not flushed, and holds it for
//!   microseconds.
//! - Completion notices (`notices.rs`): delivery rows (the outbox) are written in the
//!   job transition's transaction; dispatchers on any node claim them with
//!   `SKIP LOCKED`, hold them while sending, and share each endpoint's circuit breaker
//!   through the `endpoints` table.
//! - Connection loss, pool exhaustion and timeouts are [`StoreError::Unavailable`]; no
//!   call waits longer than the pool wait plus the statement timeout.
//!
//! The URL is a libpq-style `postgres://` URL; vow's own settings ride along as query
//! parameters and are removed before connecting: `pool_size` (default 16),
//! `pool_timeout_ms` (wait for a free connection, default 5000),
//! `statement_timeout_ms` (default 10000) and `peer_ttl_ms` (how long a node goes on
//! notifying after its last sign of another node, default 30000, at least 300; nodes
//! say hello every third of it, so give every node the same value).

mod counts;
mod jobs;
mod listener;
mod notices;
mod rows;
mod schema;
mod tenants;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;
use vow_core::api::{
    CallbackSecretView, DeliveryView, JobEventView, Page, QueueView, TenantView, WebhookView,
};
use vow_core::{
    DeliveryId, Job, JobId, KeyId, QueueName, TenantId, TenantName, Timestamp, WebhookId,
};
use vow_store::*;

pub use schema::MIGRATIONS;

/// `url` (a `postgres://` URL) with its database replaced by `db`, its parameters kept.
pub fn url_with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// Settings of a [`PgStore`], parsed from its URL.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Connection settings (host, user, database, ...).
    pub pg: tokio_postgres::Config,
    /// Most pooled connections of this node (the `LISTEN` connection is extra).
    pub pool_size: usize,
    /// Longest wait for a free pooled connection before `Unavailable`.
    pub pool_timeout: Duration,
    /// Server-side limit on any statement (and on idle transactions).
    pub statement_timeout: Duration,
    /// How long a node goes on notifying after its last sign of another node (see
    /// `listener::Peers`).
    pub peer_ttl: Duration,
}

impl PgConfig {
    /// Parses `postgres://user:pass@host:port/db?pool_size=16&...`.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut pool_size = 16usize;
        let mut pool_timeout = Duration::from_secs(5);
        let mut statement_timeout = Duration::from_secs(10);
        let mut peer_ttl = Duration::from_secs(30);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| StoreError::internal(format!("{k}: `{v}` is not a number")))
            };
            match k {
                "pool_size" => pool_size = num()?.max(1) as usize,
                "pool_timeout_ms" => pool_timeout = Duration::from_millis(num()?),
                "statement_timeout_ms" => statement_timeout = Duration::from_millis(num()?),
                "peer_ttl_ms" => peer_ttl = Duration::from_millis(num()?.max(300)),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::internal(format!("bad PostgreSQL URL: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(10));
        pg.application_name("vow");
        // Durability is not negotiable: a 202 means committed and flushed, whatever the
        // server's default. Timeouts make a stuck server an error, never a hang.
        // Prepared statements run their generic plan: with custom plans PostgreSQL
        // re-planned the hot statements on most executions (the lease: 0.75 ms of
        // planning on 0.9 ms of execution, mid-drain). No statement needs a parameter's
        // value to find its index: a partial index's predicate (a state) and a LIMIT the
        // plan turns on are written into the SQL, lookups by id cannot take another
        // index (`rows::TENANT_CHECK`), and the lease's and the lookups' generic plans
        // are tested (tests/transactions.rs).
        let st = statement_timeout.as_millis();
        pg.options(format!(
            "-c synchronous_commit=on -c statement_timeout={st} -c lock_timeout={st} \
             -c idle_in_transaction_session_timeout={} -c plan_cache_mode=force_generic_plan",
            st * 2
        ));
        Ok(Self {
            pg,
            pool_size,
            pool_timeout,
            statement_timeout,
            peer_ttl,
        })
    }
}

/// What a transaction asks the buses (this node's and, through `NOTIFY`, the others')
/// to do once it is committed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Effects {
    /// Queues that got available jobs.
    #[serde(default, rename = "w", skip_serializing_if = "Vec::is_empty")]
    pub wake: Vec<(TenantId, QueueName)>,
    /// Job events, in commit order.
    #[serde(default, rename = "e", skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<(TenantId, JobEventView)>,
    /// A job was scheduled: the promoter may have to wake earlier.
    #[serde(default, rename = "c", skip_serializing_if = "std::ops::Not::not")]
    pub nudge_chores: bool,
    /// The body already committed, with its last statement ([`jobs::query_and_commit`]).
    #[serde(skip)]
    pub committed: bool,
}

impl Effects {
    pub(crate) fn is_empty(&self) -> bool {
        self.wake.is_empty() && self.events.is_empty() && !self.nudge_chores
    }

    pub(crate) fn apply(self, bus: &Bus) {
        let mut woken = std::collections::HashSet::new();
        for (tenant, queue) in &self.wake {
            if woken.insert((tenant, queue)) {
                bus.wake_queue(tenant, queue);
            }
        }
        for (tenant, event) in self.events {
            bus.publish(&tenant, [event]);
        }
        if self.nudge_chores {
            bus.nudge_chores();
        }
    }
}

/// The PostgreSQL store of one node.
pub struct PgStore {
    shared: Arc<Shared>,
    _listener: tokio::sync::watch::Sender<()>,
}

/// What a write needs from start to end, shared with the task it runs on: a write
/// runs to its end once begun, even when its caller is gone, so that a transaction
/// that commits always has its effects published ([`run_to_end`]).
struct Shared {
    pool: Pool,
    bus: Arc<Bus>,
    node: Arc<str>,
    op_timeout: Duration,
    notifier: listener::Notifier,
    /// The writes running ([`run_to_end`]): closing the store waits for them.
    writes: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

/// Maps a driver error: the server or the network being down (or a timeout, or a
/// serialization conflict the caller may retry) is `Unavailable`; anything else is a bug.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let c = code.code();
        let transient = c.starts_with("08") // connection exception
            || c.starts_with("57P") // admin/crash shutdown, cannot connect now
            || c.starts_with("53") // insufficient resources (too many connections)
            || c == "57014" // statement timeout / cancelled
            || c == "55P03" // lock timeout
            || c == "25P03" // idle-in-transaction timeout
            || c == "40001" // serialization failure
            || c == "40P01"; // deadlock
        return if transient {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Internal(Box::new(e))
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().contains("timed out") {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Internal(Box::new(e))
    }
}

/// Leasing walks the `jobs_lease` index past the entries of jobs leased since the last
/// vacuum; without autovacuum they pile up and every lease gets slower (measured: a
/// 50,000-job drain fell from ~600 to ~130 jobs/s, 16 backends busy skipping dead
/// entries). vow does not vacuum for the operator; it says so loudly at start.
async fn warn_if_autovacuum_off(client: &tokio_postgres::Client) {
    match client.query_one("SHOW autovacuum", &[]).await {
        Ok(row) if row.get::<_, &str>(0) == "off" => tracing::warn!(
            "PostgreSQL has autovacuum off: dead rows of the jobs table will pile up and \
             slow every lease; turn autovacuum on, or VACUUM the jobs table often"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not read the autovacuum setting"),
    }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => pg_err(e),
        PoolError::Timeout(_) | PoolError::Closed => StoreError::Unavailable(Box::new(e)),
        other => StoreError::Internal(Box::new(other)),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string().into())
}

fn node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl PgStore {
    /// Connects, applies pending migrations (under an advisory lock) and starts this
    /// node's `LISTEN` connection. Must run inside a Tokio runtime.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(PgConfig::from_url(url)?).await
    }

    /// [`PgStore::connect`] with parsed settings.
    pub async fn open(config: PgConfig) -> Result<Self, StoreError> {
        let (mut client, conn) = config.pg.connect(NoTls).await.map_err(pg_err)?;
        let driver = tokio::spawn(conn);
        schema::migrate(&mut client).await.map_err(pg_err)?;
        warn_if_autovacuum_off(&client).await;
        drop(client);
        let _ = driver.await;

        let manager = Manager::from_config(
            config.pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(config.pool_timeout),
            create: Some(config.pool_timeout),
            recycle: Some(config.pool_timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(internal)?;
        let bus = Arc::new(Bus::new());
        let node: Arc<str> = node_id().into();
        let (stop, stopped) = tokio::sync::watch::channel(());
        let peers = Arc::new(listener::Peers::new(config.peer_ttl));
        let (notifier, hello) =
            listener::Notifier::start(config.pg.clone(), node.clone(), peers.clone());
        tokio::spawn(counts::roll_up_loop(pool.clone(), stopped.clone()));
        tokio::spawn(listener::run(
            config.pg.clone(),
            Arc::downgrade(&bus),
            peers,
            notifier.queue(),
            node.clone(),
            stopped,
        ));
        // The other nodes know of this one before it serves anything (or PostgreSQL is
        // slow, and they learn of it a little later).
        let _ = tokio::time::timeout(Duration::from_secs(2), hello).await;
        let shared = Shared {
            pool,
            bus,
            node,
            // A call may wait for a connection, then run a few statements.
            op_timeout: config.pool_timeout + config.statement_timeout * 2,
            notifier,
            writes: tokio_util::task::TaskTracker::new(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            _listener: stop,
        })
    }

    /// This node's id (used to drop its own notifications).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Runs `f` with a pooled connection, bounded by the operation timeout.
    async fn with<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let s = &*self.shared;
        s.timed(async {
            let client = s.conn().await?;
            f(client).await
        })
        .await
    }
}

impl Shared {
    /// Runs `work`, bounded by the operation timeout: a server that stopped answering
    /// becomes `Unavailable`, never a hang.
    async fn timed<T>(&self, work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(self.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            )),
        }
    }

    /// A pooled connection (waits at most the pool timeout).
    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Publishes a committed transaction's effects: on this node's bus, and queued for
    /// the other nodes ([`listener::Notifier`]).
    fn publish(&self, effects: Effects) {
        self.notifier.send(&self.node, &effects);
        effects.apply(&self.bus);
    }
}

/// Runs a write on a task of its own and waits for it. A caller dropped before the
/// end (its client went away) does not cancel the write: a transaction whose `COMMIT`
/// is on its way may well commit, and then its effects must still be published, or a
/// waiting worker would not hear of its job and a live stream would miss its events.
/// It also keeps a connection from going back to the pool with a statement still
/// running on it. Only the operation timeout ([`Shared::timed`]) cuts a write short.
/// Once the store is closing, a new write is refused.
async fn run_to_end<T: Send + 'static>(
    writes: &tokio_util::task::TaskTracker,
    write: impl Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    // Counted before the check, so that `close` either sees this write or refuses it.
    let counted = writes.token();
    if writes.is_closed() {
        return Err(StoreError::Unavailable("this node is shutting down".into()));
    }
    let write = async move {
        let _counted = counted;
        write.await
    };
    match tokio::spawn(write).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Unavailable(
            "the runtime is shutting down".into(),
        )),
    }
}

/// A write transaction on a pooled connection, begun without a round trip of its own:
/// `BEGIN` is sent right before the body's first statement (tokio-postgres pipelines
/// requests polled together); the body may send the `COMMIT` with its last statement
/// ([`jobs::query_and_commit`]). Dropped before it ends (the body failed, or the call
/// timed out), it rolls back: after an error, with a `ROLLBACK`; if cancelled
/// mid-flight, the connection is taken out of the pool and closed, so nobody inherits
/// an open transaction.
struct WriteTx {
    conn: Option<deadpool_postgres::Object>,
}

impl WriteTx {
    fn new(conn: deadpool_postgres::Object) -> Self {
        Self { conn: Some(conn) }
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.conn
            .as_ref()
            .expect("a write transaction has its connection until it ends")
    }

    /// Runs `body` inside the transaction, sending `BEGIN` in the same round trip as
    /// its first statement.
    async fn run<T>(&self, body: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let (begun, out) = tokio::join!(self.client().batch_execute("BEGIN"), body);
        begun.map_err(pg_err)?;
        out
    }

    /// Rolls back after an error and gives the connection back to the pool.
    async fn rollback(mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.batch_execute("ROLLBACK").await.is_err() {
                // Broken or still in a transaction: never hand it to someone else.
                drop(deadpool_postgres::Object::take(conn));
            }
        }
    }

    /// The body committed it itself ([`jobs::query_and_commit`]): gives the connection
    /// back to the pool.
    fn committed(mut self) {
        self.conn.take();
    }

    /// Commits, and gives the connection back to the pool.
    async fn commit(mut self) -> StoreResult<()> {
        self.client()
            .batch_execute("COMMIT")
            .await
            .map_err(pg_err)?;
        self.conn.take();
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Neither committed nor rolled back (the caller was cancelled): close it.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

fn is_conflict(e: &StoreError) -> bool {
    let StoreError::Unavailable(e) = e else {
        return false;
    };
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| c.code() == "40001" || c.code() == "40P01")
}

/// Runs a body in a write transaction: `|tx, fx| body` gets the transaction and the
/// effects to collect. Right after the commit (with no await in between) the effects
/// are published ([`Shared::publish`]). The whole runs to its end on a task of its own
/// ([`run_to_end`]), so the body owns what it uses (`move`).
/// Retried (twice) on a serialization failure or deadlock.
macro_rules! write_tx {
    ($store:ident, |$tx:ident, $fx:ident| $body:expr) => {{
        let shared = $store.shared.clone();
        run_to_end(&$store.shared.writes, async move {
            let store = &*shared;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let r = store
                    .timed(async {
                        let tx = WriteTx::new(store.conn().await?);
                        let mut effects = Effects::default();
                        let out = {
                            let $fx = &mut effects;
                            let $tx = tx.client();
                            tx.run(async { $body }).await
                        };
                        // Committed by the body with its last statement, by us, or not at all.
                        let durable = if effects.committed {
                            tx.committed();
                            true
                        } else if out.is_ok() {
                            tx.commit().await?;
                            true
                        } else {
                            tx.rollback().await;
                            false
                        };
                        if durable {
                            // A body may commit, then refuse (a transition by id that was
                            // not allowed): whatever it wrote is durable all the same.
                            store.publish(effects);
                        }
                        out
                    })
                    .await;
                match r {
                    Ok(out) => break Ok(out),
                    Err(e) if attempt < 3 && is_conflict(&e) => {
                        tracing::debug!(error = %e, "transaction conflict; retrying");
                    }
                    Err(e) => break Err(e),
                }
            }
        })
        .await
    }};
}

/// Runs a body that writes with one statement outside any transaction block
/// ([`jobs::query_alone`]): `|c, fx| body` gets a connection and the effects to collect.
/// That statement commits on its own or not at all, so the effects are published when
/// the body succeeds, right after it (no await in between), and the whole runs to its
/// end on a task of its own, as with [`write_tx!`].
macro_rules! write_alone {
    ($store:ident, |$c:ident, $fx:ident| $body:expr) => {{
        let shared = $store.shared.clone();
        run_to_end(&$store.shared.writes, async move {
            let store = &*shared;
            store
                .timed(async {
                    let conn = store.conn().await?;
                    let mut effects = Effects::default();
                    let out = {
                        let $fx = &mut effects;
                        let $c = &conn;
                        $body
                    };
                    if out.is_ok() {
                        store.publish(effects);
                    }
                    out
                })
                .await
        })
        .await
    }};
}

#[async_trait]
impl Store for PgStore {
    fn bus(&self) -> &Bus {
        &self.shared.bus
    }

    async fn close(&self) {
        let s = &*self.shared;
        // Writes begun before now end first (each within the operation timeout), so
        // that what they commit is announced too.
        s.writes.close();
        if tokio::time::timeout(s.op_timeout, s.writes.wait())
            .await
            .is_err()
        {
            tracing::warn!("writes still running at close: the other nodes may not hear of them");
        }
        s.notifier.close().await;
    }

    async fn api_key_get(&self, id: &KeyId) -> StoreResult<Option<ApiKeyRecord>> {
        self.with(|c| async move { tenants::api_key_get(&c, id).await })
            .await
    }
    async fn api_key_insert(&self, p: &ApiKeyInsert) -> StoreResult<ApiKeyRecord> {
        self.with(|c| async move { tenants::api_key_insert(&c, p).await })
            .await
    }
    async fn api_key_list(&self, tenant_id: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        self.with(|c| async move { tenants::api_key_list(&c, tenant_id).await })
            .await
    }
    async fn api_key_revoke(&self, id: &KeyId, now: Timestamp) -> StoreResult<ApiKeyRecord> {
        self.with(|c| async move { tenants::api_key_revoke(&c, id, now).await })
            .await
    }

    async fn job_ack_many(&self, p: JobAckMany) -> StoreResult<Vec<StoreResult<Job>>> {
        write_tx!(self, |tx, fx| jobs::ack_many(tx, fx, &p).await)
    }
    async fn job_cancel(&self, p: &JobCancel) -> StoreResult<Job> {
        let p = p.clone();
        write_tx!(self, |tx, fx| jobs::cancel(tx, fx, &p).await)
    }
    async fn job_event_list(
        &self,
        tenant_id: &TenantId,
        id: &JobId,
    ) -> StoreResult<Vec<JobEventView>> {
        self.with(|c| async move { jobs::event_list(&c, tenant_id, id).await })
            .await
    }
    async fn job_event_list_since(&self, p: &JobEventListSince) -> StoreResult<Vec<JobEventView>> {
        self.with(|c| async move { jobs::event_list_since(&c, p).await })
            .await
    }
    async fn job_get(&self, tenant_id: &TenantId, id: &JobId) -> StoreResult<Option<Job>> {
        self.with(|c| async move { jobs::get(&c, tenant_id, id).await })
            .await
    }
    async fn job_heartbeat(&self, p: JobHeartbeat) -> StoreResult<Timestamp> {
        write_tx!(self, |tx, fx| jobs::heartbeat(tx, fx, &p).await)
    }
    async fn job_insert_many(&self, p: JobInsertMany) -> StoreResult<Vec<Inserted>> {
        if p.jobs.iter().all(|j| j.idempotency.is_none()) {
            return write_alone!(self, |c, fx| jobs::insert_alone(c, fx, p).await);
        }
        write_tx!(self, |tx, fx| jobs::insert_many(tx, fx, &p).await)
    }
    async fn job_lease(&self, p: &JobLease) -> StoreResult<Vec<Job>> {
        let p = p.clone();
        write_tx!(self, |tx, fx| jobs::lease(tx, fx, &p).await)
    }
    async fn job_list(&self, p: &JobList) -> StoreResult<Page<Job>> {
        self.with(|c| async move { jobs::list(&c, p).await }).await
    }
    async fn job_promote_due(&self, now: Timestamp) -> StoreResult<Sweep> {
        // Look first outside a write transaction, so an idle system costs no writes.
        let next = self
            .with(|c| async move { jobs::next_due(&c).await })
            .await?;
        match next {
            Some(t) if t <= now => {
                write_tx!(self, |tx, fx| jobs::promote_due(tx, fx, now).await)
            }
            _ => Ok(Sweep {
                changed: 0,
                next_at: next,
            }),
        }
    }
    async fn job_prune(&self, p: &JobPrune) -> StoreResult<Pruned> {
        let p = p.clone();
        write_tx!(self, |tx, _fx| jobs::prune(tx, &p).await)
    }
    async fn job_reap_expired(&self, now: Timestamp) -> StoreResult<Sweep> {
        let next = self
            .with(|c| async move { jobs::next_expiry(&c).await })
            .await?;
        match next {
            Some(t) if t <= now => {
                write_tx!(self, |tx, fx| jobs::reap_expired(tx, fx, now).await)
            }
            _ => Ok(Sweep {
                changed: 0,
                next_at: next,
            }),
        }
    }
    async fn job_retry(&self, p: &JobRetry) -> StoreResult<Job> {
        let p = p.clone();
        write_tx!(self, |tx, fx| jobs::retry(tx, fx, &p).await)
    }

    async fn leader_elect(&self, p: &LeaderElect) -> StoreResult<bool> {
        self.with(|c| async move { tenants::leader_elect(&c, p).await })
            .await
    }
    async fn leader_resign(&self, p: &LeaderResign) -> StoreResult<()> {
        self.with(|c| async move { tenants::leader_resign(&c, p).await })
            .await
    }

    async fn queue_get(
        &self,
        tenant_id: &TenantId,
        name: &QueueName,
        now: Timestamp,
    ) -> StoreResult<Option<QueueView>> {
        self.with(|c| async move { tenants::queue_get(&c, tenant_id, name, now).await })
            .await
    }
    async fn queue_list(
        &self,
        tenant_id: &TenantId,
        now: Timestamp,
    ) -> StoreResult<Vec<QueueView>> {
        self.with(|c| async move { tenants::queue_list(&c, tenant_id, now).await })
            .await
    }
    async fn queue_update(&self, p: &QueueUpdate) -> StoreResult<QueueView> {
        self.with(|c| async move { tenants::queue_update(&c, p).await })
            .await
    }

    async fn ready(&self) -> StoreResult<()> {
        self.with(|c| async move {
            schema::check(&c)
                .await
                .map_err(|e| StoreError::Unavailable(e.into()))
        })
        .await
    }

    async fn tenant_get(&self, id: &TenantId) -> StoreResult<Option<TenantView>> {
        self.with(|c| async move { tenants::tenant_get(&c, id).await })
            .await
    }
    async fn tenant_get_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantView>> {
        self.with(|c| async move { tenants::tenant_get_by_name(&c, name).await })
            .await
    }
    async fn tenant_insert(&self, p: &TenantInsert) -> StoreResult<TenantView> {
        self.with(|c| async move { tenants::tenant_insert(&c, p).await })
            .await
    }
    async fn tenant_list(&self) -> StoreResult<Vec<TenantView>> {
        self.with(|c| async move { tenants::tenant_list(&c).await })
            .await
    }

    async fn callback_secret_exists(&self, tenant_id: &TenantId) -> StoreResult<bool> {
        self.with(|c| async move { notices::callback_secret_exists(&c, tenant_id).await })
            .await
    }
    async fn callback_secret_rotate(&self, p: &SecretRotate) -> StoreResult<CallbackSecretView> {
        self.with(|c| async move { notices::callback_secret_rotate(&c, p).await })
            .await
    }
    async fn delivery_claim(&self, p: &DeliveryClaim) -> StoreResult<Vec<DeliveryTask>> {
        let p = p.clone();
        write_tx!(self, |tx, _fx| notices::claim(tx, &p).await)
    }
    async fn delivery_get(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
    ) -> StoreResult<Option<DeliveryView>> {
        self.with(|c| async move { notices::get_one(&c, tenant_id, id).await })
            .await
    }
    async fn delivery_list(&self, p: &DeliveryList) -> StoreResult<Page<DeliveryView>> {
        self.with(|c| async move { notices::list(&c, p).await })
            .await
    }
    async fn delivery_record(&self, p: &DeliveryOutcome) -> StoreResult<()> {
        let p = p.clone();
        write_tx!(self, |tx, _fx| notices::record(tx, &p).await)
    }
    async fn delivery_retry(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
        now: Timestamp,
    ) -> StoreResult<DeliveryView> {
        self.with(|c| async move { notices::retry(&c, tenant_id, id, now).await })
            .await
    }
    async fn webhook_delete(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
        _now: Timestamp,
    ) -> StoreResult<()> {
        self.with(|c| async move { notices::webhook_delete(&c, tenant_id, id).await })
            .await
    }
    async fn webhook_get(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
    ) -> StoreResult<Option<WebhookView>> {
        self.with(|c| async move { notices::webhook_get(&c, tenant_id, id).await })
            .await
    }
    async fn webhook_insert(&self, p: &WebhookInsert) -> StoreResult<WebhookView> {
        self.with(|c| async move { notices::webhook_insert(&c, p).await })
            .await
    }
    async fn webhook_list(&self, tenant_id: &TenantId) -> StoreResult<Vec<WebhookView>> {
        self.with(|c| async move { notices::webhook_list(&c, tenant_id).await })
            .await
    }
    async fn webhook_secret_rotate(&self, p: &SecretRotate) -> StoreResult<WebhookView> {
        self.with(|c| async move { notices::webhook_secret_rotate(&c, p).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "x"), "postgres://h/x");
    }
}
