//! The Worker against a scripted stand-in for the server's worker protocol: what it
//! sends for each outcome, heartbeats, shutdown and lease loss, without needing vow
//! itself. (The benchmark's W4 runs the Worker against a real server, in CI too.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vow_client::{Client, Error, Outcome, Worker};

/// What the stand-in server has been told: (action, job id, body), a reported outcome
/// counting as a `complete` or `fail` call with its `POST /v1/acks` item as the body.
#[derive(Default)]
struct Mock {
    jobs: Mutex<VecDeque<Value>>,
    calls: Mutex<Vec<(String, String, Value)>>,
    ack_requests: AtomicUsize,
    lose_leases: AtomicBool,
    hold_acks: AtomicBool,
    unauthorized: AtomicBool,
}

impl Mock {
    fn calls(&self, action: &str) -> Vec<(String, Value)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _, _)| a == action)
            .map(|(_, id, body)| (id.clone(), body.clone()))
            .collect()
    }
}

fn problem(status: StatusCode, code: &str) -> Response {
    let body = json!({"type": "about:blank", "title": code, "status": status.as_u16(), "detail": code, "code": code});
    (status, Json(body)).into_response()
}

fn leased(n: u32, payload: Value) -> Value {
    json!({
        "id": format!("job_01JD00000000000000000000{n:02}"),
        "lease_id": format!("lease_01JD00000000000000000000{n:02}"),
        "lease_expires_at": "2030-01-01T00:00:00.000Z",
        "lease_ms": 30000,
        "attempt": 1, "max_attempts": 3, "payload": payload, "queue": "q",
        "priority": 5, "group": null, "metadata": {}, "traceparent": null
    })
}

async fn lease(State(m): State<Arc<Mock>>, Json(req): Json<Value>) -> Response {
    if m.unauthorized.load(Ordering::SeqCst) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let max = req["max_jobs"].as_u64().unwrap_or(1) as usize;
    let jobs: Vec<Value> = {
        let mut q = m.jobs.lock().unwrap();
        let n = max.min(q.len());
        q.drain(..n).collect()
    };
    if jobs.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Json(json!({ "jobs": jobs })).into_response()
}

