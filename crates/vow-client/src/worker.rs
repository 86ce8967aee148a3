//! [`Worker`]: leases jobs from queues, runs async handlers on them, keeps their leases
//! alive with heartbeats and reports each handler's [`Outcome`].
//!
//! Lifecycle: one lease loop per queue long-polls for as many jobs as it has free slots.
//! Each leased job runs in its own task; the handler runs in a task of its own below it,
//! so a panic becomes a retryable failure instead of taking the worker down. Outcomes
//! go to one reporter per worker, which sends whatever has piled up while its previous
//! request was in flight in one `POST /v1/acks` (one request and one store transaction
//! for many jobs). A job's slot is free for the next job once its handler has returned
//! and its outcome is queued; at most `concurrency` outcomes per queue wait to be
//! recorded, so a slow server holds the leasing back. On shutdown
//! the loops stop leasing, in-flight handlers get a grace period to finish, and the
//! jobs whose handlers are still running after it are *released*: failed as retryable
//! with `retry_after_ms: 0`, so another worker picks them up at once instead of waiting
//! for the lease to run out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vow_core::api::{
    AckComplete, AckFail, AckItemResult, AckRequest, FailureBody, HeartbeatRequest, LeaseRequest,
    LeasedJob,
};
use vow_core::{JobId, LeaseId, QueueName};

use crate::{Client, Error};

/// What became of one attempt of a job: handlers return it as a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the value (if any) is stored as the job's `result`.
    Complete(Option<Value>),
    /// This attempt failed; run the job again, after `after` if given, else after the
    /// job's backoff delay. A job out of attempts becomes `dead` all the same.
    Retry {
        /// What went wrong.
        error: FailureBody,
        /// Run again after this long instead of the backoff delay.
        after: Option<Duration>,
    },
    /// Failed for good: the job becomes `dead` at once, whatever attempts are left
    /// (it can still be replayed with `retry`).
    Fail(FailureBody),
}

impl Outcome {
    /// A retryable failure with `message`, retried after the job's backoff delay.
    pub fn retry(message: impl Into<String>) -> Self {
        Outcome::Retry {
            error: failure(message, None),
            after: None,
        }
    }

    /// A non-retryable failure with `message`: the job becomes `dead`.
    pub fn fail(message: impl Into<String>) -> Self {
        Outcome::Fail(failure(message, None))
    }
}

fn failure(message: impl Into<String>, code: Option<&str>) -> FailureBody {
    FailureBody {
        message: message.into(),
        code: code.map(str::to_owned),
    }
}

/// What a handler gets: the leased job and ways to talk back while it runs.
#[derive(Clone)]
pub struct JobContext {
    job: Arc<LeasedJob>,
    client: Client,
    progress: Arc<Mutex<Option<Value>>>,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
}

impl JobContext {
    /// The leased job: id, attempt (1-based), payload, metadata, …
    pub fn job(&self) -> &LeasedJob {
        &self.job
    }

    /// The worker's client, e.g. to enqueue follow-up jobs.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Records progress; it is sent with the next heartbeat (the latest value wins).
    pub fn set_progress(&self, progress: Value) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress);
    }

    /// Cancelled when the server reports the lease lost (it expired, or the job was
    /// cancelled or taken over). Whatever the handler returns afterwards is dropped, so
    /// a handler may stop early when it sees this.
    pub fn lease_lost(&self) -> &CancellationToken {
        &self.lease_lost
    }

    /// Cancelled when the worker starts shutting down. The handler still has the grace
    /// period to finish; one that can stop early may return
    /// `Outcome::Retry { after: Some(Duration::ZERO), .. }`.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn progress(&self) -> Option<Value> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Handler =
    Arc<dyn Fn(JobContext) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

struct QueueSpec {
    name: QueueName,
    concurrency: usize,
    handler: Handler,
}

/// Settings shared by all lease loops and job tasks of one worker.
struct Shared {
    client: Client,
    worker_id: String,
    wait: Duration,
    lease_ms: Option<u64>,
}

