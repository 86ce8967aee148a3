//! End-to-end tests of the `vow` binary: each test starts `vow serve` as a child process
//! on a free port with its own temporary data dir, then drives it with the CLI exactly
//! as a person or a script would (including `vow worker -- sh -c ...`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vow_core::api::{
    CallbackSecretView, CompleteRequest, DeliveryView, LeaseRequest, Page, WebhookEvent,
    WebhookView,
};

const VOW: &str = env!("CARGO_BIN_EXE_vow");

/// A `vow serve` child process with its own data dir; killed on drop.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let child = Command::new(VOW)
            .args(["serve", "--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("VOW_ROOT_KEY")
            .env_remove("VOW_STORE")
            .env_remove("VOW_CONFIG")
            .env_remove("VOW_WEBHOOK_ALLOW_CIDRS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vow serve");
        let mut server = Server {
            child,
            url: format!("http://{addr}"),
            dir,
        };
        let key = server.dir.path().join("default-admin.key");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("vow serve exited early: {status}");
            }
            if key.exists() && TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "vow serve did not come up within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The key file may appear a moment before it is fully written.
        while std::fs::read_to_string(&key)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `vow` command against this server; its key comes from the data dir.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(VOW);
        c.args(["--url", &self.url])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("VOW_API_KEY")
            .env_remove("VOW_URL")
            .env_remove("VOW_DATA_DIR")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vow")
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vow {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a `--json` command that must succeed and parses its stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn enqueue(&self, queue: &str, payload: &str) -> String {
        let job = self.json(&["enqueue", queue, payload]);
        job["id"].as_str().unwrap().to_owned()
    }

    /// Starts `vow worker` on `queue` running `script` with `sh -c`.
    fn worker(&self, queue: &str, extra: &[&str], script: &str) -> Child {
        let mut args = vec!["worker", "--queue", queue, "--wait-ms", "1000"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.cmd(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vow worker")
    }
}

/// The last line of a command's stdout (where a once-shown secret is printed).
fn last_line(out: &str) -> &str {
    out.lines().last().unwrap_or_default()
}

/// Leases `job_id` from `queue` and completes it through the HTTP API (with the Rust
/// client), as a worker in any language would.
fn complete_through_the_api(s: &Server, queue: &str, job_id: &str) {
    let key = std::fs::read_to_string(s.data_dir().join("default-admin.key")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = vow_client::Client::new(&s.url, key.trim()).unwrap();
        let req = LeaseRequest {
            worker_id: "cli-test".into(),
            max_jobs: Some(1),
            wait_ms: Some(5_000),
            lease_ms: None,
        };
        let leased = c.lease(queue, &req).await.unwrap().jobs;
        assert_eq!(leased.len(), 1, "nothing to lease in {queue}");
        assert_eq!(leased[0].id.as_str(), job_id);
        let done = CompleteRequest {
            lease_id: leased[0].lease_id.clone(),
            result: None,
        };
        c.complete(&leased[0].id, &done).await.unwrap();
    });
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Sends SIGTERM and waits (bounded) for the process to exit.
fn terminate(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `vow jobs get` until `pred` holds (bounded).
fn wait_for(server: &Server, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = server.json(&["jobs", "get", id]);
        if pred(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never became {what}: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enqueue_get_and_list() {
    let s = Server::start();
    let id = s.enqueue("emails", r#"{"to":"a@example.com"}"#);
    assert!(id.starts_with("job_"), "{id}");

    let job = s.json(&["jobs", "get", &id]);
    assert_eq!(job["state"], "available");
    assert_eq!(job["payload"]["to"], "a@example.com");

    let page = s.json(&["jobs", "list", "--queue", "emails"]);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    // The readable forms show the important bits.
    let table = s.ok(&["jobs", "list"]);
    assert!(
        table.contains(&id) && table.contains("available"),
        "{table}"
    );
    let queues = s.ok(&["queues"]);
    assert!(queues.contains("emails"), "{queues}");

    // `-` reads the payload from stdin; without --json one line: id, queue, state.
    let mut child = s
        .cmd(&["enqueue", "emails", "-", "--priority", "1", "--tag", "t1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from":"stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let id2 = line.split('\t').next().unwrap();
    assert!(id2.starts_with("job_") && line.contains("emails"), "{line}");
    let job = s.json(&["jobs", "get", id2]);
    assert_eq!(job["payload"]["from"], "stdin");
    assert_eq!(job["priority"], 1);
    assert_eq!(job["tags"], serde_json::json!(["t1"]));
    let page = s.json(&["jobs", "list", "--tag", "t1"]);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[test]
fn idempotent_enqueue_returns_the_original_job() {
    let s = Server::start();
    let a = s.json(&["enqueue", "q", r#"{"n":1}"#, "--idempotency-key", "k"]);
    let b = s.json(&["enqueue", "q", r#"{"n":1}"#, "--idempotency-key", "k"]);
    assert_eq!(a["id"], b["id"]);
    let out = s.run(&["enqueue", "q", r#"{"n":2}"#, "--idempotency-key", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("idempotency_conflict"));
}

#[test]
fn worker_completes_jobs_with_the_commands_stdout() {
    let s = Server::start();
    let ids: Vec<String> = (0..3)
        .map(|i| s.enqueue("work", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let mut worker = s.worker(
        "work",
        &["--concurrency", "2"],
        r#"cat > /dev/null; echo '{"ok":true}'"#,
    );
    for id in &ids {
        let out = s.run(&["jobs", "wait", id, "--timeout-ms", "20000", "--json"]);
        let job: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{job}");
        assert_eq!(job["state"], "completed");
        assert_eq!(job["result"], serde_json::json!({"ok": true}));
    }
    let status = terminate(&mut worker, Duration::from_secs(10));
    assert!(status.success(), "worker exited with {status}");
}

#[test]
fn exit_65_makes_the_job_dead() {
    let s = Server::start();
    let id = s.enqueue("strict", "{}");
    let mut worker = s.worker("strict", &[], "echo 'bad input' >&2; exit 65");
    let out = s.run(&["jobs", "wait", &id, "--timeout-ms", "20000", "--json"]);
    assert_eq!(out.status.code(), Some(2), "not completed means exit 2");
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "dead");
    assert_eq!(job["attempt"], 1, "no retries after exit 65");
    let msg = job["last_error"]["message"].as_str().unwrap();
    assert!(msg.contains("bad input"), "{msg}");
    terminate(&mut worker, Duration::from_secs(10));
}

#[test]
fn other_exit_codes_are_retried() {
    let s = Server::start();
    let id = s.json(&["enqueue", "flaky", "{}", "--max-attempts", "2"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Fails on the first attempt, succeeds on the second.
    let mut worker = s.worker(
        "flaky",
        &[],
        r#"cat > /dev/null; if [ "$VOW_JOB_ATTEMPT" = 1 ]; then echo oops >&2; exit 3; fi; echo done"#,
    );
    let job = wait_for(&s, &id, "completed", |j| j["state"] == "completed");
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["result"], serde_json::json!({"stdout": "done"}));
    let events = s.json(&["jobs", "events", &id]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"failed"), "{kinds:?}");
    terminate(&mut worker, Duration::from_secs(10));
}

#[test]
fn shutdown_releases_unfinished_jobs() {
    let s = Server::start();
    let id = s.enqueue("slow", "{}");
    let mut worker = s.worker("slow", &["--grace-ms", "300"], "sleep 60");
    wait_for(&s, &id, "running", |j| j["state"] == "running");
    let started = Instant::now();
    let status = terminate(&mut worker, Duration::from_secs(15));
    assert!(status.success(), "worker exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let job = wait_for(&s, &id, "released", |j| j["state"] != "running");
    assert!(
        matches!(job["state"].as_str(), Some("available" | "scheduled")),
        "{job}"
    );
    assert_eq!(job["last_error"]["code"], "worker_shutdown");
}

#[test]
fn api_errors_print_their_code_and_exit_1() {
    let s = Server::start();
    let out = s.run(&["jobs", "get", "job_01JD0000000000000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_found"), "{err}");

    let out = s.run(&[
        "--api-key",
        "vow_key_01JD0000000000000000000000_nope",
        "queues",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}

#[test]
fn tenants_and_keys_with_the_root_key() {
    let s = Server::start();
    let tenant = s.json(&["tenants", "create", "acme", "--max-pending", "100"]);
    assert_eq!(tenant["name"], "acme");
    let tenants = s.ok(&["tenants", "list"]);
    assert!(
        tenants.contains("acme") && tenants.contains("default"),
        "{tenants}"
    );

    let created = s.json(&["keys", "create", "--tenant", "acme", "--role", "producer"]);
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let listed = s.json(&["keys", "list", "--tenant", "acme"]);
    assert!(listed.to_string().contains(&key_id));

    // The new key sees its own tenant only.
    let id = s.json(&["--api-key", &key, "enqueue", "acme-q", "{}"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = s.run(&["jobs", "get", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "default's admin must not see acme's job"
    );

    s.json(&["keys", "revoke", &key_id]);
    let out = s.run(&["--api-key", &key, "enqueue", "acme-q", "{}"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn webhook_subscriptions_print_their_secret_once() {
    let s = Server::start();
    let out = s.run(&[
        "webhooks",
        "create",
        "https://hooks.example.com/vow",
        "--event",
        "job.completed",
        "--event",
        "job.dead",
        "--queue",
        "billing",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let secret = last_line(&stdout).to_owned();
    assert!(secret.starts_with("whsec_"), "{stdout}");
    assert_eq!(stdout.matches(&secret).count(), 1, "{stdout}");
    assert!(stderr.contains("shown this once"), "{stderr}");
    assert!(stdout.contains("job.completed, job.dead") && stdout.contains("billing"));

    // --json: the API's WebhookView, secret included.
    let created: WebhookView = serde_json::from_value(s.json(&[
        "webhooks",
        "create",
        "https://hooks.example.com/other",
        "--event",
        "job.cancelled",
    ]))
    .unwrap();
    let other_secret = created.secret.clone().unwrap();
    assert!(other_secret.starts_with("whsec_"));
    assert_eq!(created.events, [WebhookEvent::JobCancelled]);
    assert_eq!(created.queues, None);
    let id = created.id.to_string();

    // Lists and reads never show a secret; `vow webhooks` lists.
    let table = s.ok(&["webhooks"]);
    assert!(
        table.contains(&id) && table.contains("hooks.example.com/vow"),
        "{table}"
    );
    assert!(!table.contains("whsec_"), "{table}");
    let listed: Vec<WebhookView> = serde_json::from_value(s.json(&["webhooks", "list"])).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|w| w.secret.is_none()));
    let got = s.json(&["webhooks", "get", &id]);
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], "https://hooks.example.com/other");
    let table = s.ok(&["webhooks", "get", &id]);
    assert!(
        table.contains("job.cancelled") && !table.contains("whsec_"),
        "{table}"
    );

    // A rotation prints the new secret once; the old one signs for a grace period.
    let out = s.run(&["webhooks", "rotate-secret", &id]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rotated = last_line(&stdout);
    assert!(
        rotated.starts_with("whsec_") && rotated != other_secret,
        "{stdout}"
    );
    assert!(stdout.contains("previous_secret_valid_until"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"));

    // No notices yet: an empty page.
    let page: Page<DeliveryView> =
        serde_json::from_value(s.json(&["webhooks", "deliveries", &id, "--limit", "10"])).unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());

    // Deleted: gone from get (exit 1 with the problem's code) and from the list.
    let out = s.ok(&["webhooks", "delete", &id]);
    assert!(out.contains(&id), "{out}");
    let out = s.run(&["webhooks", "get", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not_found") && err.contains("webhook"),
        "{err}"
    );
    let out = s.run(&["webhooks", "delete", &id]);
    assert_eq!(out.status.code(), Some(1), "deleting twice is a 404");
    assert_eq!(s.json(&["webhooks"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_refused_callback_is_dead_logged_and_can_be_retried() {
    let s = Server::start();
    // A callback_url needs the tenant's callback secret first.
    let out = s.run(&[
        "enqueue",
        "cb",
        "{}",
        "--callback-url",
        "http://127.0.0.1:9/x",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("callback-secret"), "{stderr}");
    s.ok(&["callback-secret", "rotate"]);
    // Without VOW_WEBHOOK_ALLOW_CIDRS the SSRF guard refuses loopback targets.
    let job = s.json(&[
        "enqueue",
        "cb",
        "{}",
        "--callback-url",
        "http://127.0.0.1:9/x",
    ]);
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert!(s
        .json(&["deliveries", "job", &job_id])
        .as_array()
        .unwrap()
        .is_empty());
    complete_through_the_api(&s, "cb", &job_id);

    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let items: Vec<DeliveryView> =
            serde_json::from_value(s.json(&["deliveries", "job", &job_id])).unwrap();
        if let Some(d) = items.into_iter().find(|d| d.state.as_str() == "dead") {
            break d;
        }
        assert!(Instant::now() < deadline, "no dead delivery within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = dead.last_error.clone().unwrap();
    assert!(error.contains("SSRF guard"), "{error}");
    assert_eq!(dead.webhook_id, None, "the job's own callback_url");
    assert_eq!(dead.event, WebhookEvent::JobCompleted);
    let msg = dead.id.to_string();
    assert!(msg.starts_with("msg_"), "{msg}");

    // The table lists it as dead, for the job's callback_url.
    let table = s.ok(&["deliveries", "job", &job_id]);
    assert!(
        table.contains(&msg)
            && table.contains("dead")
            && table.contains("callback_url")
            && table.contains("SSRF guard"),
        "{table}"
    );

    // Its attempt log: one attempt, no status, the refusal as the error.
    let got: DeliveryView = serde_json::from_value(s.json(&["deliveries", "get", &msg])).unwrap();
    let log = got.log.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].status, None);
    assert!(log[0].error.as_deref().unwrap().contains("SSRF guard"));
    let table = s.ok(&["deliveries", "get", &msg]);
    assert!(
        table.contains("ATTEMPT")
            && table.contains("LATENCY")
            && table.contains("http://127.0.0.1:9/x")
            && table.contains("SSRF guard"),
        "{table}"
    );

    // A retry makes it pending again; it is sent again (and refused again).
    let retried: DeliveryView =
        serde_json::from_value(s.json(&["deliveries", "retry", &msg])).unwrap();
    assert_eq!(retried.state.as_str(), "pending");
    assert_eq!(retried.id, dead.id, "a replay keeps its webhook-id");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d: DeliveryView = serde_json::from_value(s.json(&["deliveries", "get", &msg])).unwrap();
        if d.state.as_str() == "dead" && d.log.as_ref().is_some_and(|l| l.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the replay was not sent: {d:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = s.run(&["deliveries", "get", "msg_01JD0000000000000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

#[test]
fn the_callback_secret_is_printed_once_with_the_old_ones_grace() {
    let s = Server::start();
    let out = s.run(&["callback-secret", "rotate"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first = last_line(&stdout).to_owned();
    assert!(first.starts_with("whsec_"), "{stdout}");
    assert!(stdout.contains("no previous callback secret"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"));

    let out = s.ok(&["callback-secret", "rotate"]);
    let second = last_line(&out);
    assert!(second.starts_with("whsec_") && second != first, "{out}");
    assert!(out.contains("keeps signing"), "{out}");

    let v: CallbackSecretView =
        serde_json::from_value(s.json(&["callback-secret", "rotate"])).unwrap();
    assert!(v.secret.starts_with("whsec_"));
    assert!(v.previous_secret_valid_until.is_some());
}
