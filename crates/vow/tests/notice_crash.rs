//! `kill -9` the real server while completion notices are in flight: after a restart
//! every notice still arrives, re-sent under the same `webhook-id`, correctly signed.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::notices::{wait_in_flight, Api};

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
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_vow"))
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
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
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

    let api = Api {
        http: &http,
        base: &base,
        key: &key,
    };
    let rx = api.receiver().await;

    // Five jobs complete; their notices get stuck in flight at the receiver.
    let jobs = api.complete_with_callbacks("pay", 5, &rx.url).await;
    wait_in_flight(&rx, 5).await;
    let in_flight: HashSet<String> = rx.seen.lock().unwrap().requests.keys().cloned().collect();

    // kill -9 while all five are in flight; the receiver recovers; the server restarts.
    Command::new("kill")
        .args(["-9", &server.0.id().to_string()])
        .status()
        .unwrap();
    drop(server); // reaps the killed process
    rx.release();
    let _server = start(&data, &config, port).await;

    api.wait_delivered(&jobs).await;
    let seen = rx.seen.lock().unwrap();
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
