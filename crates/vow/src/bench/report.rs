//! The results of a bench run: one [`WorkloadResult`] per workload (and W3 mode), the
//! table printed at the end, and the JSON document written with `--out`.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use vow_core::api::QueueCounts;

use super::measure::{DiskSync, Machine};

/// Percentiles of a list of durations, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self {
            count: v.len(),
            p50: round3(rank(0.50)),
            p95: round3(rank(0.95)),
            p99: round3(rank(0.99)),
            max: round3(v[v.len() - 1]),
            mean: round3(v.iter().sum::<f64>() / v.len() as f64),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The issue's first bar for a workload on a store kind, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bar {
    /// At least this many jobs/s.
    MinJobsPerSecond(f64),
    /// p99 latency at most this many ms.
    MaxP99Ms(f64),
}

impl Bar {
    /// The bar of issue 6 for workload `id` (`W3a`, `W3b`, …) on `store` (`sqlite` or
    /// `postgres`).
    pub fn of(id: &str, store: &str) -> Option<Bar> {
        use Bar::*;
        match (store, id) {
            ("sqlite", "W1") => Some(MinJobsPerSecond(4_000.0)),
            ("sqlite", "W2") => Some(MinJobsPerSecond(80_000.0)),
            ("sqlite", "W3a") => Some(MinJobsPerSecond(10_000.0)),
            ("sqlite", "W3b") => Some(MinJobsPerSecond(25_000.0)),
            ("sqlite", "W4") => Some(MaxP99Ms(4.0)),
            ("postgres", "W1") => Some(MinJobsPerSecond(2_500.0)),
            ("postgres", "W2") => Some(MinJobsPerSecond(45_000.0)),
            ("postgres", "W3b") => Some(MinJobsPerSecond(10_000.0)),
            ("postgres", "W4") => Some(MaxP99Ms(6.0)),
            _ => None,
        }
    }

    fn met_by(self, r: &WorkloadResult) -> Option<bool> {
        match self {
            Bar::MinJobsPerSecond(min) => r.jobs_per_s.map(|x| x >= min),
            Bar::MaxP99Ms(max) => r.latency_ms.map(|l| l.p99 <= max),
        }
    }

    fn label(self) -> String {
        match self {
            Bar::MinJobsPerSecond(min) => format!("≥ {} jobs/s", thousands(min)),
            Bar::MaxP99Ms(max) => format!("p99 ≤ {max} ms"),
        }
    }
}

/// What one workload (one W3 mode) measured and whether its counts held.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// `W1`, `W2`, `W3a` (one lease + one complete per job), `W3b` (batched), `W3c` (the
    /// vow-client Worker), `W4`, `W6`.
    pub id: String,
    /// What exactly ran.
    pub description: String,
    /// Jobs the workload was asked for.
    pub n: u64,
    /// Passed: no error, store counts as expected, no duplicates.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Wall time of the timed part, in seconds.
    pub elapsed_s: Option<f64>,
    /// Throughput (W1–W3; W6 end to end).
    pub jobs_per_s: Option<f64>,
    /// W4: handler start − enqueue start, ms.
    pub latency_ms: Option<Percentiles>,
    /// Time of each enqueue request (W1, W4) or batch request (W2), ms.
    pub request_ms: Option<Percentiles>,
    /// Lease requests in the timed part (W3a, W3b, W6; the Workers of W3c and W4 not
    /// counted).
    pub lease_requests: Option<u64>,
    /// Completes (W3a) or ack requests (W3b, W6) in the timed part.
    pub ack_requests: Option<u64>,
    /// Time of each lease request that returned jobs (W3a, W3b, W6), ms.
    pub lease_request_ms: Option<Percentiles>,
    /// Time of each complete (W3a) or ack request (W3b, W6), ms.
    pub ack_request_ms: Option<Percentiles>,
    /// W6: the completion notices, as the receiver and the server saw them.
    pub notices: Option<NoticeFigures>,
    /// Server CPU over the timed part, % of one core; `None` when unknown.
    pub server_cpu_percent: Option<f64>,
    /// The bench's own CPU over the timed part, % of one core.
    pub client_cpu_percent: Option<f64>,
    /// The server's peak RSS (VmHWM) when the workload ended, in MiB: for a server the
    /// bench started, over this workload (set-up included); for `--server-pid`, over
    /// the server's whole life.
    pub server_peak_rss_mib: Option<f64>,
    /// The bench's own peak RSS so far, in MiB.
    pub client_peak_rss_mib: Option<f64>,
    /// The queue's counts in the store at the end (`GET /v1/queues/{queue}`).
    pub counts: Option<QueueCounts>,
    /// Whether those counts are exactly what the workload must leave.
    pub counts_ok: bool,
    /// Jobs handed to a handler more than once.
    pub duplicates: u64,
    /// The issue's bar for this workload on this store.
    pub bar: Option<Bar>,
    /// Whether the figure meets it.
    pub meets_bar: Option<bool>,
    /// What the workload started on: a data dir, a PostgreSQL database, a tenant or a
    /// queue of its own.
    pub store_reset: Option<String>,
}

