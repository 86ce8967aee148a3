//! `vow bench`: the workloads of `BENCH.md` (W1–W4 and W6 so far) through the real HTTP API,
//! with the server's and the bench's CPU, the server's peak RSS, a table, a JSON file,
//! and a check of the store's counts after every workload (a run that lost or doubled a
//! job fails, whatever its speed).
//!
//! By default each workload gets a fresh `vow serve` child (this executable) with its own
//! temp data dir on a free port, so figures of one workload do not leak into the next
//! and the server can be measured apart from the client. `--url` benches an existing
//! server instead, on a queue of its own per workload.

mod measure;
mod receiver;
mod report;
mod target;
mod workloads;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vow_client::Client;
use vow_core::api::QueueCounts;
use vow_core::Timestamp;

use measure::{Machine, Pid};
use report::{Percentiles, Report, Sizes, WorkloadResult};
use target::{ServerConfigFile, Target};
use workloads::Meter;

/// `vow bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated: W1 (single enqueue), W2 (batch enqueue), W3
    /// (drain, in three modes: W3a one lease + one complete per job, W3b batched lease and
    /// acks, W3c the vow-client Worker), W4 (latency), W6 (completion notices: jobs with a callback_url to a
    /// receiver in the bench on 127.0.0.1 that verifies every signature and fails 30 %
    /// of first attempts; timed until every notice is acknowledged, so it takes at least
    /// the server's first retry delay, 5 s by default; BENCH_N_NOTICE sets its size).
    /// W5 is not available yet. W6 lets its spawned server reach 127.0.0.1 (--webhook-allow-cidrs
    /// 127.0.0.1/32); with --url the server must allow that itself and be on this
    /// machine, and W6 rotates the tenant's callback secret (POST /v1/callback-secret).
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4,W6", value_parser = parse_workload)]
    pub workloads: Vec<Workload>,

    /// Store URL for the servers the bench starts (passed to `vow serve --store`)
    /// [default: the embedded store in a fresh temp dir].
    #[arg(long)]
    pub store: Option<String>,

    /// With --url: the server's pid, to report its CPU and peak RSS (else unknown).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// A settings file (TOML, as for `vow serve --config`) for the servers the bench
    /// starts, e.g. a faster notice retry schedule for a quick W6. Results say so: W6
    /// figures with non-default [webhooks] settings are marked and not comparable.
    #[arg(long, value_name = "FILE.toml")]
    pub server_config: Option<PathBuf>,

    /// Where to write the results as JSON [default: ./vow-bench-<unix time>.json].
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

/// A workload of `BENCH.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// Single enqueue, sequential.
    W1,
    /// Batch enqueue, batches of 100.
    W2,
    /// Drain, both modes.
    W3,
    /// Latency of an idle worker.
    W4,
    /// Completion notices.
    W6,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    match s.trim().to_ascii_uppercase().as_str() {
        "W1" => Ok(Workload::W1),
        "W2" => Ok(Workload::W2),
        "W3" => Ok(Workload::W3),
        "W4" => Ok(Workload::W4),
        "W6" => Ok(Workload::W6),
        "W5" => Err(
            "W5 (fairness) is not available yet: it comes with the fairness work; run W1-W4, W6"
                .into(),
        ),
        other => Err(format!(
            "unknown workload `{other}`: choose from W1, W2, W3, W4, W6"
        )),
    }
}

/// Job counts from `BENCH.md`, or from `BENCH_N_ENQ`, `BENCH_N_DRAIN`, `BENCH_N_LAT`,
/// `BENCH_N_NOTICE`.
fn sizes() -> anyhow::Result<Sizes> {
    fn var(name: &str, default: u64) -> anyhow::Result<u64> {
        match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{name}={v} is not a positive whole number")),
        }
    }
    Ok(Sizes {
        n_enq: var("BENCH_N_ENQ", 20_000)?,
        n_drain: var("BENCH_N_DRAIN", 50_000)?,
        n_lat: var("BENCH_N_LAT", 2_000)?,
        n_notice: var("BENCH_N_NOTICE", 10_000)?,
    })
}

