//! W6's receiver of completion notices: a real HTTP server on 127.0.0.1 inside the bench
//! process, as a tenant's receiver would be. It verifies every Standard Webhooks
//! signature with the tenant's callback secret, answers `500` to a deterministic
//! [`FAIL_PERCENT`] % of first attempts (chosen by a hash of `webhook-id`, so a retry of
//! the same notice is always acknowledged) and `204` otherwise, and records every
//! request: its `webhook-id`, how many times that id came, whether it verified.
//!
//! Counting: a `500` followed by a `204` for the same id is a retry, not a duplicate; a
//! *duplicate* is a `204` for an id that was acknowledged already (at-least-once
//! delivery allows them; the figure says how often they happen).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::sync::watch;
use vow_client::webhook::{verify, DEFAULT_TOLERANCE_SECS};
use vow_core::notice::{NoticeBody, NoticeType};
use vow_core::JobId;

use super::workloads::now_ms;

/// Share of first attempts the receiver answers with `500`.
pub const FAIL_PERCENT: u64 = 30;
/// Problems kept word for word (the counts keep counting past them).
const KEPT_PROBLEMS: usize = 5;

/// What the receiver saw so far.
#[derive(Debug, Default)]
struct Seen {
    /// Per `webhook-id`: requests received and whether one was acknowledged.
    ids: HashMap<String, Entry>,
    /// Jobs with an acknowledged notice.
    jobs: HashSet<JobId>,
    requests: u64,
    first_attempt_failures: u64,
    duplicates: u64,
    bad_signatures: u64,
    /// Verified, but not a `job.completed` notice this bench can read.
    unexpected: u64,
    problems: Vec<String>,
    /// Acknowledgement − the job's `finished_at`, per job, ms.
    completion_to_ack_ms: Vec<f64>,
    /// Acknowledgement − the job's `created_at` (its enqueue), per job, ms.
    enqueue_to_ack_ms: Vec<f64>,
}

#[derive(Debug, Default)]
struct Entry {
    requests: u32,
    acked: bool,
}

impl Seen {
    fn problem(&mut self, what: String) {
        if self.problems.len() < KEPT_PROBLEMS {
            self.problems.push(what);
        }
    }
}

#[derive(Debug)]
struct Shared {
    secret: String,
    seen: Mutex<Seen>,
    /// Jobs with an acknowledged notice, for whoever waits for all of them.
    acked: watch::Sender<u64>,
}

