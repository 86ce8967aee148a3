//! [`Client`]: one typed method per API v1 endpoint.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vow_core::api::{
    AckRequest, AckResponse, BatchEnqueueRequest, CallbackSecretView, CompleteRequest,
    DeliveryView, EnqueueRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, Items,
    JobEventView, JobListQuery, JobView, KeyCreate, KeyCreated, KeyView, LeaseRequest,
    LeaseResponse, Page, PageQuery, Problem, QueuePatch, QueueView, TenantCreate, TenantView,
    WaitQuery, WebhookCreate, WebhookView,
};
use vow_core::{DeliveryId, JobId, KeyId, WebhookId};

use crate::Error;

/// How long an ordinary request may take before it counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of a long-poll's own wait before the client gives up on it.
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);
/// How much of a non-problem error body is kept for [`Error::UnexpectedStatus`].
const ERROR_BODY_LIMIT: usize = 1024;

/// A handle on one vow server, authenticated with one API key.
///
/// Cheap to clone (the connection pool is shared). Ordinary requests time out after 30
/// seconds; long-polls (`lease`, `wait`) get their own wait plus 15 seconds.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("auth", &"<redacted>")
            .finish()
    }
}

/// The result of an enqueue with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The job: the new one, or the original one on a replay.
    pub job: JobView,
    /// `true` when the server answered `200` (an earlier request with the same key and
    /// body created the job), `false` on `202` (created now).
    pub replayed: bool,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:7400`; a path
    /// prefix such as `https://host/vow/` is kept) using `api_key`.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vow-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Transport)?;
        Self::with_http_client(base_url, api_key, http)
    }

    /// Like [`Client::new`] with a caller-configured `reqwest::Client` (proxies, TLS
    /// roots). Do not give it a global timeout shorter than the long-polls you use.
    pub fn with_http_client(
        base_url: &str,
        api_key: &str,
        http: reqwest::Client,
    ) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() {
            return Err(invalid("it cannot be a base URL"));
        }
        Ok(Self {
            http,
            base,
            auth: format!("Bearer {api_key}"),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL of `segments` under the base; each segment is percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http
            .request(method, self.url(segments))
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .timeout(REQUEST_TIMEOUT)
    }

    /// Sends `req` and decodes a success body as `T`, or the error as a problem.
    async fn send<T: DeserializeOwned>(req: RequestBuilder) -> Result<(StatusCode, T), Error> {
        let resp = req.send().await.map_err(Error::Transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(Error::Transport)?;
        if status.is_success() {
            // An empty body decodes as `null`, so endpoints returning nothing fit `()`.
            let body: &[u8] = if body.is_empty() { b"null" } else { &body };
            let value = serde_json::from_slice(body).map_err(Error::Decode)?;
            return Ok((status, value));
        }
        Err(error_from_body(status, &body))
    }

    async fn call<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, Error> {
        Self::send(req).await.map(|(_, v)| v)
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, Error> {
        Self::call(self.request(Method::POST, segments).json(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, Error> {
        Self::call(self.request(Method::GET, segments)).await
    }

    // ---- jobs (producer) ----

    /// `POST /v1/queues/{queue}/jobs`: enqueues one job (`202`).
    pub async fn enqueue(&self, queue: &str, job: &EnqueueRequest) -> Result<JobView, Error> {
        self.post(&["v1", "queues", queue, "jobs"], job).await
    }

    /// `POST /v1/queues/{queue}/jobs` with an `Idempotency-Key`: a retry with the same
    /// key and body returns the original job (`replayed`); the same key with another
    /// body fails with `idempotency_conflict`.
    pub async fn enqueue_with_key(
        &self,
        queue: &str,
        job: &EnqueueRequest,
        idempotency_key: &str,
    ) -> Result<Enqueued, Error> {
        let req = self
            .request(Method::POST, &["v1", "queues", queue, "jobs"])
            .header("Idempotency-Key", idempotency_key)
            .json(job);
        let (status, job) = Self::send(req).await?;
        Ok(Enqueued {
            job,
            replayed: status == StatusCode::OK,
        })
    }

    /// `POST /v1/queues/{queue}/jobs/batch`: enqueues all jobs or none.
    pub async fn enqueue_batch(
        &self,
        queue: &str,
        batch: &BatchEnqueueRequest,
    ) -> Result<Vec<JobView>, Error> {
        let items: Items<JobView> = self
            .post(&["v1", "queues", queue, "jobs", "batch"], batch)
            .await?;
        Ok(items.items)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &JobId) -> Result<JobView, Error> {
        self.get(&["v1", "jobs", id.as_str()]).await
    }

    /// `GET /v1/jobs`: one page, newest first. Pass `next_cursor` back as `cursor`.
    pub async fn jobs(&self, query: &JobListQuery) -> Result<Page<JobView>, Error> {
        Self::call(self.request(Method::GET, &["v1", "jobs"]).query(query)).await
    }

    /// `GET /v1/jobs/{id}/events`: the job's transitions, oldest first.
    pub async fn job_events(&self, id: &JobId) -> Result<Vec<JobEventView>, Error> {
        let items: Items<JobEventView> = self.get(&["v1", "jobs", id.as_str(), "events"]).await?;
        Ok(items.items)
    }

    /// `GET /v1/jobs/{id}/wait`: the job once terminal, or as it is when `timeout`
    /// passes (look at `state`). `None` uses the server's default wait.
    pub async fn wait_job(&self, id: &JobId, timeout: Option<Duration>) -> Result<JobView, Error> {
        let query = WaitQuery {
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        };
        let budget = timeout.unwrap_or(Duration::from_secs(30)) + LONG_POLL_SLACK;
        let req = self
            .request(Method::GET, &["v1", "jobs", id.as_str(), "wait"])
            .query(&query)
            .timeout(budget);
        Self::call(req).await
    }

    /// `POST /v1/jobs/{id}/cancel`: a non-terminal job becomes `cancelled`; a terminal
    /// one is a `409`.
    pub async fn cancel_job(&self, id: &JobId) -> Result<JobView, Error> {
        self.post(
            &["v1", "jobs", id.as_str(), "cancel"],
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /v1/jobs/{id}/retry`: a `dead` or `cancelled` job becomes `available`
    /// with its attempt counter reset.
    pub async fn retry_job(&self, id: &JobId) -> Result<JobView, Error> {
        self.post(
            &["v1", "jobs", id.as_str(), "retry"],
            &serde_json::json!({}),
        )
        .await
    }

    // ---- worker protocol ----

    /// `POST /v1/queues/{queue}/lease`: long-polls up to `wait_ms` for jobs; an empty
    /// list when none came.
    pub async fn lease(&self, queue: &str, req: &LeaseRequest) -> Result<LeaseResponse, Error> {
        let budget = Duration::from_millis(req.wait_ms.unwrap_or(0)) + LONG_POLL_SLACK;
        let req = self
            .request(Method::POST, &["v1", "queues", queue, "lease"])
            .json(req)
            .timeout(budget);
        Self::call(req).await
    }

    /// `POST /v1/jobs/{id}/heartbeat`: extends the lease (and records progress).
    /// A stale lease fails with `lease_lost` ([`Error::is_lease_lost`]).
    pub async fn heartbeat(
        &self,
        id: &JobId,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Error> {
        self.post(&["v1", "jobs", id.as_str(), "heartbeat"], req)
            .await
    }

    /// `POST /v1/jobs/{id}/complete`. A stale lease fails with `lease_lost`.
    pub async fn complete(&self, id: &JobId, req: &CompleteRequest) -> Result<JobView, Error> {
        self.post(&["v1", "jobs", id.as_str(), "complete"], req)
            .await
    }

    /// `POST /v1/jobs/{id}/fail`. A stale lease fails with `lease_lost`.
    pub async fn fail(&self, id: &JobId, req: &FailRequest) -> Result<JobView, Error> {
        self.post(&["v1", "jobs", id.as_str(), "fail"], req).await
    }

    /// `POST /v1/acks`: many completes and fails in one request; per-item results.
    pub async fn ack(&self, req: &AckRequest) -> Result<AckResponse, Error> {
        self.post(&["v1", "acks"], req).await
    }

    // ---- queues ----

    /// `GET /v1/queues`.
    pub async fn queues(&self) -> Result<Vec<QueueView>, Error> {
        let items: Items<QueueView> = self.get(&["v1", "queues"]).await?;
        Ok(items.items)
    }

    /// `GET /v1/queues/{queue}`.
    pub async fn queue(&self, queue: &str) -> Result<QueueView, Error> {
        self.get(&["v1", "queues", queue]).await
    }

    /// `PATCH /v1/queues/{queue}`: absent fields stay, `Some(None)` clears a limit.
    pub async fn patch_queue(&self, queue: &str, patch: &QueuePatch) -> Result<QueueView, Error> {
        Self::call(
            self.request(Method::PATCH, &["v1", "queues", queue])
                .json(patch),
        )
        .await
    }

    // ---- completion notices ----

    /// `POST /v1/webhooks`: subscribes to notices; `secret` is set this once only.
    pub async fn create_webhook(&self, req: &WebhookCreate) -> Result<WebhookView, Error> {
        self.post(&["v1", "webhooks"], req).await
    }

    /// `GET /v1/webhooks`: the tenant's subscriptions, without their secrets.
    pub async fn webhooks(&self) -> Result<Vec<WebhookView>, Error> {
        let items: Items<WebhookView> = self.get(&["v1", "webhooks"]).await?;
        Ok(items.items)
    }

    /// `GET /v1/webhooks/{id}`: one subscription, without its secret.
    pub async fn webhook(&self, id: &WebhookId) -> Result<WebhookView, Error> {
        self.get(&["v1", "webhooks", id.as_str()]).await
    }

    /// `DELETE /v1/webhooks/{id}` (`204`): its pending deliveries become dead.
    pub async fn delete_webhook(&self, id: &WebhookId) -> Result<(), Error> {
        Self::call(self.request(Method::DELETE, &["v1", "webhooks", id.as_str()])).await
    }

    /// `POST /v1/webhooks/{id}/rotate-secret`: a new signing `secret`, shown this once.
    pub async fn rotate_webhook_secret(&self, id: &WebhookId) -> Result<WebhookView, Error> {
        self.post(
            &["v1", "webhooks", id.as_str(), "rotate-secret"],
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/webhooks/{id}/deliveries`: one page, newest first (`next_cursor` → `cursor`).
    pub async fn webhook_deliveries(
        &self,
        id: &WebhookId,
        query: &PageQuery,
    ) -> Result<Page<DeliveryView>, Error> {
        Self::call(
            self.request(Method::GET, &["v1", "webhooks", id.as_str(), "deliveries"])
                .query(query),
        )
        .await
    }

    /// `GET /v1/jobs/{id}/deliveries`: the job's notices, newest first (no attempt logs).
    pub async fn job_deliveries(&self, id: &JobId) -> Result<Vec<DeliveryView>, Error> {
        let items: Items<DeliveryView> =
            self.get(&["v1", "jobs", id.as_str(), "deliveries"]).await?;
        Ok(items.items)
    }

    /// `GET /v1/deliveries/{id}`: one delivery with its attempt `log`.
    pub async fn delivery(&self, id: &DeliveryId) -> Result<DeliveryView, Error> {
        self.get(&["v1", "deliveries", id.as_str()]).await
    }

    /// `POST /v1/deliveries/{id}/retry`: sends it again now, same id, fresh retry schedule.
    pub async fn retry_delivery(&self, id: &DeliveryId) -> Result<DeliveryView, Error> {
        self.post(
            &["v1", "deliveries", id.as_str(), "retry"],
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /v1/callback-secret`: a new secret for `callback_url` notices, shown this once.
    pub async fn rotate_callback_secret(&self) -> Result<CallbackSecretView, Error> {
        self.post(&["v1", "callback-secret"], &serde_json::json!({}))
            .await
    }

    // ---- tenants and keys (root key) ----

    /// `POST /v1/tenants` (root key).
    pub async fn create_tenant(&self, req: &TenantCreate) -> Result<TenantView, Error> {
        self.post(&["v1", "tenants"], req).await
    }

    /// `GET /v1/tenants` (root key).
    pub async fn tenants(&self) -> Result<Vec<TenantView>, Error> {
        let items: Items<TenantView> = self.get(&["v1", "tenants"]).await?;
        Ok(items.items)
    }

    /// `POST /v1/tenants/{tenant}/keys` (root key); `tenant` is a name or an id. The
    /// plaintext key in the answer is shown this once.
    pub async fn create_key(&self, tenant: &str, req: &KeyCreate) -> Result<KeyCreated, Error> {
        self.post(&["v1", "tenants", tenant, "keys"], req).await
    }

    /// `GET /v1/tenants/{tenant}/keys` (root key); `tenant` is a name or an id.
    pub async fn keys(&self, tenant: &str) -> Result<Vec<KeyView>, Error> {
        let items: Items<KeyView> = self.get(&["v1", "tenants", tenant, "keys"]).await?;
        Ok(items.items)
    }

    /// `DELETE /v1/keys/{key_id}` (root key): revokes the key and returns its record.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<KeyView, Error> {
        Self::call(self.request(Method::DELETE, &["v1", "keys", id.as_str()])).await
    }

    // ---- operations ----

    /// `GET /healthz`: `Ok` when the process answers.
    pub async fn healthz(&self) -> Result<(), Error> {
        self.probe("healthz").await
    }

    /// `GET /readyz`: `Ok` when the store is reachable and migrated.
    pub async fn readyz(&self) -> Result<(), Error> {
        self.probe("readyz").await
    }

    async fn probe(&self, path: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::GET, &[path])
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.map_err(Error::Transport)?;
        Err(error_from_body(status, &body))
    }
}

/// Turns an error response into [`Error::Api`] when it carries a problem document.
fn error_from_body(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => Error::Api(problem),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut end = text.len().min(ERROR_BODY_LIMIT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Error::UnexpectedStatus {
                status: status.as_u16(),
                body: text[..end].to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_encode_segments() {
        let c = Client::new("http://h:1/prefix/", "k").unwrap();
        assert_eq!(
            c.url(&["v1", "tenants", "a b/c", "keys"]).as_str(),
            "http://h:1/prefix/v1/tenants/a%20b%2Fc/keys"
        );
        let c = Client::new("http://h:1", "k").unwrap();
        assert_eq!(c.url(&["healthz"]).as_str(), "http://h:1/healthz");
    }

    #[test]
    fn bad_base_urls_are_rejected() {
        assert!(matches!(
            Client::new("ftp://h", "k"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            Client::new("not a url", "k"),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn list_query_skips_absent_filters() {
        let c = Client::new("http://h", "k").unwrap();
        let q = JobListQuery {
            queue: Some("emails".into()),
            limit: Some(10),
            ..Default::default()
        };
        let req = c
            .request(Method::GET, &["v1", "jobs"])
            .query(&q)
            .build()
            .unwrap();
        assert_eq!(req.url().query(), Some("queue=emails&limit=10"));
        assert_eq!(req.headers()["authorization"], "Bearer k");
    }

    #[test]
    fn problems_become_api_errors_and_other_bodies_do_not() {
        let body = br#"{"type":"about:blank","title":"Conflict","status":409,"detail":"lease is stale","code":"lease_lost"}"#;
        let e = error_from_body(StatusCode::CONFLICT, body);
        assert!(e.is_lease_lost());
        assert_eq!(e.code(), Some("lease_lost"));
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_transient());

        let e = error_from_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(matches!(e, Error::UnexpectedStatus { status: 502, .. }));
        assert_eq!(e.code(), None);
        assert!(e.is_transient());
    }
}
