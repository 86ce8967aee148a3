//! Multi-node operation on PostgreSQL, with real `vow serve` processes:
//! - three nodes, producers and workers spread across them, 20,000 jobs, one node killed
//!   with `kill -9` mid-run: every job completed exactly once, the jobs leased through
//!   the dead node retried after their leases expired, nothing acknowledged lost;
//! - notices in flight when the dispatching node is killed: another node takes the
//!   dispatcher lease over and delivers them, under the same webhook-ids;
//! - a PostgreSQL outage (the cluster stopped, then started): `/readyz` not ready,
//!   requests answered `503 store_unavailable` quickly, nodes recover on their own.
//!
//! PostgreSQL comes from `VOW_TEST_DATABASE_URL` or a throwaway cluster (see
//! `vow_postgres::testing`; the outage test always uses a private cluster it can stop).

mod support;

use vow_postgres::testing as testpg;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::notices::{wait_in_flight, Api};
use testpg::Cluster;

const QUEUE: &str = "work";
const JOBS: usize = 20_000;

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data_dir: &Path, store: &str, root_key: &str) -> Node {
    start_with(data_dir, store, root_key, &[]).await
}

/// [`start`] with extra `vow serve` arguments.
async fn start_with(data_dir: &Path, store: &str, root_key: &str, extra: &[&str]) -> Node {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_vow"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            store,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "error")
        .env("VOW_ROOT_KEY", root_key)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let node = Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", node.base)).send().await {
            if r.status().is_success() {
                return node;
            }
        }
        assert!(Instant::now() < deadline, "node did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("default-admin.key"))
        .unwrap()
        .trim()
        .to_owned()
}

