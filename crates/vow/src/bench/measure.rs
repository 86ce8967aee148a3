//! What the bench measures besides its own timings: CPU time and peak RSS of a process
//! from `/proc` (the server's and the bench's own), and the machine it ran on.
//!
//! Everything here is best effort: on a system without `/proc` the figures are `None`
//! and the report says "unknown" rather than guessing.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Which process to read: the bench itself or another one (the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// `/proc/self`.
    Current,
    /// `/proc/<pid>`.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Current => "/proc/self".to_owned(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat` (`getconf CLK_TCK`,
/// 100 on every Linux this will meet).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds a process has used so far (all its threads).
pub fn cpu_seconds(pid: Pid) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir())).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3) is fields[0], utime (14) fields[11], stime (15) fields[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size of a process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir())).ok()?;
    parse_kib_field(&status, "VmHWM:").map(|kib| kib * 1024)
}

fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
}

/// A process's CPU counter at the start of a timed window.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pid: Pid,
    cpu_start: Option<f64>,
    wall_start: Instant,
}

impl CpuWindow {
    /// Starts a window now; `pid` of `None` means the process is not known.
    pub fn start(pid: Option<Pid>) -> Option<Self> {
        let pid = pid?;
        Some(Self {
            pid,
            cpu_start: cpu_seconds(pid),
            wall_start: Instant::now(),
        })
    }

    /// CPU used since the start as a percentage of one core's wall time (200 % is both
    /// cores of a 2-core machine busy).
    pub fn percent(&self) -> Option<f64> {
        let wall = self.wall_start.elapsed().as_secs_f64();
        let used = cpu_seconds(self.pid)? - self.cpu_start?;
        (wall > 0.0).then(|| used / wall * 100.0)
    }
}

/// The machine a run happened on, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use (`nproc`).
    pub cores: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Physical memory, in MiB.
    pub memory_mib: Option<u64>,
    /// `uname -r` (from `/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// `/proc/loadavg` when the run started: a busy machine makes slower figures.
    pub load_at_start: Option<String>,
    /// `/proc/loadavg` when the run ended.
    pub load_at_end: Option<String>,
    /// `git rev-parse HEAD` of the source tree the binary was built from, if it is
    /// still there.
    pub vow_commit: Option<String>,
    /// Whether that tree had uncommitted changes (`git status --porcelain`).
    pub vow_tree_dirty: Option<bool>,
    /// When the running `vow` executable was last written (RFC 3339): a binary older
    /// than `vow_commit` was built from an earlier tree.
    pub binary_modified_at: Option<String>,
    /// `vow` version.
    pub vow_version: &'static str,
    /// `release` or `debug`: figures from a debug build are not worth comparing.
    pub build: &'static str,
    /// The disk under the temp dir (where the spawned servers keep their data) when
    /// the run started: what one durable write costs bounds every durable figure.
    pub disk_sync_at_start: Option<DiskSync>,
    /// The same at the end: on a shared host it drifts, sometimes by half.
    pub disk_sync_at_end: Option<DiskSync>,
}

/// How long a 4 KiB append followed by `fdatasync` takes, over [`DiskSync::SAMPLES`]
/// in a row: the cost of one durable commit. A client that waits for each commit
/// cannot go faster than one per `p50_us` (W1's ceiling).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskSync {
    /// Median, in microseconds.
    pub p50_us: f64,
    /// 90th percentile, in microseconds.
    pub p90_us: f64,
}

impl DiskSync {
    /// Appends measured.
    const SAMPLES: usize = 200;

    /// Measures in `dir` (with a file of its own, removed after); `None` if the
    /// directory cannot be written.
    pub fn probe(dir: &Path) -> Option<Self> {
        use std::io::Write;
        let path = dir.join(format!("vow-bench-sync-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .ok()?;
        let page = [0x5a_u8; 4096];
        let mut us = Vec::with_capacity(Self::SAMPLES);
        for _ in 0..Self::SAMPLES {
            let started = std::time::Instant::now();
            if file
                .write_all(&page)
                .and_then(|()| file.sync_data())
                .is_err()
            {
                break;
            }
            us.push(started.elapsed().as_secs_f64() * 1e6);
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        if us.len() < Self::SAMPLES {
            return None;
        }
        us.sort_by(f64::total_cmp);
        Some(Self {
            p50_us: us[us.len() / 2],
            p90_us: us[us.len() * 9 / 10],
        })
    }
}

impl Machine {
    /// Looks at the machine now.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| parse_kib_field(&m, "MemTotal:"))
            .map(|kib| kib / 1024);
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let vow_commit = git(src, &["rev-parse", "HEAD"]);
        let vow_tree_dirty = vow_commit
            .as_ref()
            .and_then(|_| git(src, &["status", "--porcelain"]))
            .map(|s| !s.is_empty())
            .or(vow_commit.as_ref().map(|_| false));
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            memory_mib,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_at_start: load_average(),
            load_at_end: None,
            vow_commit,
            vow_tree_dirty,
            binary_modified_at: binary_modified_at(),
            vow_version: env!("CARGO_PKG_VERSION"),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            disk_sync_at_start: DiskSync::probe(&std::env::temp_dir()),
            disk_sync_at_end: None,
        }
    }
}

fn binary_modified_at() -> Option<String> {
    let modified = std::fs::metadata(std::env::current_exe().ok()?)
        .ok()?
        .modified()
        .ok()?;
    let ms = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    Some(vow_core::Timestamp(ms as i64).to_rfc3339())
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<String> {
    let s = read_trimmed("/proc/loadavg")?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Runs `git` in `dir`; its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (vow (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_figures_are_readable() {
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(cpu_seconds(Pid::Current).is_some());
        assert!(peak_rss_bytes(Pid::Current).unwrap() > 0);
        let text = "Name:\tvow\nVmHWM:\t   12345 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_kib_field(text, "VmHWM:"), Some(12345));
    }

    #[test]
    fn a_durable_append_is_timed_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DiskSync::probe(dir.path()).expect("a writable temp dir");
        assert!(sync.p50_us > 0.0 && sync.p90_us >= sync.p50_us, "{sync:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(DiskSync::probe(&dir.path().join("missing")).is_none());
    }
}
