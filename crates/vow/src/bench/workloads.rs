//! The workloads of `BENCH.md`, each driven through the real HTTP API with
//! [`vow_client`]: W1 single enqueue, W2 batch enqueue, W3 drain (one lease + one
//! complete per job, and batched lease + `POST /v1/acks`), W4 latency of an idle worker,
//! W6 completion notices to a receiver in the bench (see [`super::receiver`]).
//!
//! A workload measures only its timed part (a [`Meter`] brackets it for CPU figures);
//! set-up such as W3's pre-enqueue is outside. Counting the store is the caller's job
//! ([`super::verify`]); here a workload checks what its client saw: every job handed out
//! once, every ack accepted, and progress that does not stall (a lost job would make a
//! drain wait forever, so no progress for [`STALL`] fails the run instead).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vow_client::{Client, Outcome, Worker};
use vow_core::api::{
    AckComplete, AckRequest, BatchEnqueueRequest, CompleteRequest, DeliveryState, EnqueueRequest,
    JobView, LeaseRequest, LeasedJob,
};
use vow_core::{JobId, QueueName};

use super::measure::{self, CpuWindow, Pid};
use super::receiver::{Receiver, FAIL_PERCENT};
use super::report::{NoticeFigures, Percentiles};

/// No job finished for this long: the run is stuck (lost jobs), not slow.
pub const STALL: Duration = Duration::from_secs(30);
/// W2's batch size (BENCH.md).
pub const W2_BATCH: u64 = 100;
/// Batch size of W3's untimed pre-enqueue (the API's maximum).
const PRELOAD_BATCH: u64 = 1000;
/// Worker concurrency of W3 and W4 (BENCH.md).
pub const CONCURRENCY: u32 = 16;
/// Most completions in one `POST /v1/acks` (the API's batch limit).
const ACK_BATCH: usize = 1000;
/// W4's producer rate (BENCH.md): one enqueue every 5 ms.
const W4_INTERVAL: Duration = Duration::from_millis(5);
/// Long-poll wait of the leases of W3, W4 and W6.
const LEASE_WAIT_MS: u64 = 5_000;
/// W6: no notice acknowledged for this long fails the run. Longer than [`STALL`]: the
/// server's circuit breaker may rest an endpoint for 30 s, then 60 s.
pub const NOTICE_STALL: Duration = Duration::from_secs(90);
/// W6: how long a delivery may stay `pending` after its receiver acknowledged it (the
/// server records the outcome after the answer).
const RECORD_GRACE: Duration = Duration::from_secs(10);

/// The `pad` of every payload: 58 × `x`, so a payload is about 100 bytes.
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Wall-clock milliseconds since the Unix epoch, with a fraction.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// BENCH.md's payload: `{"i": n, "t": <epoch ms float>, "pad": "x"*58}`, `t` taken now.
pub fn payload(i: u64) -> Value {
    json!({"i": i, "t": now_ms(), "pad": PAD})
}

/// CPU of the server and of the bench over a workload's timed part.
#[derive(Debug, Default)]
pub struct Meter {
    server_pid: Option<u32>,
    windows: Option<(Option<CpuWindow>, Option<CpuWindow>)>,
    /// Server CPU % of one core over the timed part, when the server's pid is known.
    pub server_cpu: Option<f64>,
    /// The bench's own CPU % of one core over the timed part.
    pub client_cpu: Option<f64>,
}

impl Meter {
    /// A meter for a server with `server_pid`, if known.
    pub fn new(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            ..Self::default()
        }
    }

    /// The timed part begins.
    fn start(&mut self) {
        self.windows = Some((
            CpuWindow::start(self.server_pid.map(Pid::Other)),
            CpuWindow::start(Some(Pid::Current)),
        ));
    }

    /// The timed part ends.
    fn stop(&mut self) {
        if let Some((server, client)) = self.windows.take() {
            self.server_cpu = server.and_then(|w| w.percent());
            self.client_cpu = client.and_then(|w| w.percent());
        }
    }
}

