//! Process-level tests of the real binary: `kill -9` loses nothing acknowledged, and
//! SIGTERM shuts down gracefully (in-flight requests answered, exit code 0).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data_dir: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_vow"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, base }
}

fn admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("default-admin.key"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_enqueueing_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let port = free_port();
    let mut server = start(&data, port).await;
    let key = admin_key(&data);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // A job leased before the crash must come back after its lease expires.
    let leased_id = {
        let r = http
            .post(format!("{}/v1/queues/crash-lease/jobs", server.base))
            .bearer_auth(&key)
            .json(&json!({ "payload": "leased" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let r: Value = http
            .post(format!("{}/v1/queues/crash-lease/lease", server.base))
            .bearer_auth(&key)
            .json(&json!({ "worker_id": "doomed", "lease_ms": 1000 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["jobs"][0]["id"].as_str().unwrap().to_owned()
    };

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..8 {
        let (http, base, key, acked) = (
            http.clone(),
            server.base.clone(),
            key.clone(),
            acknowledged.clone(),
        );
        producers.push(tokio::spawn(async move {
            for i in 0.. {
                let body = if i % 5 == 0 {
                    json!({ "jobs": (0..10).map(|j| json!({ "payload": { "p": p, "i": i, "j": j } })).collect::<Vec<_>>() })
                } else {
                    json!({ "payload": { "p": p, "i": i } })
                };
                let path = if i % 5 == 0 { "jobs/batch" } else { "jobs" };
                let Ok(r) = http.post(format!("{base}/v1/queues/crash/{path}")).bearer_auth(&key).json(&body).send().await else {
                    return;
                };
                if r.status() != 202 {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else { return };
                let mut acked = acked.lock().unwrap();
                match v.get("items") {
                    Some(items) => acked.extend(items.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned())),
                    None => acked.push(v["id"].as_str().unwrap().to_owned()),
                }
            }
        }));
    }
    // Let the producers get going, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "producers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acknowledged.lock().unwrap().clone();

    let mut server = start(&data, port).await;
    let mut missing = Vec::new();
    for id in &acked {
        let r = http
            .get(format!("{}/v1/jobs/{id}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // The job leased before the crash is retried once its lease runs out.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: Value = http
            .post(format!("{}/v1/queues/crash-lease/lease", server.base))
            .bearer_auth(&key)
            .json(&json!({ "worker_id": "survivor", "wait_ms": 1000 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(job) = r["jobs"].as_array().and_then(|a| a.first()) {
            assert_eq!(job["id"], leased_id.as_str());
            assert_eq!(job["attempt"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "the leased job never came back");
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, free_port()).await;
    let key = admin_key(&data);
    let http = reqwest::Client::new();
    let poll = {
        let (http, base, key) = (http.clone(), server.base.clone(), key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .post(format!("{base}/v1/queues/idle/lease"))
                .bearer_auth(key)
                .json(&json!({ "worker_id": "w", "wait_ms": 30000 }))
                .send()
                .await
                .unwrap();
            (
                r.status(),
                r.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, body, took) = poll.await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["jobs"], json!([]));
    assert!(
        took < Duration::from_secs(10),
        "the long-poll was released by shutdown, not its 30 s wait"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0));
    assert!(
        http.get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_err(),
        "stopped accepting"
    );
}
