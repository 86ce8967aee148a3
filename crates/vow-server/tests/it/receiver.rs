//! A real webhook receiver on loopback for the notice tests: verifies every signature
//! with the secrets it is given, records what arrived, fails a chosen share of first
//! attempts with a 500, and can be taken down (connections refused) and brought back
//! on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub path: String,
    pub body: String,
    pub verified: bool,
    pub signatures: usize,
    pub answered: u16,
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Shared {
    secrets: Mutex<Vec<String>>,
    got: Mutex<Vec<Received>>,
    attempts: Mutex<HashMap<String, u32>>,
    /// Out of 10: how many first attempts fail (by a hash of the webhook-id).
    fail_first_tenths: u8,
    /// Answer every request with this status instead.
    always: Mutex<Option<u16>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<(JoinHandle<()>, CancellationToken)>,
}

fn first_attempt_fails(id: &str, tenths: u8) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new(); // fixed keys
    id.hash(&mut h);
    h.finish() % 10 < u64::from(tenths)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let secrets = shared.secrets.lock().unwrap().clone();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let now = chrono::Utc::now().timestamp();
    let verified = vow_client::webhook::verify(&refs, &id, &ts, &sig, &body, now, 300).is_ok();
    let attempt = {
        let mut a = shared.attempts.lock().unwrap();
        let n = a.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let status = match *shared.always.lock().unwrap() {
        Some(s) => s,
        None if attempt == 1 && first_attempt_fails(&id, shared.fail_first_tenths) => 500,
        None => 204,
    };
    shared.got.lock().unwrap().push(Received {
        id,
        path: uri.path().to_owned(),
        body: String::from_utf8_lossy(&body).into_owned(),
        verified,
        signatures: sig.split_whitespace().count(),
        answered: status,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// Starts a receiver that checks signatures against `secrets` and fails
    /// `fail_first_tenths`/10 of first attempts.
    pub async fn start(fail_first_tenths: u8) -> Self {
        let shared = Arc::new(Shared {
            fail_first_tenths,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            shared,
            serving: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let token = CancellationToken::new();
        let stop = token.clone();
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        self.serving = Some((task, token));
    }

    /// The base URL (`http://127.0.0.1:port`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Adds a secret signatures are checked against.
    pub fn trust(&self, secret: &str) {
        self.shared.secrets.lock().unwrap().push(secret.to_owned());
    }

    /// Answers every request with `status` (None: back to normal).
    pub fn answer_always(&self, status: Option<u16>) {
        *self.shared.always.lock().unwrap() = status;
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    pub async fn down(&mut self) {
        if let Some((task, token)) = self.serving.take() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }
}