/// What a workload measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Jobs the timed part handled (enqueued or completed).
    pub jobs: u64,
    /// W4: handler start − enqueue start, per job, in ms.
    pub latency_ms: Vec<f64>,
    /// Duration of each enqueue request (W1, W2 per batch, W4), in ms.
    pub request_ms: Vec<f64>,
    /// Jobs handed to a handler more than once.
    pub duplicates: u64,
    /// Lease requests made in the timed part (W3, W4).
    pub leases: u64,
    /// Ack requests (W3 batched, W6) or completes (W3 per job, W4).
    pub acks: u64,
    /// Duration of each lease request that returned jobs (W3, W6), in ms.
    pub lease_ms: Vec<f64>,
    /// Duration of each ack request or complete (W3, W6), in ms.
    pub ack_ms: Vec<f64>,
    /// W6: what the receiver and the server saw of the notices.
    pub notices: Option<NoticeFigures>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// W1: `n` single enqueues, one at a time.
pub async fn w1_single_enqueue(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let mut request_ms = Vec::with_capacity(n as usize);
    meter.start();
    let t0 = Instant::now();
    for i in 0..n {
        let started = Instant::now();
        client
            .enqueue(queue, &EnqueueRequest::new(payload(i)))
            .await
            .with_context(|| format!("enqueue of job {i}"))?;
        request_ms.push(ms(started.elapsed()));
        pb.inc(1);
    }
    let elapsed = t0.elapsed();
    meter.stop();
    Ok(Measured {
        elapsed,
        jobs: n,
        request_ms,
        ..Measured::default()
    })
}

/// Enqueues jobs `from..to` in one batch request, each with `callback_url` if given;
/// returns the jobs as enqueued.
async fn enqueue_batch(
    client: &Client,
    queue: &str,
    from: u64,
    to: u64,
    callback_url: Option<&str>,
) -> anyhow::Result<Vec<JobView>> {
    let batch = BatchEnqueueRequest {
        jobs: (from..to)
            .map(|i| EnqueueRequest {
                callback_url: callback_url.map(str::to_owned),
                ..EnqueueRequest::new(payload(i))
            })
            .collect(),
    };
    let items = client
        .enqueue_batch(queue, &batch)
        .await
        .with_context(|| format!("batch enqueue of jobs {from}..{to}"))?;
    anyhow::ensure!(
        items.len() as u64 == to - from,
        "a batch of {} jobs came back with {} items",
        to - from,
        items.len()
    );
    Ok(items)
}

/// W2: `n` jobs in sequential batches of [`W2_BATCH`].
pub async fn w2_batch_enqueue(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let mut request_ms = Vec::with_capacity((n / W2_BATCH + 1) as usize);
    meter.start();
    let t0 = Instant::now();
    let mut from = 0;
    while from < n {
        let to = (from + W2_BATCH).min(n);
        let started = Instant::now();
        enqueue_batch(client, queue, from, to, None).await?;
        request_ms.push(ms(started.elapsed()));
        pb.inc(to - from);
        from = to;
    }
    let elapsed = t0.elapsed();
    meter.stop();
    Ok(Measured {
        elapsed,
        jobs: n,
        request_ms,
        ..Measured::default()
    })
}

/// W3's untimed set-up: `n` jobs in batches of 1000.
pub async fn preload(client: &Client, queue: &str, n: u64, pb: &ProgressBar) -> anyhow::Result<()> {
    let mut from = 0;
    while from < n {
        let to = (from + PRELOAD_BATCH).min(n);
        enqueue_batch(client, queue, from, to, None).await?;
        pb.inc(to - from);
        from = to;
    }
    Ok(())
}

/// Shared state of the tasks of a drain or latency run: how many jobs are done, which
/// were seen, and the signal that all are.
struct Progress {
    n: u64,
    done: AtomicU64,
    duplicates: AtomicU64,
    leases: AtomicU64,
    acks: AtomicU64,
    lease_ms: Mutex<Vec<f64>>,
    ack_ms: Mutex<Vec<f64>>,
    seen: Mutex<HashSet<JobId>>,
    finished: CancellationToken,
    pb: ProgressBar,
}