impl WorkloadResult {
    /// An empty result for workload `id`.
    pub fn new(id: &str, description: &str, n: u64) -> Self {
        Self {
            id: id.to_owned(),
            description: description.to_owned(),
            n,
            ok: false,
            error: None,
            elapsed_s: None,
            jobs_per_s: None,
            latency_ms: None,
            request_ms: None,
            lease_requests: None,
            lease_request_ms: None,
            ack_request_ms: None,
            ack_requests: None,
            notices: None,
            server_cpu_percent: None,
            client_cpu_percent: None,
            server_peak_rss_mib: None,
            client_peak_rss_mib: None,
            counts: None,
            counts_ok: false,
            duplicates: 0,
            bar: None,
            meets_bar: None,
            store_reset: None,
        }
    }

    /// Sets the bar for `store` and whether it is met.
    pub fn judge(&mut self, store: &str) {
        self.bar = Bar::of(&self.id, store);
        self.meets_bar = self.bar.and_then(|b| b.met_by(self));
    }

    /// The headline figure: jobs/s, or p50/p95/p99 for W4; for W6 jobs/s end to end
    /// with the notices delivered and the duplicates.
    pub fn figure(&self) -> String {
        if let Some(l) = &self.latency_ms {
            return format!("p50 {:.2} / p95 {:.2} / p99 {:.2} ms", l.p50, l.p95, l.p99);
        }
        let rate = match self.jobs_per_s {
            Some(x) => format!("{} jobs/s", thousands(x)),
            None => "-".to_owned(),
        };
        match &self.notices {
            Some(nf) => format!(
                "{rate} end to end, {}/{} notices delivered, {} duplicates{}",
                thousands(nf.delivered as f64),
                thousands(self.n as f64),
                nf.duplicates,
                match nf.default_webhook_settings {
                    Some(false) => " [NON-DEFAULT webhook settings]",
                    _ => "",
                }
            ),
            None => rate,
        }
    }
}

