//! The test harness: spawn a server in-process, and a thin typed client over reqwest.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use vow_core::api::*;
use vow_core::{Clock, SystemClock};
use vow_server::{App, Running};

pub struct TestApp {
    #[allow(dead_code)] // keeps the server alive for the test's duration
    pub running: Option<Running>,
    pub base: String,
    pub admin_key: String,
    pub root_key: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|app| app).await
    }

    /// A server whose state `configure` adjusts before it starts.
    pub async fn spawn_with(configure: impl FnOnce(App) -> App) -> Self {
        Self::spawn_with_clock(Arc::new(SystemClock), configure).await
    }

    /// A server reading `clock`, its state adjusted by `configure`.
    pub async fn spawn_with_clock(
        clock: Arc<dyn Clock>,
        configure: impl FnOnce(App) -> App,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = vow_sqlite::SqliteStore::open(dir.path().join("vow.db")).unwrap();
        let app = configure(App::new(Arc::new(store), clock, Default::default(), None));
        let boot = vow_server::bootstrap::bootstrap(&app, dir.path(), false)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app.spawn(listener, Duration::from_secs(5)).await.unwrap();
        TestApp {
            base: format!("http://{}", running.addr),
            running: Some(running),
            admin_key: boot.admin_key.unwrap(),
            root_key: boot.root_key.unwrap(),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn client(&self) -> Api {
        Api {
            base: self.base.clone(),
            key: Some(self.admin_key.clone()),
            http: self.http.clone(),
        }
    }

    pub fn root(&self) -> Api {
        Api {
            base: self.base.clone(),
            key: Some(self.root_key.clone()),
            http: self.http.clone(),
        }
    }

    pub fn with_key(&self, key: Option<&str>) -> Api {
        Api {
            base: self.base.clone(),
            key: key.map(str::to_owned),
            http: self.http.clone(),
        }
    }

    /// A new tenant and a key of `role` in it.
    pub async fn tenant_key(&self, name: &str, role: &str) -> Api {
        let root = self.root();
        let (s, _) = root
            .call(Method::POST, "/v1/tenants", Some(json!({ "name": name })))
            .await;
        assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{s}");
        let (s, body) = root
            .call(
                Method::POST,
                &format!("/v1/tenants/{name}/keys"),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        self.with_key(Some(body["key"].as_str().unwrap()))
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    /// Sends a request; returns status and body (JSON, or a string for non-JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(status.as_u16() < 500, "5xx is a bug: {status} {body}");
        (status, body)
    }

    /// Sends a request that must answer `expect`; returns the typed body.
    pub async fn ok<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: StatusCode,
    ) -> T {
        let (s, b) = self.call(method, path, body).await;
        assert_eq!(s, expect, "{path}: {b}");
        serde_json::from_value(b).unwrap()
    }

    /// Expects a problem with `code`.
    pub async fn problem(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: &str,
    ) -> Problem {
        let (s, b) = self.call(method, path, body).await;
        assert_eq!(s.as_u16(), status, "{path}: {b}");
        let p: Problem =
            serde_json::from_value(b.clone()).unwrap_or_else(|_| panic!("not a problem: {b}"));
        assert_eq!(p.code, code, "{p:?}");
        assert!(!p.detail.is_empty());
        p
    }

    pub async fn enqueue(&self, queue: &str, body: Value) -> JobView {
        self.ok(
            Method::POST,
            &format!("/v1/queues/{queue}/jobs"),
            Some(body),
            StatusCode::ACCEPTED,
        )
        .await
    }

    pub async fn get(&self, id: &vow_core::JobId) -> JobView {
        self.ok(Method::GET, &format!("/v1/jobs/{id}"), None, StatusCode::OK)
            .await
    }

    pub async fn lease(
        &self,
        queue: &str,
        max_jobs: u32,
        wait_ms: u64,
        lease_ms: Option<u64>,
    ) -> Vec<LeasedJob> {
        let mut body = json!({ "worker_id": "test", "max_jobs": max_jobs, "wait_ms": wait_ms });
        if let Some(l) = lease_ms {
            body["lease_ms"] = json!(l);
        }
        let r: LeaseResponse = self
            .ok(
                Method::POST,
                &format!("/v1/queues/{queue}/lease"),
                Some(body),
                StatusCode::OK,
            )
            .await;
        r.jobs
    }

    pub async fn complete(&self, job: &LeasedJob, result: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{}/complete", job.id),
            Some(json!({ "lease_id": job.lease_id, "result": result })),
        )
        .await
    }

    pub async fn fail(&self, job: &LeasedJob, body: Value) -> (StatusCode, Value) {
        let mut body = body;
        body["lease_id"] = json!(job.lease_id);
        self.call(
            Method::POST,
            &format!("/v1/jobs/{}/fail", job.id),
            Some(body),
        )
        .await
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