impl Progress {
    fn new(n: u64, pb: &ProgressBar) -> Arc<Self> {
        Arc::new(Self {
            n,
            done: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            leases: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            lease_ms: Mutex::new(Vec::new()),
            ack_ms: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::with_capacity(n as usize)),
            finished: CancellationToken::new(),
            pb: pb.clone(),
        })
    }

    /// A handler got job `id`; a second time counts as a duplicate.
    fn handled(&self, id: &JobId) {
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if !fresh {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A lease request begun at `started` came back with `jobs` jobs (an empty one, at
    /// the end of the drain, is counted but not timed: it waited for jobs).
    fn leased(&self, started: Instant, jobs: usize) {
        self.leases.fetch_add(1, Ordering::Relaxed);
        if jobs > 0 {
            lock(&self.lease_ms).push(ms(started.elapsed()));
        }
    }

    /// An ack request (or a complete) begun at `started` came back.
    fn acked(&self, started: Instant) {
        self.acks.fetch_add(1, Ordering::Relaxed);
        lock(&self.ack_ms).push(ms(started.elapsed()));
    }

    /// `k` more jobs are done; the last one signals `finished`.
    fn completed(&self, k: u64) {
        let done = self.done.fetch_add(k, Ordering::AcqRel) + k;
        self.pb.inc(k);
        if done >= self.n {
            self.finished.cancel();
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// The figures of a drain that took `elapsed`: jobs, duplicates, leases and acks.
    fn measured(&self, elapsed: Duration) -> Measured {
        Measured {
            elapsed,
            jobs: self.done(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            leases: self.leases.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            lease_ms: std::mem::take(&mut *lock(&self.lease_ms)),
            ack_ms: std::mem::take(&mut *lock(&self.ack_ms)),
            ..Measured::default()
        }
    }

    /// Waits until all jobs are done, a task fails, or nothing moves for [`STALL`]; then
    /// stops and joins all tasks.
    async fn wait(&self, tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
        let outcome = self.wait_inner(tasks).await;
        self.finished.cancel();
        while let Some(joined) = tasks.join_next().await {
            joined.context("a bench task panicked")??;
        }
        outcome
    }

    async fn wait_inner(&self, tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
        let mut last = (self.done(), Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = self.finished.cancelled() => return Ok(()),
                joined = tasks.join_next() => match joined {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("a bench task panicked")),
                    None if self.done() >= self.n => return Ok(()),
                    None => anyhow::bail!(
                        "all bench tasks stopped with {} of {} jobs done",
                        self.done(),
                        self.n
                    ),
                },
                _ = tick.tick() => {
                    let done = self.done();
                    if done != last.0 {
                        last = (done, Instant::now());
                    } else if last.1.elapsed() > STALL {
                        anyhow::bail!(
                            "stalled: {done} of {} jobs done and none for {} s (lost jobs?)",
                            self.n,
                            STALL.as_secs()
                        );
                    }
                }
            }
        }
    }
}

fn lease_request(worker_id: &str, max_jobs: u32) -> LeaseRequest {
    LeaseRequest {
        worker_id: worker_id.to_owned(),
        max_jobs: Some(max_jobs),
        wait_ms: Some(LEASE_WAIT_MS),
        lease_ms: None,
    }
}

/// W3 (a): [`CONCURRENCY`] slots, each leasing one job at a time (`max_jobs: 1`) and
/// completing it with its own `POST /v1/jobs/{id}/complete`.
pub async fn w3_drain_per_job(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let p = Progress::new(n, pb);
    let mut tasks = JoinSet::new();
    meter.start();
    let t0 = Instant::now();
    for slot in 0..CONCURRENCY {
        let (p, client, queue) = (p.clone(), client.clone(), queue.to_owned());
        tasks.spawn(async move {
            let req = lease_request(&format!("vow-bench/w3a-{slot}"), 1);
            loop {
                let started = Instant::now();
                let resp = tokio::select! {
                    biased;
                    _ = p.finished.cancelled() => return Ok(()),
                    r = client.lease(&queue, &req) => r.context("lease")?,
                };
                p.leased(started, resp.jobs.len());
                for job in resp.jobs {
                    p.handled(&job.id);
                    let done = CompleteRequest {
                        lease_id: job.lease_id,
                        result: None,
                    };
                    let started = Instant::now();
                    client
                        .complete(&job.id, &done)
                        .await
                        .with_context(|| format!("complete of {}", job.id))?;
                    p.acked(started);
                    p.completed(1);
                }
            }
        });
    }
    p.wait(&mut tasks).await?;
    let elapsed = t0.elapsed();
    meter.stop();
    Ok(p.measured(elapsed))
}

/// W3 (b): one lease loop asking for as many jobs as it has free slots (of
/// [`CONCURRENCY`]; the no-op handlers free them at once, so every lease asks for 16),
/// and one acker sending the completions with `POST /v1/acks`: whatever has piled up
/// while the previous ack was in flight, up to 1000 per request.
pub async fn w3_drain_batched(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let p = Progress::new(n, pb);
    let mut tasks = JoinSet::new();
    meter.start();
    let t0 = Instant::now();
    spawn_batched_drain(&mut tasks, &p, client, queue, "vow-bench/w3b");
    p.wait(&mut tasks).await?;
    let elapsed = t0.elapsed();
    meter.stop();
    Ok(p.measured(elapsed))
}

/// The batched drain of W3b (also W6's worker): a lease loop and an acker, spawned into
/// `tasks`, counting into `p`; they stop once `p` is finished.
fn spawn_batched_drain(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    p: &Arc<Progress>,
    client: &Client,
    queue: &str,
    worker_id: &str,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AckComplete>();
    {
        let (p, client, queue) = (p.clone(), client.clone(), queue.to_owned());
        let req = lease_request(worker_id, CONCURRENCY);
        tasks.spawn(async move {
            loop {
                let started = Instant::now();
                let resp = tokio::select! {
                    biased;
                    _ = p.finished.cancelled() => return Ok(()),
                    r = client.lease(&queue, &req) => r.context("lease")?,
                };
                p.leased(started, resp.jobs.len());
                anyhow::ensure!(
                    resp.jobs.len() <= CONCURRENCY as usize,
                    "asked for {CONCURRENCY} jobs, got {}",
                    resp.jobs.len()
                );
                for job in resp.jobs {
                    p.handled(&job.id);
                    // The handler is a no-op; its slot is free again at once.
                    let _ = tx.send(AckComplete {
                        id: job.id,
                        lease_id: job.lease_id,
                        result: None,
                    });
                }
            }
        });
    }
    {
        let (p, client) = (p.clone(), client.clone());
        tasks.spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut complete = vec![first];
                while complete.len() < ACK_BATCH {
                    match rx.try_recv() {
                        Ok(item) => complete.push(item),
                        Err(_) => break,
                    }
                }
                let sent = complete.len();
                let started = Instant::now();
                let resp = client
                    .ack(&AckRequest {
                        complete,
                        fail: Vec::new(),
                    })
                    .await
                    .context("ack")?;
                p.acked(started);
                anyhow::ensure!(
                    resp.complete.len() == sent,
                    "an ack of {sent} completions came back with {} results",
                    resp.complete.len()
                );
                if let Some(bad) = resp.complete.iter().find(|r| !r.ok) {
                    anyhow::bail!(
                        "the server refused the completion of {}: {}",
                        bad.id,
                        bad.code.as_deref().unwrap_or("no code")
                    );
                }
                p.completed(sent as u64);
            }
            Ok(())
        });
    }
}