fn root_key() -> String {
    vow_core::auth::ApiKeySecret::generate().expose().to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Three nodes: the first bootstraps (tenant `default` and its admin key), the others
/// join the same database.
async fn three_nodes(dir: &Path, store: &str) -> (Vec<Node>, String) {
    let root = root_key();
    let first = start(&dir.join("n0"), store, &root).await;
    let key = admin_key(&dir.join("n0"));
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(start(&dir.join(format!("n{i}")), store, &root).await);
    }
    (nodes, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_20000_jobs_one_killed_mid_run() {
    let db = tokio::task::spawn_blocking(|| Cluster::shared().database())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{}?pool_size=8", db.url);
    let (mut nodes, key) = three_nodes(dir.path(), &store).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let http = http();

    // Producers: one on each node that survives (the victim's clients would die with it),
    // batches of 1000; every acknowledged id is remembered.
    let enqueued: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for (p, base) in bases.iter().take(2).enumerate() {
        let (http, key, base, enqueued) =
            (http.clone(), key.clone(), base.clone(), enqueued.clone());
        producers.push(tokio::spawn(async move {
            for b in (p..JOBS / 1000).step_by(2) {
                let jobs: Vec<Value> = (0..1000)
                    .map(|i| {
                        json!({ "payload": { "n": b * 1000 + i }, "max_attempts": 5,
                                      "backoff": { "initial_ms": 200, "max_ms": 500 } })
                    })
                    .collect();
                let r = http
                    .post(format!("{base}/v1/queues/{QUEUE}/jobs/batch"))
                    .bearer_auth(&key)
                    .json(&json!({ "jobs": jobs }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let body: Value = r.json().await.unwrap();
                let mut set = enqueued.lock().unwrap();
                for item in body["items"].as_array().unwrap() {
                    set.insert(item["id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }

    // Workers: two per node. Those of node 2 hold their leases a while before acking,
    // so the kill catches them holding some; they die with their node.
    let completed: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let leased_via_dead: Arc<Mutex<HashSet<String>>> = Arc::default();
    let acked_via_dead: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let ok_acks = Arc::new(AtomicUsize::new(0));
    // How many node-2 workers hold leased jobs right now (between lease and ack).
    let holding = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let node = w % 3;
        let (http, key, base) = (http.clone(), key.clone(), bases[node].clone());
        let (completed, leased_via_dead, acked_via_dead, done, ok_acks, holding) = (
            completed.clone(),
            leased_via_dead.clone(),
            acked_via_dead.clone(),
            done.clone(),
            ok_acks.clone(),
            holding.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/v1/queues/{QUEUE}/lease"))
                    .bearer_auth(&key)
                    .json(&json!({ "worker_id": format!("w{w}"), "max_jobs": 100,
                                   "wait_ms": 500, "lease_ms": 3000 }))
                    .send()
                    .await;
                let Ok(r) = r else { return }; // the node is gone: so is this worker
                if r.status() != 200 {
                    return;
                }
                let body: Value = r.json().await.unwrap();
                let jobs = body["jobs"].as_array().unwrap().clone();
                if jobs.is_empty() {
                    continue;
                }
                if node == 2 {
                    {
                        let mut set = leased_via_dead.lock().unwrap();
                        for j in &jobs {
                            set.insert(j["id"].as_str().unwrap().to_owned());
                        }
                    }
                    holding.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                }
                let complete: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({ "id": j["id"], "lease_id": j["lease_id"], "result": null }))
                    .collect();
                let Ok(r) = http
                    .post(format!("{base}/v1/acks"))
                    .bearer_auth(&key)
                    .json(&json!({ "complete": complete }))
                    .send()
                    .await
                else {
                    return;
                };
                if r.status() != 200 {
                    return;
                }
                let body: Value = r.json().await.unwrap();
                let mut map = completed.lock().unwrap();
                for item in body["complete"].as_array().unwrap() {
                    if item["ok"] == json!(true) {
                        let id = item["id"].as_str().unwrap().to_owned();
                        if node == 2 {
                            acked_via_dead.lock().unwrap().insert(id.clone());
                        }
                        *map.entry(id).or_default() += 1;
                        ok_acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Kill node 2 once the run is well under way, at a moment one of its workers holds
    // leased jobs (it holds them 300 ms before acking), while producers may still run.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok_acks.load(Ordering::Relaxed) < JOBS / 4 || holding.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the run does not progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let victim = nodes.remove(2);
    let pid = victim.child.id();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    drop(victim);
    let killed_at = ok_acks.load(Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(
        enqueued.lock().unwrap().len(),
        JOBS,
        "every batch acknowledged"
    );

    // Done when vow's own record says every job completed. (An ack node 2 committed but
    // died before answering counts there and not in `ok_acks`.)
    let counts = |http: reqwest::Client, base: String, key: String| async move {
        let q: Value = http
            .get(format!("{base}/v1/queues/{QUEUE}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        q["counts"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let c = counts(http.clone(), bases[0].clone(), key.clone()).await;
        if c["completed"] == json!(JOBS) {
            break;
        }
        assert!(Instant::now() < deadline, "not all jobs completed: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    assert!(killed_at < JOBS, "the kill happened mid-run");
    assert_eq!(
        counts(http.clone(), bases[0].clone(), key.clone()).await,
        json!({ "scheduled": 0, "available": 0, "running": 0, "completed": JOBS,
                "dead": 0, "cancelled": 0 }),
        "vow's own record: all completed, nothing else"
    );

    // Exactly once: no job was accepted as completed twice, every acknowledged job is
    // among the completed ones, and the only completions without an answered ack are
    // jobs whose ack went through node 2 as it died.
    let completed = completed.lock().unwrap().clone();
    let enqueued = enqueued.lock().unwrap().clone();
    assert!(completed.values().all(|&n| n == 1), "a job completed twice");
    let acked: HashSet<String> = completed.keys().cloned().collect();
    assert!(acked.is_subset(&enqueued), "only enqueued jobs complete");
    let unanswered: Vec<String> = enqueued.difference(&acked).cloned().collect();
    {
        let leased_via_dead = leased_via_dead.lock().unwrap();
        assert!(
            unanswered.iter().all(|id| leased_via_dead.contains(id)),
            "a job completed without an accepted ack, and not through the dead node"
        );
    }
    assert!(
        unanswered.len() <= 200,
        "at most the two dead workers' in-flight acks: {}",
        unanswered.len()
    );

    // Jobs whose lease died with node 2 came back after the lease expired.
    let acked_via_dead = acked_via_dead.lock().unwrap().clone();
    let orphans: Vec<String> = leased_via_dead
        .lock()
        .unwrap()
        .difference(&acked_via_dead)
        .cloned()
        .collect();
    assert!(!orphans.is_empty(), "node 2 died holding leases");
    let mut expired = 0;
    for id in &orphans {
        let events: Value = http
            .get(format!("{}/v1/jobs/{id}/events", bases[0]))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kinds: Vec<&str> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "completed").count(),
            1,
            "{id}: {kinds:?}"
        );
        if kinds.contains(&"lease_expired") {
            expired += 1;
            let last = kinds.last().copied();
            assert_eq!(last, Some("completed"), "{id}: retried to completion");
        }
    }
    assert!(
        expired > 0,
        "the kill caught leases held through node 2, and they were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_is_503_then_recovers_with_nothing_lost() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::throwaway)
            .await
            .unwrap(),
    );
    let c = cluster.clone();
    let db = tokio::task::spawn_blocking(move || c.database())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "{}?pool_size=4&pool_timeout_ms=1000&statement_timeout_ms=2000",
        db.url
    );
    let (nodes, key) = three_nodes(dir.path(), &store).await;
    let http = http();

    let mut acknowledged = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let r = http
            .post(format!("{}/v1/queues/{QUEUE}/jobs", n.base))
            .bearer_auth(&key)
            .json(&json!({ "payload": i }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        acknowledged.push(body["id"].as_str().unwrap().to_owned());
    }

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    for n in &nodes {
        let t = Instant::now();
        let r = http.get(format!("{}/readyz", n.base)).send().await.unwrap();
        assert_eq!(r.status(), 503, "not ready while PostgreSQL is down");
        let r = http
            .post(format!("{}/v1/queues/{QUEUE}/jobs", n.base))
            .bearer_auth(&key)
            .json(&json!({ "payload": "during" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "store_unavailable");
        assert!(t.elapsed() < Duration::from_secs(10), "answered, not hung");
    }

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
        loop {
            let r = http.get(format!("{}/readyz", n.base)).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "a node did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for id in &acknowledged {
        let r = http
            .get(format!("{}/v1/jobs/{id}", nodes[1].base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged job {id} survived the outage");
    }
    // Cross-node wake-ups work again: a long-poll on node 1 gets node 0's enqueue fast.
    // (Drain the three jobs first.)
    let r: Value = http
        .post(format!("{}/v1/queues/{QUEUE}/lease", nodes[1].base))
        .bearer_auth(&key)
        .json(&json!({ "worker_id": "w", "max_jobs": 10 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["jobs"].as_array().unwrap().len(), 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let poll = {
            let (http, key, base) = (http.clone(), key.clone(), nodes[1].base.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r: Value = http
                    .post(format!("{base}/v1/queues/{QUEUE}/lease"))
                    .bearer_auth(&key)
                    .json(&json!({ "worker_id": "w", "max_jobs": 1, "wait_ms": 5000 }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (r["jobs"].as_array().unwrap().len(), t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        let r = http
            .post(format!("{}/v1/queues/{QUEUE}/jobs", nodes[0].base))
            .bearer_auth(&key)
            .json(&json!({ "payload": "after" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let (got, _) = poll.await.unwrap();
        if got == 1 && sent.elapsed() < Duration::from_millis(1_000) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 is not woken by node 0's enqueue after the outage"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notices_in_flight_survive_the_dispatching_node() {
    let db = tokio::task::spawn_blocking(|| Cluster::shared().database())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vow.toml");
    std::fs::write(
        &config,
        "webhook_allow_cidrs = [\"127.0.0.1/32\"]\n[webhooks]\ntimeout_ms = 1000\n",
    )
    .unwrap();
    let extra = ["--config", config.to_str().unwrap()];
    let root = root_key();
    // Node 0 alone: it holds the dispatcher lease when the notices go out.
    let first = start_with(&dir.path().join("n0"), &db.url, &root, &extra).await;
    let key = admin_key(&dir.path().join("n0"));
    let http = http();
    let base0 = first.base.clone();

    let api0 = Api {
        http: &http,
        base: &base0,
        key: &key,
    };
    let rx = api0.receiver().await;
    let jobs = api0.complete_with_callbacks(QUEUE, 4, &rx.url).await;
    wait_in_flight(&rx, 4).await;

    // A second node joins; node 0 dies holding the notices; the receiver recovers.
    let second = start_with(&dir.path().join("n1"), &db.url, &root, &extra).await;
    Command::new("kill")
        .args(["-9", &first.child.id().to_string()])
        .status()
        .unwrap();
    drop(first);
    rx.release();

    let api1 = Api {
        http: &http,
        base: &second.base,
        key: &key,
    };
    api1.wait_delivered(&jobs).await;
    let seen = rx.seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(
        seen.acked.len(),
        4,
        "the same four webhook-ids, re-sent by node 1"
    );
    assert!(
        seen.requests.values().all(|&n| n >= 2),
        "{:?}",
        seen.requests
    );
}
