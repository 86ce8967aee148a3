//! `kill -9` the real server while completion notices are in flight: after a restart
//! every notice still arrives, re-sent under the same `webhook-id`, correctly signed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CONFIG: &str =
    "[webhooks]\ntimeout_ms = 1000\nretry_schedule_ms = [200, 200, 200, 200, 200, 200, 200, 200]\n";

async fn start(data_dir: &Path, config: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_vow"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("VOW_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return Server(child);
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
struct Seen {
    requests: HashMap<String, u32>,
    acked: HashSet<String>,
    bad_signatures: u32,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_delivery_then_every_notice_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("vow.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let port = free_port();
    let server = start(&data, &config, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let key = std::fs::read_to_string(data.join("default-admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    let secret: Value = http
        .post(format!("{base}/v1/callback-secret"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = Arc::new(Mutex::new(secret["secret"].as_str().unwrap().to_owned()));
    let hang = Arc::new(AtomicBool::new(true));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(receiver(listener, secret, hang.clone(), seen.clone()));

    // Five jobs complete; their notices get stuck in flight at the receiver.
    let mut jobs = Vec::new();
    for i in 0..5 {
        let job: Value = http
            .post(format!("{base}/v1/queues/pay/jobs"))
            .bearer_auth(&key)
            .json(&json!({ "payload": i, "callback_url": target }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    let leased: Value = http
        .post(format!("{base}/v1/queues/pay/lease"))
        .bearer_auth(&key)
        .json(&json!({ "worker_id": "w", "max_jobs": 5, "wait_ms": 1000 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let complete: Vec<Value> = leased["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| json!({ "id": j["id"], "lease_id": j["lease_id"], "result": { "ok": true } }))
        .collect();
    assert_eq!(complete.len(), 5);
    let r = http
        .post(format!("{base}/v1/acks"))
        .bearer_auth(&key)
        .json(&json!({ "complete": complete }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().requests.len() < 5 {
        assert!(Instant::now() < deadline, "the notices were never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight: HashSet<String> = seen.lock().unwrap().requests.keys().cloned().collect();

    // kill -9 while all five are in flight; the receiver recovers; the server restarts.
    Command::new("kill")
        .args(["-9", &server.0.id().to_string()])
        .status()
        .unwrap();
    drop(server); // reaps the killed process
    hang.store(false, Ordering::SeqCst);
    let _server = start(&data, &config, port).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut delivered = 0;
        for job in &jobs {
            let ds: Value = http
                .get(format!("{base}/v1/jobs/{job}/deliveries"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let items = ds["items"].as_array().unwrap();
            assert_eq!(items.len(), 1, "{ds}");
            if items[0]["state"] == "delivered" {
                delivered += 1;
            }
        }
        if delivered == jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} of 5 notices delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0, "every request verified");
    assert_eq!(
        seen.acked, in_flight,
        "re-sent under the ids they had before the crash"
    );
    assert!(
        seen.requests.values().all(|&n| n >= 2),
        "each was sent before and after the crash: {:?}",
        seen.requests
    );
}
