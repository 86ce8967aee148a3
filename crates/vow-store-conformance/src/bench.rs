//! The store micro-benchmarks every backend runs (criterion): enqueue (decode +
//! validate + insert), lease selection and ack, on a store a backend's bench file
//! provides. One definition, so the stores' figures measure the same calls.
//!
//! Every timed write is one call waiting for its own commit: these are sequential
//! latencies, not group-commit throughput (that is what `vow bench` W3/W4 measure).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;
use vow_core::api::EnqueueRequest;
use vow_core::limits::Limits;
use vow_core::{Job, QueueName, TenantId, TenantName, Timestamp};
use vow_store::{AckItem, JobAckMany, JobInsertMany, JobLease, Store, TenantInsert};

/// BENCH.md's payload as a request body, about 100 bytes of payload.
pub fn request_body(i: u64) -> Vec<u8> {
    format!(
        r#"{{"payload":{{"i":{i},"t":1767225600123.456,"pad":"{}"}}}}"#,
        "x".repeat(58)
    )
    .into_bytes()
}

/// The wall clock as a store timestamp.
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// What the enqueue handler does before the store: decode and validate.
pub fn decode_validate(body: &[u8], limits: &Limits, at: Timestamp) -> vow_core::job::NewJob {
    let req: EnqueueRequest = serde_json::from_slice(body).expect("valid body");
    req.validate(limits, at, None, None).expect("valid job")
}

/// A fresh store with one tenant, and whatever keeps the store's resources alive.
pub struct Fixture {
    store: Arc<dyn Store>,
    tenant: TenantId,
    queue: QueueName,
    _guard: Box<dyn std::any::Any>,
}

impl Fixture {
    /// Wraps a fresh, empty store (and its guard: a temp dir, a database) and adds a
    /// tenant.
    pub fn new(rt: &Runtime, store: Arc<dyn Store>, guard: Box<dyn std::any::Any>) -> Self {
        let tenant = TenantId::generate();
        rt.block_on(store.tenant_insert(&TenantInsert {
            id: tenant.clone(),
            name: "bench".parse::<TenantName>().expect("name"),
            max_pending: None,
            now: now(),
        }))
        .expect("tenant");
        Self {
            store,
            tenant,
            queue: "bench".parse().expect("queue"),
            _guard: guard,
        }
    }

    async fn insert(&self, jobs: u64) {
        let limits = Limits::default();
        let mut left = jobs;
        while left > 0 {
            let k = left.min(1000);
            let at = now();
            let jobs = (0..k)
                .map(|i| decode_validate(&request_body(i), &limits, at))
                .collect();
            self.store
                .job_insert_many(JobInsertMany {
                    tenant_id: self.tenant.clone(),
                    queue: self.queue.clone(),
                    jobs,
                    now: at,
                })
                .await
                .expect("insert");
            left -= k;
        }
    }

    async fn lease(&self, max_jobs: u32) -> Vec<Job> {
        self.store
            .job_lease(&JobLease {
                tenant_id: self.tenant.clone(),
                queue: self.queue.clone(),
                worker_id: "bench".into(),
                max_jobs,
                lease_ms: None,
                now: now(),
            })
            .await
            .expect("lease")
    }

    async fn complete(&self, jobs: Vec<Job>) {
        let items = jobs
            .into_iter()
            .map(|j| AckItem::Complete {
                id: j.id,
                lease_id: j.lease_id.expect("leased"),
                result: None,
            })
            .collect();
        let results = self
            .store
            .job_ack_many(JobAckMany {
                tenant_id: self.tenant.clone(),
                items,
                now: now(),
            })
            .await
            .expect("ack");
        assert!(results.iter().all(|r| r.is_ok()), "every ack is accepted");
    }
}

/// A single-threaded runtime for the timed calls.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Criterion settings: fsync-bound calls are slow and noisy; fewer, longer samples keep
/// a run short.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// `enqueue/decode_validate`: no store at all.
pub fn decode_validate_only(c: &mut Criterion) {
    let limits = Limits::default();
    let body = request_body(12_345);
    let at = now();
    c.bench_function("enqueue/decode_validate", |b| {
        b.iter(|| decode_validate(std::hint::black_box(&body), &limits, at))
    });
}

/// The store benchmarks on the stores `make` returns, one fresh store per benchmark;
/// `place` names where they live (`disk`, `tmpfs`, `pg`...) in the benchmark ids.
pub fn store_paths(
    c: &mut Criterion,
    rt: &Runtime,
    place: &str,
    make: &mut dyn FnMut() -> Fixture,
) {
    enqueue(c, rt, place, make);
    lease(c, rt, place, make);
    ack(c, rt, place, make);
}

fn enqueue(c: &mut Criterion, rt: &Runtime, place: &str, make: &mut dyn FnMut() -> Fixture) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("enqueue/decode_validate_insert");
    for batch in [1u64, 100] {
        let fx = make();
        let bodies: Vec<Vec<u8>> = (0..batch).map(request_body).collect();
        g.throughput(Throughput::Elements(batch));
        g.bench_function(BenchmarkId::new(place, batch), |b| {
            b.iter(|| {
                let at = now();
                let jobs = bodies
                    .iter()
                    .map(|body| decode_validate(body, &limits, at))
                    .collect();
                rt.block_on(fx.store.job_insert_many(JobInsertMany {
                    tenant_id: fx.tenant.clone(),
                    queue: fx.queue.clone(),
                    jobs,
                    now: at,
                }))
                .expect("insert")
            })
        });
    }
    g.finish();
}

/// Leases of `max_jobs` from a queue that always holds at least 10,000 available jobs
/// (refilled outside the timing).
fn lease(c: &mut Criterion, rt: &Runtime, place: &str, make: &mut dyn FnMut() -> Fixture) {
    let mut g = c.benchmark_group("lease");
    for max_jobs in [1u32, 16] {
        let fx = make();
        g.throughput(Throughput::Elements(max_jobs.into()));
        // Jobs available now; refills top up only the shortfall, so little of their
        // write work spills into the timed leases.
        let available = std::cell::Cell::new(0u64);
        g.bench_function(BenchmarkId::new(place, max_jobs), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let needed = 10_000 + iters * u64::from(max_jobs);
                    if available.get() < needed {
                        fx.insert(needed - available.get()).await;
                        available.set(needed);
                    }
                    available.set(available.get() - iters * u64::from(max_jobs));
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let got = fx.lease(max_jobs).await;
                        assert_eq!(got.len(), max_jobs as usize);
                    }
                    t0.elapsed()
                })
            })
        });
    }
    g.finish();
}

/// Completing `k` leased jobs in one `job_ack_many` (k = 1 is `POST …/complete`, 16 a
/// batch from `POST /v1/acks`).
fn ack(c: &mut Criterion, rt: &Runtime, place: &str, make: &mut dyn FnMut() -> Fixture) {
    let mut g = c.benchmark_group("ack_complete");
    for k in [1u32, 16] {
        let fx = make();
        g.throughput(Throughput::Elements(k.into()));
        g.bench_function(BenchmarkId::new(place, k), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    fx.insert(iters * u64::from(k)).await;
                    let mut leased = Vec::with_capacity(iters as usize);
                    for _ in 0..iters {
                        leased.push(fx.lease(k).await);
                    }
                    let t0 = Instant::now();
                    for jobs in leased {
                        fx.complete(jobs).await;
                    }
                    t0.elapsed()
                })
            })
        });
    }
    g.finish();
}
