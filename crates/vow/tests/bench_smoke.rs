//! Smoke test of `vow bench`, so the bench cannot rot: tiny sizes through the real
//! binary (which starts its own `vow serve` children), then the JSON's shape and the
//! store counts it reports. Figures are not checked: a debug build on a shared CI
//! machine says nothing about speed.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const VOW: &str = env!("CARGO_BIN_EXE_vow");

/// `vow bench` with tiny sizes and a clean environment.
fn bench(args: &[&str], out: &Path) -> Output {
    Command::new(VOW)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("BENCH_N_ENQ", "200")
        .env("BENCH_N_DRAIN", "500")
        .env("BENCH_N_LAT", "100")
        .env("BENCH_N_NOTICE", "200")
        .env_remove("VOW_URL")
        .env_remove("VOW_API_KEY")
        .env_remove("VOW_STORE")
        .env_remove("VOW_DATA_DIR")
        .env_remove("VOW_CONFIG")
        .env_remove("VOW_WEBHOOK_ALLOW_CIDRS")
        .stdin(Stdio::null())
        .output()
        .expect("run vow bench")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "vow bench failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON file was written");
    serde_json::from_str(&text).expect("the results are JSON")
}

fn workload<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {report:#}"))
}

#[test]
fn w1_to_w4_run_against_a_spawned_server_and_counts_hold() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("results.json");
    let out = bench(&["--workloads", "W1,W2,W3,W4"], &out_path);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("W3b"),
        "the table lists the workloads:\n{stdout}"
    );

    let r = read_json(&out_path);
    assert_eq!(r["ok"], true);
    assert_eq!(r["store"], "sqlite");
    assert_eq!(r["server"], "spawned");
    assert_eq!(r["sizes"]["n_enq"], 200);
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(r["machine"]["kernel"].is_string());
    let ids: Vec<&str> = r["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["W1", "W2", "W3a", "W3b", "W3c", "W4"]);

    for (id, n, state) in [
        ("W1", 200, "available"),
        ("W2", 200, "available"),
        ("W3a", 500, "completed"),
        ("W3b", 500, "completed"),
        ("W3c", 500, "completed"),
        ("W4", 100, "completed"),
    ] {
        let w = workload(&r, id);
        assert_eq!(w["ok"], true, "{w:#}");
        assert_eq!(w["n"], n);
        assert_eq!(w["counts_ok"], true);
        assert_eq!(w["duplicates"], 0);
        let counts = w["counts"].as_object().unwrap();
        for (s, c) in counts {
            let expected = if s == state { n } else { 0 };
            assert_eq!(c, expected, "{id}: {s} count in {counts:?}");
        }
        assert!(w["server_cpu_percent"].as_f64().is_some(), "{id}: {w:#}");
        assert!(w["client_cpu_percent"].as_f64().is_some(), "{id}: {w:#}");
        assert!(w["server_peak_rss_mib"].as_f64().unwrap() > 0.0, "{id}");
        if id == "W4" {
            let l = &w["latency_ms"];
            assert_eq!(l["count"], 100);
            assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
        } else {
            assert!(w["jobs_per_s"].as_f64().unwrap() > 0.0, "{id}");
        }
        if id == "W3a" || id == "W3b" {
            // Every ack is timed, and every lease that came back with jobs: one job each
            // in W3a, up to 16 in W3b.
            let (leases, acks) = (&w["lease_request_ms"], &w["ack_request_ms"]);
            assert_eq!(acks["count"], w["ack_requests"], "{id}: {w:#}");
            let timed = leases["count"].as_u64().unwrap();
            let least = if id == "W3a" { 500 } else { 500 / 16 };
            assert!(timed >= least, "{id}: {w:#}");
            assert!(
                timed <= w["lease_requests"].as_u64().unwrap(),
                "{id}: {w:#}"
            );
            assert!(leases["p50"].as_f64().unwrap() > 0.0, "{id}: {w:#}");
        }
    }
}

