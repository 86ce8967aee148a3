//! Sending one completion notice: a signed POST through an HTTP client that refuses, at
//! connect time, every address the egress policy forbids (SSRF guard), follows no
//! redirects and ignores proxy variables (either could route around the guard).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use vow_core::egress::EgressPolicy;
use vow_store::DeliveryTask;

/// How much of a receiver's answer is kept in the delivery log.
const SNIPPET_BYTES: usize = 1_024;

/// Resolves names with the system resolver and keeps only permitted addresses, so a
/// public name that resolves to 127.0.0.1 (or rebinds to it) is refused too.
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(Refused(format!(
                    "{host} resolves to {} only, which webhook_allow_cidrs does not permit",
                    shown.join(", ")
                ))
                .into());
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// The egress policy forbids the target.
#[derive(Debug, thiserror::Error)]
#[error("refused by the SSRF guard: {0}")]
struct Refused(String);

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Time to the answer or the failure.
    pub latency_ms: u64,
    /// Why it failed (`None` on a 2xx).
    pub error: Option<String>,
    /// The start of the answer's body.
    pub response: Option<String>,
    /// The target is forbidden by the egress policy: retrying cannot help.
    pub refused: bool,
}

impl Attempt {
    /// Whether the receiver acknowledged the notice.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sends notices.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A sender honouring `policy`, giving up on a receiver after `timeout`.
    pub fn new(policy: EgressPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!("vow/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, policy })
    }

    /// Sends `task` signed as of `now_secs` (Unix seconds) and reports how it went.
    pub async fn send(&self, task: &DeliveryTask, now_secs: i64) -> Attempt {
        let started = Instant::now();
        let elapsed = |started: Instant| started.elapsed().as_millis() as u64;
        let failed = |error: String, refused: bool| Attempt {
            status: None,
            latency_ms: elapsed(started),
            error: Some(error),
            response: None,
            refused,
        };
        // IP literals never reach the resolver: judge them here.
        match reqwest::Url::parse(&task.url) {
            Ok(url) => {
                let literal = match url.host() {
                    Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                    Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                    _ => None,
                };
                if let Some(ip) = literal.filter(|ip| !self.policy.permits(*ip)) {
                    return failed(
                        format!(
                            "refused by the SSRF guard: {ip} is not permitted \
                             (webhook_allow_cidrs)"
                        ),
                        true,
                    );
                }
            }
            Err(e) => return failed(format!("invalid URL: {e}"), true),
        }
        let secrets: Vec<&str> = task.secrets.iter().map(String::as_str).collect();
        let signature = match vow_core::webhook::sign(
            &secrets,
            task.id.as_str(),
            now_secs,
            task.body.as_bytes(),
        ) {
            Ok(s) => s,
            Err(e) => return failed(format!("cannot sign: {e}"), false),
        };
        let mut request = self
            .client
            .post(&task.url)
            .header("content-type", "application/json")
            .header("webhook-id", task.id.as_str())
            .header("webhook-timestamp", now_secs.to_string())
            .header("webhook-signature", signature)
            .body(task.body.clone());
        let trace = task
            .traceparent
            .as_deref()
            .map(reqwest::header::HeaderValue::from_str);
        if let Some(Ok(tp)) = trace {
            // The trace of the job's enqueue carries on into its notice.
            request = request.header("traceparent", tp);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let refused = source_chain(&e).any(|s| s.is::<Refused>());
                return failed(describe(&e), refused);
            }
        };
        let status = response.status().as_u16();
        let mut snippet = Vec::new();
        while snippet.len() < SNIPPET_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                _ => break,
            }
        }
        snippet.truncate(SNIPPET_BYTES);
        let body = String::from_utf8_lossy(&snippet).into_owned();
        Attempt {
            status: Some(status),
            latency_ms: elapsed(started),
            error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
            response: (!body.is_empty()).then_some(body),
            refused: false,
        }
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// A transport error in one line, with its innermost cause (reqwest's own message is
/// often just "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let root = source_chain(e).last().map(ToString::to_string);
    match root {
        Some(r) if r != e.to_string() => format!("{kind}: {r}"),
        _ => format!("{kind}: {e}"),
    }
}
