//! vow's HTTP server: the API v1 resources, the services behind them, authentication,
//! and the background chores (promoter, reaper, pruner).
//!
//! [`serve`] runs a server until SIGTERM/SIGINT; [`App::spawn`] starts one in-process
//! (tests, benchmarks) and returns its address and a handle to stop it.

pub mod auth;
pub mod bootstrap;
pub mod chores;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod outbound;
pub mod resources;
pub mod service;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vow_core::auth::hash_key;
use vow_core::egress::EgressPolicy;
use vow_core::limits::Limits;
use vow_core::{Clock, SystemClock};
use vow_store::Store;

pub use bootstrap::Bootstrapped;
pub use config::ServerConfig;

use crate::error::ApiError;
use crate::resources::{events, jobs, ops, queues, tenants, webhooks, worker};

/// Shared state of a running server; cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

/// What [`App`] holds.
pub struct AppInner {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock every service and chore reads.
    pub clock: Arc<dyn Clock>,
    /// Input limits.
    pub limits: Limits,
    /// Verified API keys.
    pub keys: auth::KeyCache,
    /// Hash of `VOW_ROOT_KEY`, when given.
    pub root_key_hash: Option<String>,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
    /// How completion notices are delivered.
    pub webhooks: config::WebhookSettings,
    /// Sends completion notices (with the SSRF guard).
    pub outbound: outbound::Outbound,
    /// Retention of finished jobs (the pruner's settings).
    pub retention: config::Retention,
}

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Opens the store a configuration names.
pub fn open_store(config: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    let path: PathBuf = match config.store.as_deref() {
        None | Some("sqlite:") | Some("sqlite") => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
            config.data_dir.join("vow.db")
        }
        Some(url) if url.starts_with("sqlite://") => PathBuf::from(&url["sqlite://".len()..]),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // Called from async `serve`; connecting (and migrating) is async.
            let handle = tokio::runtime::Handle::try_current()
                .context("the PostgreSQL store needs a Tokio runtime")?;
            if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                anyhow::bail!("the PostgreSQL store needs a multi-threaded Tokio runtime");
            }
            let store = tokio::task::block_in_place(|| {
                handle.block_on(vow_postgres::PgStore::connect(url))
            })
            .map_err(anyhow::Error::new)
            .context("cannot open the PostgreSQL store")?;
            tracing::info!(node = store.node_id(), "PostgreSQL store open");
            return Ok(Arc::new(store));
        }
        Some(other) => {
            anyhow::bail!("unknown store URL `{other}`: use sqlite:///path or postgres://...")
        }
    };
    let store = vow_sqlite::SqliteStore::open(&path)
        .with_context(|| format!("cannot open the embedded store at {}", path.display()))?;
    tracing::info!(path = %path.display(), "embedded store open (SQLite, WAL, every answer after fdatasync)");
    Ok(Arc::new(store))
}

