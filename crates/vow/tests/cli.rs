//! End-to-end tests of the `vow` binary: each test starts `vow serve` as a child process
//! on a free port with its own temporary data dir, then drives it with the CLI exactly
//! as a person or a script would (including `vow worker -- sh -c ...`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