/// How the bench reaches its server, from the command line: `url` is `Some` only when
/// `--url` was given on the command line (a `VOW_URL` in the environment is ignored, so
/// a stray variable never points a load test at a real server).
pub fn target(
    args: &BenchArgs,
    url: Option<&str>,
    api_key: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Target> {
    match url {
        Some(_) if args.server_config.is_some() => {
            anyhow::bail!(
                "--server-config is for the servers the bench starts; with --url configure that server itself"
            )
        }
        Some(_) if args.store.is_some() => {
            anyhow::bail!(
                "give --store (the bench starts the server) or --url (an existing one), not both"
            )
        }
        Some(url) => Ok(Target::External {
            url: url.to_owned(),
            api_key: api_key()?,
            pid: args.server_pid,
        }),
        None if args.server_pid.is_some() => {
            anyhow::bail!("--server-pid goes with --url: the bench measures its own servers anyway")
        }
        None => Ok(Target::Spawn {
            store: args.store.clone(),
            config: args
                .server_config
                .as_deref()
                .map(ServerConfigFile::read)
                .transpose()?,
        }),
    }
}

/// Runs the bench; exits with failure when any workload failed its checks.
pub async fn run(args: &BenchArgs, target: Target) -> anyhow::Result<ExitCode> {
    let sizes = sizes()?;
    let mut wanted = args.workloads.clone();
    wanted.sort();
    wanted.dedup();
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("vow-bench-{secs}.json"))
    });
    let started_at = Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
    .to_rfc3339();
    let mut machine = Machine::probe();
    if machine.build == "debug" {
        eprintln!("note: this is a debug build; its figures are not worth comparing (cargo build --release -p vow)");
    }
    let store = target.store_kind().to_owned();
    let server_config = match &target {
        Target::Spawn {
            config: Some(c), ..
        } => Some(c.path.display().to_string()),
        _ => None,
    };
    let mut results = Vec::new();
    for w in wanted {
        let runs: &[(&str, &str, u64)] = match w {
            Workload::W1 => &[("W1", "single enqueue, one client, one request at a time", sizes.n_enq)],
            Workload::W2 => &[("W2", "batch enqueue, one client, sequential batches of 100", sizes.n_enq)],
            Workload::W3 => &[
                ("W3a", "drain of pre-enqueued jobs, 16 slots each leasing max_jobs=1 and completing with one POST /v1/jobs/{id}/complete per job", sizes.n_drain),
                ("W3b", "drain of pre-enqueued jobs, one lease loop leasing up to its 16 free slots, completions sent in batches with POST /v1/acks", sizes.n_drain),
                ("W3c", "drain of pre-enqueued jobs by the vow-client Worker (concurrency 16, no-op handlers): what a Rust worker gets; outcomes reported in batches with POST /v1/acks, a slot free once its handler returns (at most 16 outcomes unrecorded); timed until the Worker has stopped with every outcome recorded", sizes.n_drain),
            ],
            Workload::W4 => &[("W4", "vow-client Worker (concurrency 16, long-poll leases) idle; producer enqueues at 200 jobs/s open loop; latency = handler start - enqueue start", sizes.n_lat)],
            Workload::W6 => &[("W6", "jobs with callback_url to a receiver in the bench (127.0.0.1) that verifies every signature and answers 500 to 30% of first attempts, 204 otherwise; enqueued in batches of 100 while the W3b drain completes them; timed from the first enqueue until every job's notice is acknowledged", sizes.n_notice)],
        };
        for &(id, description, n) in runs {
            let mut r = WorkloadResult::new(id, description, n);
            if let Err(e) = run_one(&target, &mut r).await {
                r.ok = false;
                r.error = Some(format!("{e:#}"));
            }
            r.judge(&store);
            eprintln!("{}", summary(&r));
            results.push(r);
        }
    }
    machine.load_at_end = measure::load_average();
    machine.disk_sync_at_end = measure::DiskSync::probe(&std::env::temp_dir());
    let ok = results.iter().all(|r| r.ok);
    let report = Report {
        tool: "vow bench",
        started_at,
        durability: match store.as_str() {
            "sqlite" => "embedded SQLite, WAL: a 202 or an ack is sent only after fdatasync of the log (group commit, pipelined)".to_owned(),
            "postgres" => "PostgreSQL as configured on the server (the bench does not check synchronous_commit)".to_owned(),
            _ => "unknown".to_owned(),
        },
        store,
        server: match target {
            Target::Spawn { .. } => "spawned",
            Target::External { .. } => "external",
        },
        sizes,
        server_config,
        machine,
        ok,
        workloads: results,
    };
    println!("{}", report::table(&report));
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&out, json + "\n").with_context(|| format!("cannot write {}", out.display()))?;
    println!("results written to {}", out.display());
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the bench run FAILED: a workload errored or the store's counts were wrong (see above)");
        Ok(ExitCode::FAILURE)
    }
}

/// One line per workload on stderr, also when there is no progress bar.
fn summary(r: &WorkloadResult) -> String {
    match (&r.error, r.ok) {
        (Some(e), _) => format!("{}: FAILED: {e}", r.id),
        (None, false) => format!(
            "{}: FAILED: store counts are wrong: {:?} (duplicates seen: {})",
            r.id, r.counts, r.duplicates
        ),
        (None, true) => format!(
            "{}: {} in {:.2} s, counts ok",
            r.id,
            r.figure(),
            r.elapsed_s.unwrap_or_default()
        ),
    }
}

fn progress_bar(id: &str, n: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(n), draw_target());
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>4} {msg:<11} [{bar:30}] {pos}/{len} {per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(id.to_owned());
    pb.set_message(what.to_owned());
    pb
}

/// stderr when it is a terminal; nothing otherwise (logs, CI).
fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

