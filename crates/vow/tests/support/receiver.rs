//! A minimal webhook receiver for the process-level notice tests: it verifies every
//! signature against the secret it is given, counts requests per `webhook-id`, and while
//! `hang` is set reads a notice and never answers (the sender is stuck mid-delivery);
//! otherwise it answers 204.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running receiver.
pub struct HangingReceiver {
    /// Where to send notices (`http://127.0.0.1:port/done`).
    pub url: String,
    /// While set, notices are read and never answered.
    pub hang: Arc<AtomicBool>,
    /// What arrived.
    pub seen: Arc<Mutex<Seen>>,
    secret: Arc<Mutex<String>>,
}

impl HangingReceiver {
    /// Starts hanging, checking signatures against `secret`.
    pub async fn start(secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = HangingReceiver {
            url: format!("http://{}/done", listener.local_addr().unwrap()),
            hang: Arc::new(AtomicBool::new(true)),
            seen: Arc::default(),
            secret: Arc::new(Mutex::new(secret.to_owned())),
        };
        tokio::spawn(receiver(
            listener,
            r.secret.clone(),
            r.hang.clone(),
            r.seen.clone(),
        ));
        r
    }

    /// From now on, answer 204.
    pub fn release(&self) {
        self.hang.store(false, Ordering::SeqCst);
    }

    /// How many distinct notices arrived so far.
    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().requests.len()
    }
}

/// The value of header `name` (case-insensitive) in an HTTP request head.
fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// What the receiver saw: per webhook-id, how many requests and whether each verified.
#[derive(Default)]
pub struct Seen {
    /// Requests per webhook-id.
    pub requests: HashMap<String, u32>,
    /// Ids answered 204.
    pub acked: HashSet<String>,
    /// Requests whose signature did not verify.
    pub bad_signatures: u32,
}

/// A minimal HTTP receiver: while `hang` is set it reads a notice and never answers
/// (the sender is stuck mid-delivery); otherwise it answers 204.
async fn receiver(
    listener: tokio::net::TcpListener,
    secret: Arc<Mutex<String>>,
    hang: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (secret, hang, seen) = (secret.clone(), hang.clone(), seen.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = header(&head, "content-length").parse().unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let id_raw = header(&head, "webhook-id");
            let ts = header(&head, "webhook-timestamp");
            let sig_raw = header(&head, "webhook-signature");
            let secret = secret.lock().unwrap().clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let ok =
                vow_client::webhook::verify(&[&secret], &id_raw, &ts, &sig_raw, &body, now, 300)
                    .is_ok();
            {
                let mut s = seen.lock().unwrap();
                *s.requests.entry(id_raw.clone()).or_default() += 1;
                if !ok {
                    s.bad_signatures += 1;
                }
            }
            if hang.load(Ordering::SeqCst) {
                // Stuck: hold the connection until the sender goes away.
                let _ = sock.read(&mut chunk).await;
                return;
            }
            let _ = sock
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
            seen.lock().unwrap().acked.insert(id_raw);
        });
    }
}
