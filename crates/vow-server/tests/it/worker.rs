//! The worker protocol: long-poll, heartbeats, fencing, failures, backoff, dead, acks.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::*;
use vow_core::JobState;

use crate::common::*;

#[tokio::test]
async fn long_poll_wakes_on_enqueue() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let poll = {
        let c = c.clone();
        tokio::spawn(async move {
            let jobs = c.lease("lp", 1, 20_000, None).await;
            (jobs, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = c.enqueue("lp", json!({ "payload": 1 })).await;
    let enqueued_at = Instant::now();
    let (jobs, woke_at) = poll.await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, job.id);
    // Woken by the enqueue, far before the 20 s wait ends.
    assert!(woke_at.duration_since(enqueued_at) < Duration::from_secs(2));
}

#[tokio::test]
async fn empty_long_poll_returns_after_wait() {
    let t = TestApp::spawn().await;
    let started = Instant::now();
    let jobs = t.client().lease("none", 1, 300, None).await;
    assert!(jobs.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn heartbeat_extends_and_reports_progress() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c.enqueue("hb", json!({ "payload": 1 })).await;
    let leased = c.lease("hb", 1, 0, Some(1_000)).await.remove(0);
    assert_eq!(leased.lease_ms, 1_000);
    let hb: HeartbeatResponse = c
        .ok(
            Method::POST,
            &format!("/v1/jobs/{}/heartbeat", job.id),
            Some(json!({ "lease_id": leased.lease_id, "extend_ms": 60_000, "progress": { "pct": 40 } })),
            StatusCode::OK,
        )
        .await;
    assert!(hb.lease_expires_at > leased.lease_expires_at);
    let view = c.get(&job.id).await;
    assert_eq!(view.progress, Some(json!({ "pct": 40 })));
    // Past the original 1 s lease, the job is still ours.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(c.get(&job.id).await.state, JobState::Running);
    let (s, _) = c.complete(&leased, json!(null)).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn expired_lease_is_a_failed_attempt_and_fences_the_old_worker() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c
        .enqueue(
            "exp",
            json!({ "payload": 1, "max_attempts": 2, "backoff": { "initial_ms": 0, "max_ms": 0 } }),
        )
        .await;
    let first = c.lease("exp", 1, 0, Some(200)).await.remove(0);
    // The reaper turns the expiry into a retry; the job becomes available again.
    let second = eventually(5, || {
        let c = c.clone();
        async move { c.lease("exp", 1, 0, Some(200)).await.pop() }
    })
    .await;
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    // The first worker's late outcome is refused.
    let (s, body) = c.complete(&first, json!("late")).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("lease_lost"))
    );
    let (s, _) = c
        .call(
            Method::POST,
            &format!("/v1/jobs/{}/heartbeat", job.id),
            Some(json!({ "lease_id": first.lease_id })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The second expiry exhausts the attempts: dead, with the reason recorded.
    let dead = eventually(5, || {
        let c = c.clone();
        let id = job.id.clone();
        async move { Some(c.get(&id).await).filter(|j| j.state == JobState::Dead) }
    })
    .await;
    assert_eq!(dead.attempt, 2);
    assert_eq!(
        dead.last_error.unwrap().code.as_deref(),
        Some("lease_expired")
    );
    let events: Items<JobEventView> = c
        .ok(
            Method::GET,
            &format!("/v1/jobs/{}/events", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    let kinds: Vec<_> = events.items.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "enqueued",
            "leased",
            "lease_expired",
            "promoted",
            "leased",
            "dead"
        ]
    );
}

#[tokio::test]
async fn failures_retry_with_backoff_then_die() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c
        .enqueue("f", json!({ "payload": 1, "max_attempts": 3 }))
        .await;

    // retry_after_ms replaces the backoff.
    let l1 = c.lease("f", 1, 0, None).await.remove(0);
    let (s, body) = c
        .fail(
            &l1,
            json!({ "error": { "message": "boom", "code": "e1" }, "retry_after_ms": 300 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: JobView = serde_json::from_value(body).unwrap();
    assert_eq!(v.state, JobState::Scheduled);
    assert_eq!(v.last_error.as_ref().unwrap().message, "boom");
    assert!(v.run_at.0 - v.last_error.unwrap().at.0 >= 300);
    assert!(c.lease("f", 1, 0, None).await.is_empty());
    let l2 = c.lease("f", 1, 5_000, None).await.remove(0);
    assert_eq!(l2.attempt, 2);
    // Stale leases cannot fail the job either.
    let (s, _) = c.fail(&l1, json!({ "error": { "message": "late" } })).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Non-retryable: dead at once, whatever attempts remain.
    let (s, body) = c
        .fail(
            &l2,
            json!({ "error": { "message": "bad input" }, "retryable": false }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["state"], "dead");
    let retried: JobView = c
        .ok(
            Method::POST,
            &format!("/v1/jobs/{}/retry", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(retried.state, JobState::Available);

    // Out of attempts: dead.
    for attempt in 1..=3 {
        let l = c.lease("f", 1, 5_000, None).await.remove(0);
        assert_eq!(l.attempt, attempt);
        let (_, body) = c
            .fail(
                &l,
                json!({ "error": { "message": "again" }, "retry_after_ms": 0 }),
            )
            .await;
        let want = if attempt == 3 { "dead" } else { "scheduled" };
        assert_eq!(body["state"], want);
    }
}

#[tokio::test]
async fn batch_acks_report_per_item() {
    let t = TestApp::spawn().await;
    let c = t.client();
    for i in 0..4 {
        c.enqueue("acks", json!({ "payload": i })).await;
    }
    let jobs = c.lease("acks", 4, 0, None).await;
    assert_eq!(jobs.len(), 4);
    let body = json!({
        "complete": [
            { "id": jobs[0].id, "lease_id": jobs[0].lease_id, "result": 1 },
            { "id": jobs[1].id, "lease_id": jobs[2].lease_id },
        ],
        "fail": [
            { "id": jobs[2].id, "lease_id": jobs[2].lease_id, "error": { "message": "x" }, "retryable": false },
            { "id": "job_01JD0000000000000000000000", "lease_id": jobs[3].lease_id, "error": { "message": "x" } },
        ],
    });
    let r: AckResponse = c
        .ok(Method::POST, "/v1/acks", Some(body), StatusCode::OK)
        .await;
    assert!(r.complete[0].ok && r.complete[0].state == Some(JobState::Completed));
    assert_eq!(
        (r.complete[1].ok, r.complete[1].code.as_deref()),
        (false, Some("lease_lost"))
    );
    assert!(r.fail[0].ok && r.fail[0].state == Some(JobState::Dead));
    assert_eq!(
        (r.fail[1].ok, r.fail[1].code.as_deref()),
        (false, Some("not_found"))
    );
    assert_eq!(c.get(&jobs[1].id).await.state, JobState::Running);
}