async fn run_one(target: &Target, r: &mut WorkloadResult) -> anyhow::Result<()> {
    let session = target
        .session(&r.id.to_ascii_lowercase(), r.id == "W6")
        .await
        .context("preparing the server")?;
    let (client, queue, n) = (&session.client, session.queue.as_str(), r.n);
    let mut meter = Meter::new(session.server_pid);
    let pb = progress_bar(&r.id, n, "running");
    let measured = match r.id.as_str() {
        "W1" => workloads::w1_single_enqueue(client, queue, n, &pb, &mut meter).await,
        "W2" => workloads::w2_batch_enqueue(client, queue, n, &pb, &mut meter).await,
        "W3a" | "W3b" | "W3c" => {
            pb.set_message("pre-enqueue");
            workloads::preload(client, queue, n, &pb).await?;
            pb.reset();
            pb.set_message("drain");
            match r.id.as_str() {
                "W3a" => workloads::w3_drain_per_job(client, queue, n, &pb, &mut meter).await,
                "W3b" => workloads::w3_drain_batched(client, queue, n, &pb, &mut meter).await,
                _ => workloads::w3_drain_worker(client, queue, n, &pb, &mut meter).await,
            }
        }
        "W4" => workloads::w4_latency(client, queue, n, &pb, &mut meter).await,
        "W6" => {
            pb.set_message("enqueue+drain");
            workloads::w6_notices(client, queue, n, &pb, &mut meter).await
        }
        other => anyhow::bail!("no workload {other}"),
    };
    pb.finish_and_clear();
    let m = measured?;
    let secs = m.elapsed.as_secs_f64();
    r.elapsed_s = Some(secs);
    if r.id != "W4" && secs > 0.0 {
        r.jobs_per_s = Some(m.jobs as f64 / secs);
    }
    r.latency_ms = Percentiles::of(&m.latency_ms);
    r.request_ms = Percentiles::of(&m.request_ms);
    // The Worker of W3c keeps its requests to itself.
    if r.id == "W3a" || r.id == "W3b" || r.id == "W6" {
        r.lease_requests = Some(m.leases);
        r.ack_requests = Some(m.acks);
        r.lease_request_ms = Percentiles::of(&m.lease_ms);
        r.ack_request_ms = Percentiles::of(&m.ack_ms);
    }
    r.duplicates = m.duplicates;
    r.notices = m.notices.map(|mut nf| {
        if let Some((schedule, default)) = target.notice_settings() {
            nf.retry_schedule_ms = Some(schedule);
            nf.default_webhook_settings = Some(default);
        }
        nf
    });
    r.server_cpu_percent = meter.server_cpu;
    r.client_cpu_percent = meter.client_cpu;
    r.server_peak_rss_mib = workloads::server_peak_rss(session.server_pid).map(mib);
    r.client_peak_rss_mib = measure::peak_rss_bytes(Pid::Current).map(mib);
    let counts = verify(client, queue).await?;
    r.counts_ok = counts_ok(&r.id, n, &counts);
    r.counts = Some(counts);
    r.store_reset = Some(session.store_reset.to_owned());
    session.finish()?;
    r.ok = r.counts_ok && r.duplicates == 0;
    if let Some(problems) = r.notices.as_ref().map(|nf| &nf.problems) {
        if !problems.is_empty() {
            r.ok = false;
            r.error = Some(format!("notices: {}", problems.join("; ")));
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The queue's counts in the store (`GET /v1/queues/{queue}`).
async fn verify(client: &Client, queue: &str) -> anyhow::Result<QueueCounts> {
    // Acks are answered after their commit, so the counts are final already; the
    // timeout only guards against a server that stopped answering.
    let q = tokio::time::timeout(Duration::from_secs(60), client.queue(queue))
        .await
        .context("counting the queue timed out")?
        .context("counting the queue")?;
    Ok(q.counts)
}

/// Enqueue workloads leave exactly `n` available jobs; drains, W4 and W6 exactly `n`
/// completed ones and nothing else.
fn counts_ok(id: &str, n: u64, c: &QueueCounts) -> bool {
    let expected = if id == "W1" || id == "W2" {
        QueueCounts {
            available: n,
            ..QueueCounts::default()
        }
    } else {
        QueueCounts {
            completed: n,
            ..QueueCounts::default()
        }
    };
    *c == expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_and_later_ones_are_refused_clearly() {
        assert_eq!(parse_workload(" w3 "), Ok(Workload::W3));
        assert_eq!(parse_workload("w6"), Ok(Workload::W6));
        let e = parse_workload("W5").unwrap_err();
        assert!(e.contains("not available yet"), "{e}");
        assert!(parse_workload("W9").unwrap_err().contains("unknown"));
    }

    #[test]
    fn counts_must_be_exact() {
        let n = 10;
        let mut c = QueueCounts {
            available: 10,
            ..Default::default()
        };
        assert!(counts_ok("W1", n, &c));
        assert!(!counts_ok("W3a", n, &c));
        c.available = 11;
        assert!(!counts_ok("W2", n, &c), "a doubled job fails the run");
        let mut done = QueueCounts {
            completed: 10,
            ..Default::default()
        };
        assert!(counts_ok("W4", n, &done));
        done.running = 1;
        assert!(!counts_ok("W3b", n, &done));
    }
}