/// W6's figures about the notices themselves.
#[derive(Debug, Clone, Serialize)]
pub struct NoticeFigures {
    /// Jobs whose notice the receiver acknowledged (`204`): all of them in a passing run.
    pub delivered: u64,
    /// Requests the receiver got, whatever it answered.
    pub requests: u64,
    /// First attempts the receiver answered `500` on purpose.
    pub first_attempt_failures: u64,
    /// `204`s for a `webhook-id` acknowledged before (a `500`'d first attempt and its
    /// retry are not a duplicate). At-least-once delivery allows them.
    pub duplicates: u64,
    /// Requests whose signature did not verify with the tenant's callback secret.
    pub bad_signatures: u64,
    /// Verified requests that were not a readable `job.completed` notice.
    pub unexpected: u64,
    /// Notices the server reports `delivered` (`GET /v1/jobs/{id}/deliveries`).
    pub store_delivered: u64,
    /// Attempts the server counts for them (compare with `requests`).
    pub store_attempts: u64,
    /// Seconds from the first enqueue until all jobs were enqueued.
    pub enqueued_s: Option<f64>,
    /// … until all were completed.
    pub drained_s: f64,
    /// … until every job's notice was acknowledged (the timed part).
    pub notified_s: f64,
    /// Acknowledgement (receiver's clock) − the job's `finished_at`, ms.
    pub completion_to_ack_ms: Option<Percentiles>,
    /// Acknowledgement − the job's `created_at` (its enqueue), ms.
    pub enqueue_to_ack_ms: Option<Percentiles>,
    /// Share of first attempts the receiver fails, %.
    pub receiver_fail_percent: u64,
    /// The server's notice retry delays, when the bench started the server.
    pub retry_schedule_ms: Option<Vec<u64>>,
    /// Whether the server's `[webhooks]` settings are the defaults (`None`: unknown,
    /// an external server).
    pub default_webhook_settings: Option<bool>,
    /// Why the notices fail the run; empty when they pass.
    pub problems: Vec<String>,
}

/// The whole run, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `vow bench`.
    pub tool: &'static str,
    /// When the run started (UTC).
    pub started_at: String,
    /// `sqlite`, `postgres`, or unknown for an external server.
    pub store: String,
    /// `spawned` (a fresh `vow serve` per workload) or `external` (`--url`).
    pub server: &'static str,
    /// What a `202` or an ack means for durability on this store.
    pub durability: String,
    /// Job counts asked for: W1/W2, W3, W4, W6.
    pub sizes: Sizes,
    /// `--server-config`: the settings file the spawned servers got (`None`: defaults).
    pub server_config: Option<String>,
    /// Machine, kernel, build, commit, load.
    pub machine: Machine,
    /// Every workload passed its checks.
    pub ok: bool,
    /// One entry per workload (W3 has three: `W3a`, `W3b`, `W3c`).
    pub workloads: Vec<WorkloadResult>,
}

/// The job counts of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// W1 and W2 (`BENCH_N_ENQ`).
    pub n_enq: u64,
    /// W3 (`BENCH_N_DRAIN`).
    pub n_drain: u64,
    /// W4 (`BENCH_N_LAT`).
    pub n_lat: u64,
    /// W6 (`BENCH_N_NOTICE`).
    pub n_notice: u64,
}

/// `12,345`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    let mut out = groups.join(",");
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn percent(x: Option<f64>) -> String {
    x.map(|p| format!("{p:.0} %"))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What a durable write cost on this disk at the start and the end of the run, and
/// the ceiling that puts on a client waiting for each one (W1).
fn disk_line(start: Option<DiskSync>, end: Option<DiskSync>) -> String {
    let one = |d: DiskSync| {
        format!(
            "p50 {:.0} µs (p90 {:.0}), at most {} durable writes/s one after another",
            d.p50_us,
            d.p90_us,
            thousands(1e6 / d.p50_us)
        )
    };
    match (start, end) {
        (Some(s), Some(e)) => format!(
            "\ndisk (4 KiB append + fdatasync in the temp dir): at start {}; at end {}",
            one(s),
            one(e)
        ),
        (Some(d), None) | (None, Some(d)) => format!(
            "\ndisk (4 KiB append + fdatasync in the temp dir): {}",
            one(d)
        ),
        (None, None) => String::new(),
    }
}

/// The results as a table for people.
pub fn table(report: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "workload",
            "jobs",
            "result",
            "bar (issue 6)",
            "server CPU",
            "client CPU",
            "server peak RSS",
            "check",
        ]);
    for r in &report.workloads {
        let bar = match (r.bar, r.meets_bar) {
            (Some(b), Some(true)) => format!("{} ✓", b.label()),
            (Some(b), Some(false)) => format!("{} ✗", b.label()),
            (Some(b), None) => b.label(),
            (None, _) => "-".to_owned(),
        };
        let check = if r.ok {
            "ok".to_owned()
        } else if r.error.is_some() {
            "FAILED".to_owned()
        } else {
            "COUNTS WRONG".to_owned()
        };
        t.add_row([
            format!("{} {}", r.id, short_label(&r.id)),
            thousands(r.n as f64),
            r.figure(),
            bar,
            percent(r.server_cpu_percent),
            percent(r.client_cpu_percent),
            r.server_peak_rss_mib
                .map(|m| format!("{m:.1} MiB"))
                .unwrap_or_else(|| "unknown".to_owned()),
            check,
        ]);
    }
    let mut out = t.to_string();
    for r in &report.workloads {
        if let Some(nf) = &r.notices {
            out.push('\n');
            out.push_str(&notice_lines(&r.id, nf));
        }
    }
    out.push_str(&disk_line(
        report.machine.disk_sync_at_start,
        report.machine.disk_sync_at_end,
    ));
    if let Some(path) = &report.server_config {
        out.push_str(&format!(
            "\nnote: the servers ran with --server-config {path}, not the default settings"
        ));
    }
    out
}