impl App {
    /// State for a server over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        root_key: Option<&str>,
    ) -> Self {
        metrics::handle();
        App(Arc::new(AppInner {
            store: Arc::new(vow_store::Instrumented::new(store)),
            clock,
            limits,
            keys: auth::KeyCache::default(),
            root_key_hash: root_key.map(hash_key),
            shutdown: CancellationToken::new(),
            webhooks: config::WebhookSettings::default(),
            outbound: outbound::Outbound::new(
                EgressPolicy::default(),
                Duration::from_millis(config::WebhookSettings::default().timeout_ms),
            )
            .expect("an HTTP client with default settings builds"),
            retention: config::Retention::default(),
        }))
    }

    /// This state with notices delivered per `settings`, to addresses `policy` permits.
    /// Call before [`App::spawn`] (the state must not be shared yet).
    pub fn with_webhooks(
        mut self,
        settings: config::WebhookSettings,
        policy: EgressPolicy,
    ) -> anyhow::Result<Self> {
        let outbound = outbound::Outbound::new(policy, Duration::from_millis(settings.timeout_ms))?;
        let inner = Arc::get_mut(&mut self.0)
            .context("with_webhooks must be called before the state is shared")?;
        inner.webhooks = settings;
        inner.outbound = outbound;
        Ok(self)
    }

    /// This state with `retention` instead of the default. Call it on the value
    /// [`App::new`] returned, before cloning it.
    ///
    /// # Panics
    ///
    /// When the app has already been cloned (a programming error).
    pub fn with_retention(mut self, retention: config::Retention) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("with_retention is called before the app is shared")
            .retention = retention;
        self
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/queues/{queue}/jobs", post(jobs::enqueue))
            .route("/v1/queues/{queue}/jobs/batch", post(jobs::enqueue_batch))
            .route("/v1/jobs", get(jobs::list))
            .route("/v1/jobs/{id}", get(jobs::get))
            .route("/v1/jobs/{id}/events", get(jobs::events))
            .route("/v1/jobs/{id}/wait", get(jobs::wait))
            .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
            .route("/v1/jobs/{id}/retry", post(jobs::retry))
            .route("/v1/queues/{queue}/lease", post(worker::lease))
            .route("/v1/jobs/{id}/heartbeat", post(worker::heartbeat))
            .route("/v1/jobs/{id}/complete", post(worker::complete))
            .route("/v1/jobs/{id}/fail", post(worker::fail))
            .route("/v1/acks", post(worker::acks))
            .route("/v1/events", get(events::stream))
            .route("/v1/queues", get(queues::list))
            .route("/v1/queues/{queue}", get(queues::get).patch(queues::patch))
            .route("/v1/tenants", post(tenants::create).get(tenants::list))
            .route(
                "/v1/tenants/{tenant}/keys",
                post(tenants::key_create).get(tenants::key_list),
            )
            .route("/v1/keys/{key_id}", delete(tenants::key_revoke))
            .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
            .route(
                "/v1/webhooks/{id}",
                get(webhooks::get).delete(webhooks::delete),
            )
            .route(
                "/v1/webhooks/{id}/rotate-secret",
                post(webhooks::rotate_secret),
            )
            .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
            .route("/v1/jobs/{id}/deliveries", get(webhooks::job_deliveries))
            .route("/v1/deliveries/{id}", get(webhooks::delivery_get))
            .route("/v1/deliveries/{id}/retry", post(webhooks::delivery_retry))
            .route("/v1/callback-secret", post(webhooks::callback_secret))
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz))
            .route("/openapi.json", get(ops::openapi))
            .route("/metrics", get(metrics::render))
            .fallback(|uri: Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
            .layer(DefaultBodyLimit::max(self.limits.max_body_bytes))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
                use axum::response::IntoResponse;
                tracing::error!("a handler panicked");
                ApiError::Internal.into_response()
            }))
            .layer(axum::middleware::from_fn(metrics::track))
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .with_state(self.clone())
    }

    /// Starts the chores and serves on `listener` until [`App::shutdown`] is cancelled.
    pub async fn spawn(self, listener: TcpListener, grace: Duration) -> anyhow::Result<Running> {
        let addr = listener.local_addr()?;
        let chores = vec![
            tokio::spawn(chores::Promoter::run(self.clone())),
            tokio::spawn(chores::Reaper::run(self.clone())),
            tokio::spawn(chores::Dispatcher::run(self.clone())),
            tokio::spawn(chores::Pruner::run(self.clone())),
        ];
        let token = self.shutdown.clone();
        let router = self.router();
        let server = tokio::spawn(async move {
            let stop = token.clone();
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            let serve = tokio::spawn(async move { serve.await });
            token.cancelled().await;
            match tokio::time::timeout(grace, serve).await {
                Ok(Ok(r)) => r.map_err(anyhow::Error::from),
                Ok(Err(join)) => Err(join.into()),
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish within the grace period");
                    Ok(())
                }
            }
        });
        Ok(Running {
            addr,
            app: self,
            server,
            chores,
        })
    }
}

/// A server started by [`App::spawn`].
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state.
    pub app: App,
    server: JoinHandle<anyhow::Result<()>>,
    chores: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Begins shutdown, waits until in-flight requests and chores are done, then closes
    /// the store (which sends what it still owes other nodes).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.app.shutdown.cancel();
        self.app.store.bus().wake_all();
        let r = self.server.await;
        for c in self.chores {
            let _ = c.await;
        }
        self.app.store.close().await;
        r?
    }
}

/// Runs the server until SIGTERM or SIGINT, then stops accepting connections, finishes
/// in-flight requests (up to `shutdown_grace_ms`) and returns.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    let app = App::new(
        store,
        Arc::new(SystemClock),
        config.limits.clone(),
        config.root_key.as_deref(),
    )
    .with_retention(config.retention.clone())
    .with_webhooks(
        config.webhooks.clone(),
        config
            .egress_policy()
            .context("invalid webhook_allow_cidrs")?,
    )?;
    let boot = bootstrap::bootstrap(&app, &config.data_dir, config.root_key.is_some()).await?;
    for f in &boot.files {
        tracing::info!(file = %f.display(), "first start: wrote a key (mode 0600); it is shown only there");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let running = app
        .spawn(listener, Duration::from_millis(config.shutdown_grace_ms))
        .await?;
    tracing::info!(addr = %running.addr, "vow is serving");
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