/// The receiver's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Requests received (any answer).
    pub requests: u64,
    /// Jobs whose notice was acknowledged.
    pub delivered: u64,
    /// First attempts answered `500` on purpose.
    pub first_attempt_failures: u64,
    /// `204`s for a `webhook-id` acknowledged before.
    pub duplicates: u64,
    /// Requests whose signature did not verify with the callback secret.
    pub bad_signatures: u64,
    /// Verified requests that were not a readable `job.completed` notice.
    pub unexpected: u64,
    /// The first few problems, word for word.
    pub problems: Vec<String>,
    /// Acknowledgement − `finished_at`, ms, per job.
    pub completion_to_ack_ms: Vec<f64>,
    /// Acknowledgement − `created_at`, ms, per job.
    pub enqueue_to_ack_ms: Vec<f64>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Where notices go: `http://127.0.0.1:<port>/notice`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port that verifies with `secret`.
    pub async fn start(secret: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1 for the notice receiver")?;
        let addr = listener.local_addr()?;
        let (acked, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            secret,
            seen: Mutex::new(Seen::default()),
            acked,
        });
        let app = Router::new()
            .route("/notice", post(notice))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the bench's notice receiver stopped");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/notice"),
            shared,
            server,
        })
    }

    /// Follows the number of jobs whose notice was acknowledged.
    pub fn acked(&self) -> watch::Receiver<u64> {
        self.shared.acked.subscribe()
    }

    /// The jobs of `ids` whose notice was not acknowledged (yet).
    pub fn missing(&self, ids: &[JobId]) -> Vec<JobId> {
        let seen = self.lock();
        ids.iter()
            .filter(|id| !seen.jobs.contains(*id))
            .cloned()
            .collect()
    }

    /// Requests that failed verification so far, and the first problem seen.
    pub fn bad_signatures(&self) -> (u64, Option<String>) {
        let seen = self.lock();
        (seen.bad_signatures, seen.problems.first().cloned())
    }

    /// The figures so far.
    pub fn snapshot(&self) -> Snapshot {
        let seen = self.lock();
        Snapshot {
            requests: seen.requests,
            delivered: seen.jobs.len() as u64,
            first_attempt_failures: seen.first_attempt_failures,
            duplicates: seen.duplicates,
            bad_signatures: seen.bad_signatures,
            unexpected: seen.unexpected,
            problems: seen.problems.clone(),
            completion_to_ack_ms: seen.completion_to_ack_ms.clone(),
            enqueue_to_ack_ms: seen.enqueue_to_ack_ms.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Whether the receiver fails the first attempt of notice `webhook_id`: FNV-1a of the
/// id, mixed (SplitMix64's finalizer) so every bit counts, below [`FAIL_PERCENT`] of 100.
/// The same id always gets the same answer, in every run and build.
pub fn fails_first_attempt(webhook_id: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in webhook_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % 100 < FAIL_PERCENT
}

/// `POST /notice`.
async fn notice(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at_ms = now_ms();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let id = header("webhook-id");
    // Verify against the raw bytes before reading them, as receivers must.
    let verified = verify(
        &[shared.secret.as_str()],
        id,
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        (at_ms / 1000.0) as i64,
        DEFAULT_TOLERANCE_SECS,
    );
    let mut guard = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
    let seen = &mut *guard;
    seen.requests += 1;
    if let Err(e) = verified {
        seen.bad_signatures += 1;
        seen.problem(format!("notice {id:?} failed verification: {e}"));
        return StatusCode::UNAUTHORIZED;
    }
    let entry = seen.ids.entry(id.to_owned()).or_default();
    entry.requests += 1;
    if entry.requests == 1 && fails_first_attempt(id) {
        seen.first_attempt_failures += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if entry.acked {
        seen.duplicates += 1;
        return StatusCode::NO_CONTENT;
    }
    let notice: NoticeBody = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            seen.unexpected += 1;
            seen.problem(format!("notice {id}: unreadable body: {e}"));
            return StatusCode::BAD_REQUEST;
        }
    };
    entry.acked = true;
    if notice.kind != NoticeType::JobCompleted {
        seen.unexpected += 1;
        seen.problem(format!(
            "notice {id}: {} for job {}, expected job.completed",
            notice.kind.as_str(),
            notice.data.id
        ));
    }
    let job = &notice.data;
    if let Some(finished) = job.finished_at {
        seen.completion_to_ack_ms
            .push(at_ms - finished.millis() as f64);
    }
    seen.enqueue_to_ack_ms
        .push(at_ms - job.created_at.millis() as f64);
    if seen.jobs.insert(job.id.clone()) {
        shared.acked.send_replace(seen.jobs.len() as u64);
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_thirty_percent_of_first_attempts_fail_and_always_the_same_ones() {
        let ids: Vec<String> = (0..10_000)
            .map(|i| format!("msg_01JD7Z0W6Q1W5Y3T8KZ2V{i:05}"))
            .collect();
        let failing = ids.iter().filter(|id| fails_first_attempt(id)).count();
        assert!((2_700..=3_300).contains(&failing), "{failing} of 10,000");
        assert!(ids
            .iter()
            .all(|id| fails_first_attempt(id) == fails_first_attempt(id)));
    }

    #[tokio::test]
    async fn verifies_fails_first_attempts_and_counts_duplicates() {
        let secret = vow_core::webhook::generate_secret();
        let receiver = Receiver::start(secret.clone()).await.unwrap();
        let http = reqwest::Client::new();
        let job = serde_json::json!({
            "id": vow_core::JobId::generate(), "queue": "bench", "state": "completed",
            "group": null, "attempt": 1, "max_attempts": 25, "result": null,
            "last_error": null, "created_at": "2026-01-01T00:00:00.000Z",
            "started_at": "2026-01-01T00:00:00.001Z", "finished_at": "2026-01-01T00:00:00.002Z",
            "run_at": "2026-01-01T00:00:00.000Z", "tags": [], "metadata": {}
        });
        let body = serde_json::json!({
            "type": "job.completed", "timestamp": "2026-01-01T00:00:00.002Z", "data": job
        })
        .to_string();
        // An id whose first attempt fails, so all three cases show.
        let id = (0..)
            .map(|i| format!("msg_test{i}"))
            .find(|id| fails_first_attempt(id))
            .unwrap();
        let now = (now_ms() / 1000.0) as i64;
        let send = |secret: &str| {
            let sig = vow_core::webhook::sign(&[secret], &id, now, body.as_bytes()).unwrap();
            http.post(&receiver.url)
                .header("webhook-id", &id)
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", sig)
                .body(body.clone())
                .send()
        };
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(status(send(&secret).await.unwrap()), 500, "first attempt");
        assert_eq!(status(send(&secret).await.unwrap()), 204, "the retry");
        assert_eq!(status(send(&secret).await.unwrap()), 204, "a duplicate");
        let other = vow_core::webhook::generate_secret();
        assert_eq!(status(send(&other).await.unwrap()), 401, "wrong secret");
        let s = receiver.snapshot();
        assert_eq!(
            (
                s.requests,
                s.delivered,
                s.first_attempt_failures,
                s.duplicates,
                s.bad_signatures
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(s.unexpected, 0, "{:?}", s.problems);
        assert_eq!(s.completion_to_ack_ms.len(), 1);
        assert_eq!(*receiver.acked().borrow(), 1);
    }
}