/// W6's details under the table.
fn notice_lines(id: &str, nf: &NoticeFigures) -> String {
    let pct = |p: &Option<Percentiles>| match p {
        Some(p) => format!(
            "p50 {:.0} / p95 {:.0} / p99 {:.0} / max {:.0} ms",
            p.p50, p.p95, p.p99, p.max
        ),
        None => "-".to_owned(),
    };
    let mut out = format!(
        "{id} notices: {} delivered ({} per the server), {} requests ({} attempts per the \
         server), {} first attempts failed on purpose ({} %), {} duplicates, {} bad signatures\n\
         {id} phases from the first enqueue: all enqueued {}, all completed {:.2} s, all \
         notices acknowledged {:.2} s\n\
         {id} job completion -> notice acknowledged: {}\n\
         {id} enqueue -> notice acknowledged: {}",
        thousands(nf.delivered as f64),
        thousands(nf.store_delivered as f64),
        thousands(nf.requests as f64),
        thousands(nf.store_attempts as f64),
        thousands(nf.first_attempt_failures as f64),
        nf.receiver_fail_percent,
        nf.duplicates,
        nf.bad_signatures,
        nf.enqueued_s
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "-".to_owned()),
        nf.drained_s,
        nf.notified_s,
        pct(&nf.completion_to_ack_ms),
        pct(&nf.enqueue_to_ack_ms),
    );
    match (&nf.retry_schedule_ms, nf.default_webhook_settings) {
        (Some(schedule), Some(default)) => out.push_str(&format!(
            "\n{id} server's notice retry delays: {schedule:?} ms ± 20 %{}",
            if default {
                " (the defaults)"
            } else {
                ", webhook settings NOT the defaults: not comparable"
            }
        )),
        _ => out.push_str(&format!(
            "\n{id} server's notice retry delays: unknown (external server)"
        )),
    }
    out
}

fn short_label(id: &str) -> &'static str {
    match id {
        "W1" => "single enqueue",
        "W2" => "batch enqueue ×100",
        "W3a" => "drain, lease+complete per job",
        "W3b" => "drain, batched lease+acks",
        "W3c" => "drain, vow-client Worker",
        "W4" => "latency @200/s",
        "W6" => "completion notices",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]), None);
        assert_eq!(Percentiles::of(&[7.0]).unwrap().p99, 7.0);
    }

    #[test]
    fn bars_follow_the_issue() {
        let mut r = WorkloadResult::new("W4", "", 10);
        r.latency_ms = Percentiles::of(&[1.0, 2.0, 5.0]);
        r.judge("sqlite");
        assert_eq!(r.bar, Some(Bar::MaxP99Ms(4.0)));
        assert_eq!(r.meets_bar, Some(false));
        assert_eq!(Bar::of("W3a", "postgres"), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