/// The `vow-client` [`Worker`] of W3c and W4 on `queue`: [`CONCURRENCY`] slots, long-poll
/// leases; each handler calls `on_job` first, then counts the job into `p` and completes
/// it.
fn bench_worker(
    client: &Client,
    queue: &str,
    worker_id: &str,
    p: &Arc<Progress>,
    on_job: impl Fn(&LeasedJob) + Send + Sync + 'static,
) -> anyhow::Result<Worker> {
    let queue_name: QueueName = queue
        .parse()
        .map_err(|e| anyhow::anyhow!("bad queue name {queue}: {e}"))?;
    let (p, on_job) = (p.clone(), Arc::new(on_job));
    Ok(Worker::new(client.clone())
        .worker_id(worker_id)
        .poll_wait(Duration::from_millis(LEASE_WAIT_MS))
        .shutdown_grace(Duration::from_secs(10))
        .handle(queue_name, CONCURRENCY as usize, move |ctx| {
            let (p, on_job) = (p.clone(), on_job.clone());
            async move {
                let job = ctx.job();
                on_job(job);
                p.handled(&job.id);
                p.completed(1);
                Outcome::Complete(None)
            }
        }))
}

/// Waits as [`Progress::wait`] does, then for the `worker` of workload `id` to stop (it
/// does once `p` is finished and its outcomes are recorded); stops `meter` and returns
/// the time since `t0`.
async fn until_worker_stopped(
    p: &Progress,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    worker: tokio::task::JoinHandle<Result<(), vow_client::Error>>,
    id: &str,
    t0: Instant,
    meter: &mut Meter,
) -> anyhow::Result<Duration> {
    let waited = p.wait(tasks).await;
    let stopped = worker
        .await
        .with_context(|| format!("the {id} worker panicked"))?;
    let elapsed = t0.elapsed();
    meter.stop();
    waited?;
    stopped.with_context(|| format!("the {id} worker failed"))?;
    Ok(elapsed)
}