/// Runs handlers for jobs of one or more queues; see the [module docs](self).
pub struct Worker {
    shared: Shared,
    grace: Duration,
    queues: Vec<QueueSpec>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.shared.worker_id)
            .field(
                "queues",
                &self
                    .queues
                    .iter()
                    .map(|q| (q.name.as_str(), q.concurrency))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with no queues yet, leasing with `client`. Defaults: worker id
    /// `<hostname>/pid-<pid>`, long-poll wait 30 s, lease length the job's own
    /// `timeout_ms`, shutdown grace 30 s.
    pub fn new(client: Client) -> Self {
        Self {
            shared: Shared {
                client,
                worker_id: default_worker_id(),
                wait: Duration::from_secs(30),
                lease_ms: None,
            },
            grace: Duration::from_secs(30),
            queues: Vec::new(),
        }
    }

    /// The id the server records as the lease holder (for operators).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.shared.worker_id = id.into();
        self
    }

    /// Asks for leases of this length instead of each job's `timeout_ms`. Heartbeats
    /// go out every third of it.
    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.shared.lease_ms = Some(ms);
        self
    }

    /// How long one lease request waits on the server when nothing is available.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.shared.wait = wait;
        self
    }

    /// How long in-flight handlers may run after shutdown begins before their jobs are
    /// released.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs `handler` on jobs of `queue`, at most `concurrency` at a time (at least 1).
    /// Registering a queue twice runs two independent loops.
    pub fn handle<F, Fut>(mut self, queue: QueueName, concurrency: usize, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.queues.push(QueueSpec {
            name: queue,
            concurrency: concurrency.max(1),
            handler,
        });
        self
    }

    /// Leases and runs jobs until `shutdown` is cancelled, then shuts down gracefully
    /// (see the [module docs](self)) and returns `Ok`.
    ///
    /// Transient lease errors (network, `5xx`, `429`) are logged and retried with
    /// backoff. An error that retrying cannot fix — `401`, `403` or `400` on lease —
    /// stops leasing on all queues, lets in-flight jobs finish as on shutdown, and is
    /// returned. With no queues registered it returns at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let stop_leasing = shutdown.child_token();
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (reports, inbox) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(reporter(self.shared.client.clone(), inbox));
        let shared = Arc::new(self.shared);
        let mut loops = JoinSet::new();
        for spec in self.queues {
            loops.spawn(lease_loop(
                shared.clone(),
                spec,
                Tasks {
                    stop: stop_leasing.clone(),
                    hard_stop: hard_stop.clone(),
                    tracker: tracker.clone(),
                    reports: reports.clone(),
                },
            ));
        }
        drop(reports);
        let mut result = Ok(());
        while let Some(joined) = loops.join_next().await {
            let failed = match joined {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => {
                    tracing::error!(error = %e, "a lease loop crashed");
                    None
                }
            };
            if let Some(e) = failed {
                tracing::error!(error = %e, "leasing failed and cannot recover; stopping");
                stop_leasing.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = tracker.len(),
                grace_ms = self.grace.as_millis() as u64,
                "handlers still running after the grace period; releasing their jobs"
            );
            hard_stop.cancel();
            tracker.wait().await;
        }
        // Every job task has handed its outcome over and seen it recorded; the last
        // sender is gone with them, so the reporter has ended too.
        if let Err(e) = reporter.await {
            tracing::error!(error = %e, "the reporter crashed");
        }
        result
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/pid-{}", std::process::id())
}

/// Errors on lease that retrying cannot fix.
fn is_fatal(e: &Error) -> bool {
    matches!(e.status(), Some(400 | 401 | 403)) || matches!(e, Error::InvalidUrl { .. })
}

/// What a lease loop hands each job task: when to stop, and where outcomes go.
#[derive(Clone)]
struct Tasks {
    /// Stop leasing; handlers get the grace period.
    stop: CancellationToken,
    /// The grace period is over: release the jobs still running.
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    reports: mpsc::UnboundedSender<Report>,
}