/// W6 with a fast notice retry schedule (200 ms instead of 5 s) given to the spawned
/// server with --server-config, so the test takes a second or two rather than six; the
/// breaker's threshold is raised too, so a rare run of five failed first attempts cannot
/// rest the receiver for 30 s. The results must say the settings are not the defaults.
#[test]
fn w6_delivers_every_notice_verified_once_to_the_bench_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fast-notices.toml");
    std::fs::write(
        &config,
        "[webhooks]\nretry_schedule_ms = [200, 300000]\n[webhooks.breaker]\nthreshold = 1000\n",
    )
    .unwrap();
    let out_path = dir.path().join("results.json");
    let out = bench(
        &[
            "--workloads",
            "W6",
            "--server-config",
            config.to_str().unwrap(),
        ],
        &out_path,
    );
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NON-DEFAULT webhook settings"), "{stdout}");
    assert!(stdout.contains("W6 notices: 200 delivered"), "{stdout}");

    let r = read_json(&out_path);
    assert_eq!(r["ok"], true);
    assert_eq!(r["sizes"]["n_notice"], 200);
    assert!(r["server_config"]
        .as_str()
        .unwrap()
        .ends_with("fast-notices.toml"));
    let w = workload(&r, "W6");
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(w["counts_ok"], true);
    assert_eq!(w["counts"]["completed"], 200);
    assert_eq!(w["duplicates"], 0, "no job reached a handler twice");
    assert!(w["jobs_per_s"].as_f64().unwrap() > 0.0);
    assert!(w["lease_requests"].as_u64().unwrap() > 0);
    let nf = &w["notices"];
    assert_eq!(nf["delivered"], 200, "{nf:#}");
    assert_eq!(nf["store_delivered"], 200, "{nf:#}");
    assert_eq!(nf["bad_signatures"], 0);
    assert_eq!(nf["unexpected"], 0);
    assert_eq!(nf["problems"].as_array().unwrap().len(), 0);
    assert_eq!(nf["default_webhook_settings"], false);
    assert_eq!(nf["retry_schedule_ms"][0], 200);
    // ~30 % of 200 first attempts fail (never none: that would take 0.7^200).
    let failed = nf["first_attempt_failures"].as_u64().unwrap();
    assert!((20..=100).contains(&failed), "{nf:#}");
    let (requests, duplicates) = (
        nf["requests"].as_u64().unwrap(),
        nf["duplicates"].as_u64().unwrap(),
    );
    assert_eq!(requests, 200 + failed + duplicates, "{nf:#}");
    assert!(nf["store_attempts"].as_u64().unwrap() >= 200 + failed);
    assert_eq!(nf["completion_to_ack_ms"]["count"], 200);
    assert!(nf["notified_s"].as_f64().unwrap() >= nf["drained_s"].as_f64().unwrap());
}

#[test]
fn later_workloads_and_bad_stores_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("results.json");
    let out = bench(&["--workloads", "W1,W5"], &out_path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not available yet"), "{stderr}");

    // A server that cannot start fails the run (exit 1) and the JSON says why.
    let out = bench(&["--workloads", "W1", "--store", "nosuch://x"], &out_path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = read_json(&out_path);
    assert_eq!(r["ok"], false);
    let w = workload(&r, "W1");
    assert!(w["error"].as_str().unwrap().contains("server"), "{w:#}");
}

/// A free address on the loopback interface.
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn an_existing_server_is_benched_on_a_queue_of_its_own() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = Command::new(VOW)
        .args(["serve", "--listen", &addr])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("VOW_ROOT_KEY")
        .env_remove("VOW_STORE")
        .env_remove("VOW_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let key = data.path().join("default-admin.key");
    let deadline = Instant::now() + Duration::from_secs(30);
    let key_written = || {
        !std::fs::read_to_string(&key)
            .unwrap_or_default()
            .trim()
            .is_empty()
    };
    while TcpStream::connect(&addr).is_err() || !key_written() {
        assert!(Instant::now() < deadline, "vow serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out_path = data.path().join("results.json");
    let url = format!("http://{addr}");
    let pid = server.id().to_string();
    let out = bench(
        &[
            "--workloads",
            "W1,W3",
            "--url",
            &url,
            "--data-dir",
            data.path().to_str().unwrap(),
            "--server-pid",
            &pid,
        ],
        &out_path,
    );
    // The server keeps its SSRF guard (no --webhook-allow-cidrs): W6's notices to the
    // receiver on 127.0.0.1 are refused, and the bench must say so, not hang.
    let w6_path = data.path().join("w6.json");
    let w6 = bench(
        &[
            "--workloads",
            "W6",
            "--url",
            &url,
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &w6_path,
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_success(&out);
    let r = read_json(&out_path);
    assert_eq!(r["server"], "external");
    assert_eq!(r["ok"], true);
    for id in ["W1", "W3a", "W3b", "W3c"] {
        let w = workload(&r, id);
        assert_eq!(w["counts_ok"], true, "{w:#}");
        assert!(w["server_cpu_percent"].as_f64().is_some(), "{w:#}");
    }

    assert_eq!(w6.status.code(), Some(1), "{w6:?}");
    let r = read_json(&w6_path);
    let error = workload(&r, "W6")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("SSRF guard") && error.contains("--webhook-allow-cidrs 127.0.0.1/32"),
        "{error}"
    );
}

/// On PostgreSQL every workload starts on a freshly reset store (BENCH.md): a database
/// of its own, made through `--store` and dropped after the workload.
#[test]
fn on_postgres_each_workload_runs_in_a_database_of_its_own() {
    let db = vow_postgres::testing::Cluster::shared().database();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let query = |sql: &str| -> Vec<tokio_postgres::Row> {
        rt.block_on(async { db.client().await.query(sql, &[]).await.unwrap() })
    };
    let bench_databases = || -> Vec<String> {
        query("SELECT datname FROM pg_database WHERE datname LIKE 'vow_bench_%'")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let before = bench_databases();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("results.json");
    let out = bench(&["--workloads", "W1,W4", "--store", &db.url], &out_path);
    assert_success(&out);
    let report = read_json(&out_path);
    assert_eq!(report["store"], "postgres");
    for id in ["W1", "W4"] {
        let w = workload(&report, id);
        assert_eq!(w["store_reset"], "a database of its own", "{w:#}");
        assert_eq!(w["counts_ok"], true, "{w:#}");
    }
    let left: Vec<String> = bench_databases()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert!(
        left.is_empty(),
        "the workloads' databases were dropped: {left:?}"
    );
    let tables: i64 = query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0].get(0);
    assert_eq!(
        tables, 0,
        "nothing was written to the --store database itself"
    );
}