/// W3 (c): the `vow-client` [`Worker`] (concurrency [`CONCURRENCY`], no-op handlers)
/// drains the queue: what a worker written with the library gets. Timed from its start
/// until it has stopped, which it does once the last handler has run and every outcome
/// is recorded.
pub async fn w3_drain_worker(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let p = Progress::new(n, pb);
    let worker = bench_worker(client, queue, "vow-bench/w3c", &p, |_| {})?;
    meter.start();
    let t0 = Instant::now();
    let worker = tokio::spawn(worker.run(p.finished.clone()));
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let finished = p.finished.clone();
    // Stays in the set until the end: an empty set means something stopped early.
    tasks.spawn(async move {
        finished.cancelled().await;
        Ok(())
    });
    let elapsed = until_worker_stopped(&p, &mut tasks, worker, "W3c", t0, meter).await?;
    Ok(p.measured(elapsed))
}

/// W4: the `vow-client` [`Worker`] (concurrency [`CONCURRENCY`], long-poll leases) idles
/// on the queue; a producer enqueues `n` jobs at 200 jobs/s, open loop (each enqueue its
/// own task, started on schedule whether or not the previous one has answered).
/// Latency = handler start − the payload's `t` (taken when the enqueue started).
pub async fn w4_latency(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let p = Progress::new(n, pb);
    let latency = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let worker = {
        let latency = latency.clone();
        bench_worker(client, queue, "vow-bench/w4", &p, move |job| {
            let start = now_ms();
            if let Some(t) = job.payload.get("t").and_then(Value::as_f64) {
                lock(&latency).push(start - t);
            }
        })?
    };
    let worker = tokio::spawn(worker.run(p.finished.clone()));
    // Let the worker reach its long-poll: the producer should meet an idle worker.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let request_ms = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    meter.start();
    let t0 = tokio::time::Instant::now();
    let mut producers = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + W4_INTERVAL * i as u32).await;
        let (client, queue, request_ms) = (client.clone(), queue.to_owned(), request_ms.clone());
        producers.spawn(async move {
            let started = Instant::now();
            client
                .enqueue(&queue, &EnqueueRequest::new(payload(i)))
                .await
                .with_context(|| format!("enqueue of job {i}"))?;
            request_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ms(started.elapsed()));
            anyhow::Ok(())
        });
        // Surface producer errors early instead of after all n are sent.
        while let Some(joined) = producers.try_join_next() {
            joined.context("an enqueue task panicked")??;
        }
    }
    let finished = p.finished.clone();
    tasks.spawn(async move {
        while let Some(joined) = producers.join_next().await {
            joined.context("an enqueue task panicked")??;
        }
        // Stay in the set until the end: an empty set means something stopped early.
        finished.cancelled().await;
        Ok(())
    });
    let elapsed = until_worker_stopped(&p, &mut tasks, worker, "W4", t0.into_std(), meter).await?;
    let latency_ms = std::mem::take(&mut *latency.lock().unwrap_or_else(|e| e.into_inner()));
    anyhow::ensure!(
        latency_ms.len() as u64 == p.done(),
        "{} of {} jobs had no readable `t` in their payload",
        p.done() - latency_ms.len() as u64,
        p.done()
    );
    let request_ms = std::mem::take(&mut *request_ms.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Measured {
        elapsed,
        jobs: p.done(),
        latency_ms,
        request_ms,
        duplicates: p.duplicates.load(Ordering::Relaxed),
        ..Measured::default()
    })
}