async fn lease_loop(shared: Arc<Shared>, spec: QueueSpec, tasks: Tasks) -> Result<(), Error> {
    let stop = tasks.stop.clone();
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let slots = Arc::new(Semaphore::new(spec.concurrency));
    let unreported = Arc::new(Semaphore::new(spec.concurrency));
    let mut backoff = MIN_BACKOFF;
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let req = LeaseRequest {
            worker_id: shared.worker_id.clone(),
            max_jobs: Some(permits.len() as u32),
            wait_ms: Some(shared.wait.as_millis() as u64),
            lease_ms: shared.lease_ms,
        };
        let started = Instant::now();
        // Dropping an in-flight long-poll on shutdown may strand a job the server has
        // just leased to us; its lease runs out and it is retried (at-least-once).
        let resp = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            r = shared.client.lease(spec.name.as_str(), &req) => r,
        };
        match resp {
            Ok(resp) => {
                backoff = MIN_BACKOFF;
                if resp.jobs.is_empty() && started.elapsed() < Duration::from_millis(50) {
                    // The server did not long-poll; do not spin.
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                for job in resp.jobs {
                    let permit = permits.pop();
                    if permit.is_none() {
                        tracing::warn!(queue = %spec.name, job_id = %job.id, "the server leased more jobs than asked for");
                    }
                    tasks.tracker.spawn(run_job(
                        shared.clone(),
                        spec.handler.clone(),
                        job,
                        (permit, unreported.clone()),
                        tasks.clone(),
                    ));
                }
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(queue = %spec.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "lease failed");
                drop(permits);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The lease length to heartbeat for: the requested one, else what the server granted.
fn lease_length(requested: Option<u64>, job: &LeasedJob) -> Duration {
    Duration::from_millis(requested.unwrap_or(job.lease_ms).max(300))
}

/// The outcome of a handler task that did not return normally.
fn outcome_of_join(res: Result<Outcome, JoinError>) -> Outcome {
    match res {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Outcome::Retry {
                error: failure(format!("handler panicked: {msg}"), Some("panic")),
                after: None,
            }
        }
        Err(_) => Outcome::Retry {
            error: failure("handler task was cancelled", Some("cancelled")),
            after: None,
        },
    }
}

/// Runs one job's handler (heartbeating meanwhile) and reports its outcome. Holds the
/// job's slot until the handler has returned and one of the queue's `unreported`
/// permits is taken for its outcome, which is held until the outcome is recorded.
async fn run_job(
    shared: Arc<Shared>,
    handler: Handler,
    job: LeasedJob,
    (slot, unreported): (Option<OwnedSemaphorePermit>, Arc<Semaphore>),
    tasks: Tasks,
) {
    let (shutdown, hard_stop) = (tasks.stop, tasks.hard_stop);
    let lease = lease_length(shared.lease_ms, &job);
    let period = (lease / 3).max(Duration::from_millis(50));
    let id = job.id.clone();
    let lease_id = job.lease_id.clone();
    let queue = job.queue.clone();
    let ctx = JobContext {
        job: Arc::new(job),
        client: shared.client.clone(),
        progress: Arc::default(),
        lease_lost: CancellationToken::new(),
        shutdown,
    };
    let mut task = tokio::spawn(handler(ctx.clone()));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost = false;
    let outcome = loop {
        tokio::select! {
            res = &mut task => break Some(outcome_of_join(res)),
            _ = tick.tick(), if !lost => {
                let req = HeartbeatRequest {
                    lease_id: lease_id.clone(),
                    extend_ms: Some(lease.as_millis() as u64),
                    progress: ctx.progress(),
                };
                match tokio::time::timeout(period, shared.client.heartbeat(&id, &req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.is_lease_lost() => {
                        tracing::warn!(%queue, job_id = %id, "lease lost while the handler ran; its result will be dropped");
                        lost = true;
                        ctx.lease_lost.cancel();
                    }
                    Ok(Err(e)) => tracing::warn!(%queue, job_id = %id, error = %e, "heartbeat failed"),
                    Err(_) => tracing::warn!(%queue, job_id = %id, "heartbeat timed out"),
                }
            }
            _ = hard_stop.cancelled() => {
                task.abort();
                break None;
            }
        }
    };
    if lost {
        return;
    }
    let outcome = outcome.unwrap_or_else(|| {
        tracing::info!(%queue, job_id = %id, "releasing unfinished job");
        Outcome::Retry {
            error: failure(
                "the worker shut down before the handler finished",
                Some("worker_shutdown"),
            ),
            after: Some(Duration::ZERO),
        }
    });
    // Waits while the queue's unrecorded outcomes are at their bound, still holding the
    // slot, so that a slow server holds the leasing back.
    let reporting = unreported.acquire_owned().await.ok();
    drop(slot);
    let (done, recorded) = oneshot::channel();
    let report = Report {
        queue,
        id,
        lease_id,
        outcome,
        done,
    };
    if tasks.reports.send(report).is_ok() {
        let _ = recorded.await;
    }
    drop(reporting);
}

/// One handler's outcome on its way to the server; `done` is told once it was sent
/// (recorded, refused, or given up on).
struct Report {
    queue: QueueName,
    id: JobId,
    lease_id: LeaseId,
    outcome: Outcome,
    done: oneshot::Sender<()>,
}

/// Most outcomes in one `POST /v1/acks` (the API's batch limit).
const ACK_BATCH: usize = 1000;

/// Sends the outcomes handed to it: the first one that comes, with whatever else has
/// piled up by then, in one `POST /v1/acks`; ends once every sender is gone.
async fn reporter(client: Client, mut inbox: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < ACK_BATCH {
            match inbox.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        send_reports(&client, batch).await;
    }
}

/// Sends `batch` in one `POST /v1/acks`, retrying transient failures a few times
/// (losing a result means running the job again), and logs what became of each.
async fn send_reports(client: &Client, batch: Vec<Report>) {
    let (completes, fails): (Vec<&Report>, Vec<&Report>) = batch
        .iter()
        .partition(|r| matches!(r.outcome, Outcome::Complete(_)));
    let req = AckRequest {
        complete: completes
            .iter()
            .map(|r| AckComplete {
                id: r.id.clone(),
                lease_id: r.lease_id.clone(),
                result: match &r.outcome {
                    Outcome::Complete(result) => result.clone(),
                    _ => None,
                },
            })
            .collect(),
        fail: fails
            .iter()
            .map(|r| {
                let (error, retryable, after) = match &r.outcome {
                    Outcome::Retry { error, after } => (error.clone(), true, *after),
                    Outcome::Fail(error) => (error.clone(), false, None),
                    Outcome::Complete(_) => unreachable!("partitioned out"),
                };
                AckFail {
                    id: r.id.clone(),
                    lease_id: r.lease_id.clone(),
                    error,
                    retryable: Some(retryable),
                    retry_after_ms: after.map(|d| d.as_millis() as u64),
                }
            })
            .collect(),
    };
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        match client.ack(&req).await {
            Ok(resp) => {
                let sent = completes.iter().zip(&resp.complete);
                for (r, res) in sent.chain(fails.iter().zip(&resp.fail)) {
                    log_recorded(r, res);
                }
                break;
            }
            Err(e) if e.is_transient() && attempt < 5 => {
                tracing::warn!(jobs = batch.len(), error = %e, "reporting outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                for r in &batch {
                    tracing::error!(queue = %r.queue, job_id = %r.id, error = %e, "could not report the outcome; the job will run again when its lease expires");
                }
                break;
            }
        }
    }
    for r in batch {
        let _ = r.done.send(());
    }
}

/// Logs what the server did with one reported outcome.
fn log_recorded(r: &Report, res: &AckItemResult) {
    let (queue, id) = (&r.queue, &r.id);
    match res.code.as_deref() {
        None if res.ok => {
            tracing::debug!(%queue, job_id = %id, state = ?res.state, "reported outcome");
        }
        Some("lease_lost") => {
            tracing::warn!(%queue, job_id = %id, "lease lost before the outcome was reported; result dropped");
        }
        code => {
            tracing::error!(%queue, job_id = %id, code = code.unwrap_or("none"), "the server refused the outcome; the job will run again when its lease expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_retryable_failures() {
        let res = tokio::spawn(async { panic!("boom") }).await;
        match outcome_of_join(res) {
            Outcome::Retry { error, after } => {
                assert_eq!(error.message, "handler panicked: boom");
                assert_eq!(error.code.as_deref(), Some("panic"));
                assert_eq!(after, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn outcome_shorthands() {
        assert!(
            matches!(Outcome::fail("x"), Outcome::Fail(FailureBody { message, .. }) if message == "x")
        );
        assert!(matches!(
            Outcome::retry("y"),
            Outcome::Retry { after: None, .. }
        ));
    }
}