async fn act(
    State(m): State<Arc<Mock>>,
    Path((id, action)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    m.calls
        .lock()
        .unwrap()
        .push((action.clone(), id.clone(), body));
    if m.lose_leases.load(Ordering::SeqCst) {
        return problem(StatusCode::CONFLICT, "lease_lost");
    }
    match action.as_str() {
        "heartbeat" => {
            Json(json!({"lease_expires_at": "2030-01-01T00:00:00.000Z"})).into_response()
        }
        // Outcomes go through `POST /v1/acks`.
        _ => problem(StatusCode::NOT_FOUND, "not_found"),
    }
}

async fn acks(State(m): State<Arc<Mock>>, Json(body): Json<Value>) -> Response {
    m.ack_requests.fetch_add(1, Ordering::SeqCst);
    while m.hold_acks.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost = m.lose_leases.load(Ordering::SeqCst);
    let mut out = json!({"complete": [], "fail": []});
    for (kind, state) in [("complete", "completed"), ("fail", "scheduled")] {
        for item in body[kind].as_array().cloned().unwrap_or_default() {
            let id = item["id"].as_str().unwrap().to_owned();
            m.calls
                .lock()
                .unwrap()
                .push((kind.to_owned(), id.clone(), item));
            let res = if lost {
                json!({"id": id, "ok": false, "state": null, "code": "lease_lost"})
            } else {
                json!({"id": id, "ok": true, "state": state, "code": null})
            };
            out[kind].as_array_mut().unwrap().push(res);
        }
    }
    Json(out).into_response()
}

async fn start(jobs: Vec<Value>) -> (Arc<Mock>, Client) {
    let mock = Arc::new(Mock::default());
    mock.jobs.lock().unwrap().extend(jobs);
    let app = Router::new()
        .route("/v1/queues/{q}/lease", post(lease))
        .route("/v1/jobs/{id}/{action}", post(act))
        .route("/v1/acks", post(acks))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::new(&format!("http://{addr}"), "test-key").unwrap();
    (mock, client)
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn worker(client: Client) -> Worker {
    Worker::new(client)
        .worker_id("test")
        .poll_wait(Duration::from_millis(100))
        .shutdown_grace(Duration::from_millis(200))
}

#[tokio::test]
async fn each_outcome_is_reported_with_its_lease() {
    let jobs = ["complete", "retry", "fail", "panic"]
        .iter()
        .enumerate()
        .map(|(i, what)| leased(i as u32, json!(what)))
        .collect();
    let (mock, client) = start(jobs).await;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        worker(client)
            .handle("q".parse().unwrap(), 2, |job| async move {
                match job.job().payload.as_str().unwrap() {
                    "complete" => Outcome::Complete(Some(json!({"ok": true}))),
                    "retry" => Outcome::Retry {
                        error: vow_core::api::FailureBody {
                            message: "later".into(),
                            code: None,
                        },
                        after: Some(Duration::from_millis(5)),
                    },
                    "fail" => Outcome::fail("never"),
                    _ => panic!("boom"),
                }
            })
            .run(shutdown.clone()),
    );
    until("four reports", || {
        mock.calls("complete").len() + mock.calls("fail").len() == 4
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let complete = mock.calls("complete");
    assert_eq!(
        complete[0].1,
        json!({
            "id": "job_01JD0000000000000000000000",
            "lease_id": "lease_01JD0000000000000000000000",
            "result": {"ok": true}
        })
    );
    let fails = mock.calls("fail");
    let by_id = |n: u32| {
        &fails
            .iter()
            .find(|(id, _)| id.ends_with(&format!("{n:02}")))
            .unwrap()
            .1
    };
    assert_eq!(by_id(1)["retryable"], true);
    assert_eq!(by_id(1)["retry_after_ms"], 5);
    assert_eq!(by_id(2)["retryable"], false);
    assert_eq!(by_id(2)["error"]["message"], "never");
    assert_eq!(
        by_id(3)["retryable"],
        true,
        "a panic is a retryable failure"
    );
    assert_eq!(by_id(3)["error"]["message"], "handler panicked: boom");
}

#[tokio::test]
async fn outcomes_that_pile_up_go_out_in_one_request() {
    let jobs = (0..10).map(|i| leased(i, json!(null))).collect();
    let (mock, client) = start(jobs).await;
    let together = Arc::new(tokio::sync::Barrier::new(10));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        worker(client)
            .handle("q".parse().unwrap(), 10, move |_| {
                let together = together.clone();
                async move {
                    together.wait().await;
                    Outcome::Complete(None)
                }
            })
            .run(shutdown.clone()),
    );
    until("ten completions", || mock.calls("complete").len() == 10).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let requests = mock.ack_requests.load(Ordering::SeqCst);
    assert!(
        requests < 10,
        "ten outcomes at once took {requests} requests"
    );
    assert!(mock.calls("fail").is_empty());
}

#[tokio::test]
async fn a_slot_is_free_while_its_outcome_is_recorded_within_a_bound() {
    let jobs = (0..3).map(|i| leased(i, json!(null))).collect();
    let (mock, client) = start(jobs).await;
    mock.hold_acks.store(true, Ordering::SeqCst);
    let started = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let s = started.clone();
    let run = tokio::spawn(
        worker(client)
            .handle("q".parse().unwrap(), 1, move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                async { Outcome::Complete(None) }
            })
            .run(shutdown.clone()),
    );
    // Concurrency 1: the second job runs while the first one's outcome is on its way.
    until("the second handler", || started.load(Ordering::SeqCst) == 2).await;
    // Its outcome waits behind the first one (one unrecorded outcome per slot), holding
    // its slot: the third job is not leased.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(
        mock.jobs.lock().unwrap().len(),
        1,
        "the third job is still queued"
    );
    mock.hold_acks.store(false, Ordering::SeqCst);
    until("three completions", || mock.calls("complete").len() == 3).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn heartbeats_carry_progress_while_the_handler_runs() {
    let (mock, client) = start(vec![leased(0, json!(null))]).await;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        worker(client)
            .lease_ms(300)
            .handle("q".parse().unwrap(), 1, |job| async move {
                job.set_progress(json!({"pct": 50}));
                tokio::time::sleep(Duration::from_millis(450)).await;
                Outcome::Complete(None)
            })
            .run(shutdown.clone()),
    );
    until("the completion", || !mock.calls("complete").is_empty()).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let beats = mock.calls("heartbeat");
    assert!(beats.len() >= 2, "one heartbeat every 100 ms: {beats:?}");
    assert_eq!(beats[0].1["extend_ms"], 300);
    assert_eq!(beats[0].1["progress"], json!({"pct": 50}));
}

#[tokio::test]
async fn shutdown_releases_jobs_whose_handlers_outlive_the_grace_period() {
    let (mock, client) = start(vec![leased(0, json!(null)), leased(1, json!("quick"))]).await;
    let started = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let s = started.clone();
    let run = tokio::spawn(
        worker(client)
            .handle("q".parse().unwrap(), 2, move |job| {
                let s = s.clone();
                async move {
                    if job.job().payload == json!("quick") {
                        // Finishes within the grace period, after shutdown began.
                        job.shutdown().cancelled().await;
                        return Outcome::Complete(None);
                    }
                    s.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Outcome::Complete(None)
                }
            })
            .run(shutdown.clone()),
    );
    until("the slow handler", || started.load(Ordering::SeqCst)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("shutdown took too long")
        .unwrap()
        .unwrap();
    assert_eq!(
        mock.calls("complete").len(),
        1,
        "the quick one finished in the grace period"
    );
    let fails = mock.calls("fail");
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].1["retryable"], true);
    assert_eq!(fails[0].1["retry_after_ms"], 0);
    assert_eq!(fails[0].1["error"]["code"], "worker_shutdown");
}

#[tokio::test]
async fn a_lost_lease_drops_the_result_without_retrying() {
    let (mock, client) = start(vec![leased(0, json!(null))]).await;
    mock.lose_leases.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        worker(client)
            .handle("q".parse().unwrap(), 1, |_| async {
                Outcome::Complete(None)
            })
            .run(shutdown.clone()),
    );
    until("the completion", || !mock.calls("complete").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(mock.calls("complete").len(), 1, "lease_lost is not retried");
}

#[tokio::test]
async fn an_unauthorized_key_stops_the_worker_with_the_error() {
    let (mock, client) = start(vec![]).await;
    mock.unauthorized.store(true, Ordering::SeqCst);
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        worker(client)
            .handle("q".parse().unwrap(), 1, |_| async {
                Outcome::Complete(None)
            })
            .run(CancellationToken::new()),
    )
    .await
    .expect("the worker should give up");
    let err: Error = res.unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"));
}