/// W6: `n` jobs with `callback_url` pointing at the bench's own [`Receiver`], enqueued in
/// batches of [`W2_BATCH`] while the batched drain of W3b works them off; timed from the
/// first enqueue until the receiver has acknowledged (204) a notice for every job. The
/// receiver fails ~30 % of first attempts, so those notices wait for the server's first
/// retry (5 s ± 20 % by default): the figure is bounded by that, not by throughput.
///
/// Afterwards (untimed) every job's delivery is read back from the server
/// (`GET /v1/jobs/{id}/deliveries`): it must be `delivered`, and its attempts are summed
/// to compare with the requests the receiver saw.
///
/// Rotates the tenant's callback secret (`POST /v1/callback-secret`) to learn it.
pub async fn w6_notices(
    client: &Client,
    queue: &str,
    n: u64,
    pb: &ProgressBar,
    meter: &mut Meter,
) -> anyhow::Result<Measured> {
    let secret = client
        .rotate_callback_secret()
        .await
        .context("getting the tenant's callback secret (POST /v1/callback-secret)")?
        .secret;
    let receiver = Receiver::start(secret).await?;
    let p = Progress::new(n, pb);
    let ids: Arc<Mutex<Vec<JobId>>> = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let enqueued = Arc::new(Mutex::new(None::<Duration>));
    let mut tasks = JoinSet::new();
    meter.start();
    let t0 = Instant::now();
    {
        let (client, queue, url) = (client.clone(), queue.to_owned(), receiver.url.clone());
        let (ids, enqueued) = (ids.clone(), enqueued.clone());
        tasks.spawn(async move {
            let mut from = 0;
            while from < n {
                let to = (from + W2_BATCH).min(n);
                let jobs = enqueue_batch(&client, &queue, from, to, Some(&url)).await?;
                lock(&ids).extend(jobs.into_iter().map(|j| j.id));
                from = to;
            }
            *lock(&enqueued) = Some(t0.elapsed());
            Ok(())
        });
    }
    spawn_batched_drain(&mut tasks, &p, client, queue, "vow-bench/w6");
    p.wait(&mut tasks).await?;
    let drained = t0.elapsed();
    let ids = std::mem::take(&mut *lock(&ids));
    pb.reset();
    pb.set_message("notices");
    wait_for_notices(client, &receiver, &ids, n, pb).await?;
    let elapsed = t0.elapsed();
    meter.stop();

    pb.reset();
    pb.set_message("check");
    let store = store_deliveries(client, &ids, &receiver.url, pb).await?;
    // Taken after the check, so duplicates that came meanwhile are counted too.
    let seen = receiver.snapshot();
    let mut problems = store.problems;
    let missing = receiver.missing(&ids);
    if ids.len() as u64 != n {
        problems.push(format!("{} of {n} jobs were enqueued", ids.len()));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} jobs have no acknowledged notice, e.g. {}",
            missing.len(),
            missing[0]
        ));
    }
    if seen.bad_signatures > 0 || seen.unexpected > 0 {
        problems.push(format!(
            "{} notices failed signature verification and {} were not readable job.completed notices: {}",
            seen.bad_signatures,
            seen.unexpected,
            seen.problems.join("; ")
        ));
    }
    if store.delivered != ids.len() as u64 {
        problems.push(format!(
            "the server reports {} of {} notices delivered",
            store.delivered,
            ids.len()
        ));
    }
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let enqueued_s = lock(&enqueued).map(secs);
    Ok(Measured {
        notices: Some(NoticeFigures {
            delivered: seen.delivered,
            requests: seen.requests,
            first_attempt_failures: seen.first_attempt_failures,
            duplicates: seen.duplicates,
            bad_signatures: seen.bad_signatures,
            unexpected: seen.unexpected,
            store_delivered: store.delivered,
            store_attempts: store.attempts,
            enqueued_s,
            drained_s: secs(drained),
            notified_s: secs(elapsed),
            completion_to_ack_ms: Percentiles::of(&seen.completion_to_ack_ms),
            enqueue_to_ack_ms: Percentiles::of(&seen.enqueue_to_ack_ms),
            receiver_fail_percent: FAIL_PERCENT,
            retry_schedule_ms: None,
            default_webhook_settings: None,
            problems,
        }),
        ..p.measured(elapsed)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the receiver has acknowledged a notice for all `n` jobs. Fails at once on
/// a bad signature; when nothing arrives for a second, looks at a job whose notice is
/// missing and fails clearly if it is dead (e.g. refused by the server's SSRF guard);
/// fails when no notice is acknowledged for [`NOTICE_STALL`].
async fn wait_for_notices(
    client: &Client,
    receiver: &Receiver,
    ids: &[JobId],
    n: u64,
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    let mut acked = receiver.acked();
    let mut last = (*acked.borrow(), Instant::now());
    let mut looked = Instant::now();
    let mut held = None;
    loop {
        let now = *acked.borrow_and_update();
        pb.set_position(now);
        if now >= n {
            return Ok(());
        }
        if let (bad @ 1.., first) = receiver.bad_signatures() {
            anyhow::bail!(
                "{bad} notices failed signature verification with the tenant's callback secret: {}",
                first.unwrap_or_default()
            );
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        let quiet = last.1.elapsed();
        if quiet > NOTICE_STALL {
            let seen = receiver.snapshot();
            anyhow::bail!(
                "stalled: {now} of {n} notices acknowledged and none for {} s (the receiver got \
                 {} requests, {} of them first attempts it failed on purpose); {}",
                NOTICE_STALL.as_secs(),
                seen.requests,
                seen.first_attempt_failures,
                held.as_deref()
                    .unwrap_or("see GET /v1/jobs/{id}/deliveries")
            );
        }
        if quiet >= Duration::from_secs(1) && looked.elapsed() >= Duration::from_secs(1) {
            looked = Instant::now();
            if let Some(job) = receiver.missing(ids).into_iter().next() {
                held = look_at_missing_notice(client, &job, &receiver.url).await?;
            }
        }
        tokio::select! {
            changed = acked.changed() => changed.context("the notice receiver stopped")?,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Fails when the notice of `job` to `url` is dead or was never made; says so when it is
/// overdue (the server holds it back).
async fn look_at_missing_notice(
    client: &Client,
    job: &JobId,
    url: &str,
) -> anyhow::Result<Option<String>> {
    let deliveries = client
        .job_deliveries(job)
        .await
        .with_context(|| format!("reading the deliveries of {job}"))?;
    let Some(d) = deliveries.iter().find(|d| d.url == url) else {
        anyhow::bail!("job {job} has no notice to the bench's receiver ({url}) in the store");
    };
    if d.state == DeliveryState::Dead {
        let error = d.last_error.as_deref().unwrap_or("no error recorded");
        if error.contains("SSRF guard") {
            anyhow::bail!(
                "the server refuses to send notices to the bench's receiver on 127.0.0.1 \
                 ({error}); start it with --webhook-allow-cidrs 127.0.0.1/32 (or \
                 VOW_WEBHOOK_ALLOW_CIDRS=127.0.0.1/32) to run W6 against it"
            );
        }
        anyhow::bail!("the notice {} of job {job} is dead: {error}", d.id);
    }
    let overdue_s = d
        .next_attempt_at
        .map(|t| (now_ms() - t.millis() as f64) / 1000.0)
        .filter(|s| *s > 2.0);
    Ok(overdue_s.map(|s| {
        format!(
            "e.g. the notice {} of job {job} is pending after {} attempts and {s:.0} s overdue: \
             the server holds it back (its circuit breaker rests an endpoint after 5 \
             consecutive failed attempts for 30 s, doubling after each failed probe; \
             [webhooks.breaker] in its settings)",
            d.id, d.attempts
        )
    }))
}

/// What the server says about the notices.
#[derive(Debug, Default)]
struct StoreDeliveries {
    delivered: u64,
    attempts: u64,
    problems: Vec<String>,
}

/// Reads every job's delivery to `url` back from the server, 8 requests at a time. A
/// delivery still `pending` (its outcome being recorded) is read again for up to
/// [`RECORD_GRACE`].
async fn store_deliveries(
    client: &Client,
    ids: &[JobId],
    url: &str,
    pb: &ProgressBar,
) -> anyhow::Result<StoreDeliveries> {
    const READERS: usize = 8;
    pb.set_length(ids.len() as u64);
    let chunk = ids.len().div_ceil(READERS).max(1);
    let mut readers: JoinSet<anyhow::Result<StoreDeliveries>> = JoinSet::new();
    for part in ids.chunks(chunk) {
        let (client, part, url, pb) = (client.clone(), part.to_vec(), url.to_owned(), pb.clone());
        readers.spawn(async move {
            let mut out = StoreDeliveries::default();
            for job in part {
                let deadline = Instant::now() + RECORD_GRACE;
                loop {
                    let all = client
                        .job_deliveries(&job)
                        .await
                        .with_context(|| format!("reading the deliveries of {job}"))?;
                    let mine: Vec<_> = all.iter().filter(|d| d.url == url).collect();
                    match mine.as_slice() {
                        [d] if d.state == DeliveryState::Delivered => {
                            out.delivered += 1;
                            out.attempts += u64::from(d.attempts);
                        }
                        [d] if d.state == DeliveryState::Pending && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        other => {
                            out.attempts += other.iter().map(|d| u64::from(d.attempts)).sum::<u64>();
                            if out.problems.len() < 3 {
                                let states: Vec<_> =
                                    other.iter().map(|d| d.state.as_str()).collect();
                                out.problems.push(format!(
                                    "job {job}: the server shows {} notices to the receiver ({}), expected one delivered",
                                    other.len(),
                                    states.join(", ")
                                ));
                            }
                        }
                    }
                    break;
                }
                pb.inc(1);
            }
            Ok(out)
        });
    }
    let mut total = StoreDeliveries::default();
    while let Some(joined) = readers.join_next().await {
        let part = joined.context("a delivery reader panicked")??;
        total.delivered += part.delivered;
        total.attempts += part.attempts;
        total.problems.extend(part.problems);
    }
    total.problems.truncate(3);
    Ok(total)
}

/// Peak RSS of the server so far, when its pid is known.
pub fn server_peak_rss(server_pid: Option<u32>) -> Option<u64> {
    measure::peak_rss_bytes(Pid::Other(server_pid?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_100_bytes_as_bench_md_says() {
        assert_eq!(PAD.len(), 58);
        let p = payload(12_345);
        let len = serde_json::to_string(&p).unwrap().len();
        assert!((90..=110).contains(&len), "{len} bytes: {p}");
        assert!(p["t"].as_f64().unwrap() > 1.7e12);
    }
}
