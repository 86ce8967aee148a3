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
        .env_remove("VOW_URL")
        .env_remove("VOW_API_KEY")
        .env_remove("VOW_STORE")
        .env_remove("VOW_DATA_DIR")
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
    assert_eq!(ids, ["W1", "W2", "W3a", "W3b", "W4"]);

    for (id, n, state) in [
        ("W1", 200, "available"),
        ("W2", 200, "available"),
        ("W3a", 500, "completed"),
        ("W3b", 500, "completed"),
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
    }
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
    let _ = server.kill();
    let _ = server.wait();
    assert_success(&out);
    let r = read_json(&out_path);
    assert_eq!(r["server"], "external");
    assert_eq!(r["ok"], true);
    for id in ["W1", "W3a", "W3b"] {
        let w = workload(&r, id);
        assert_eq!(w["counts_ok"], true, "{w:#}");
        assert!(w["server_cpu_percent"].as_f64().is_some(), "{w:#}");
    }
}
