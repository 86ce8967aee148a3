//! Producer-side API: enqueue, idempotency, batch, get, list, events, wait, cancel, retry.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::*;
use vow_core::JobState;

use crate::common::*;

#[tokio::test]
async fn enqueue_lease_complete_get() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let resp = c
        .http
        .post(format!("{}/v1/queues/emails/jobs", t.base))
        .bearer_auth(&t.admin_key)
        .json(&json!({ "payload": { "to": "a@example.com" }, "tags": ["welcome"], "metadata": { "m": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: JobView = resp.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", job.id));
    assert_eq!(
        (job.state, job.priority, job.attempt, job.max_attempts),
        (JobState::Available, 5, 0, 25)
    );

    let leased = c.lease("emails", 10, 0, None).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, job.id);
    assert_eq!(leased[0].attempt, 1);
    assert_eq!(leased[0].payload, json!({ "to": "a@example.com" }));
    assert_eq!(leased[0].metadata, json!({ "m": 1 }));
    assert_eq!(c.get(&job.id).await.state, JobState::Running);

    let (s, body) = c.complete(&leased[0], json!({ "sent": true })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let done = c.get(&job.id).await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({ "sent": true })));
    assert!(done.finished_at.is_some());

    let events: Items<JobEventView> = c
        .ok(
            Method::GET,
            &format!("/v1/jobs/{}/events", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    let kinds: Vec<_> = events.items.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["enqueued", "leased", "completed"]);
    assert!(events.items.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn idempotency_key_returns_the_original_or_conflicts() {
    let t = TestApp::spawn().await;
    let send = |body: serde_json::Value, key: &'static str| {
        let (http, base, admin) = (t.http.clone(), t.base.clone(), t.admin_key.clone());
        async move {
            http.post(format!("{base}/v1/queues/q/jobs"))
                .bearer_auth(admin)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(json!({ "payload": { "n": 1 } }), "k1").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: JobView = first.json().await.unwrap();
    let again = send(json!({ "payload": { "n": 1 } }), "k1").await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: JobView = again.json().await.unwrap();
    assert_eq!(again.id, first.id);
    let conflict = send(json!({ "payload": { "n": 2 } }), "k1").await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let p: Problem = conflict.json().await.unwrap();
    assert_eq!(p.code, "idempotency_conflict");
    // The same key on another queue is another job.
    let other = t
        .http
        .post(format!("{}/v1/queues/other/jobs", t.base))
        .bearer_auth(&t.admin_key)
        .header("Idempotency-Key", "k1")
        .json(&json!({ "payload": { "n": 2 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    let page: Page<JobView> = t
        .client()
        .ok(Method::GET, "/v1/jobs?queue=q", None, StatusCode::OK)
        .await;
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let jobs: Vec<_> = (0..100).map(|i| json!({ "payload": { "i": i } })).collect();
    let out: Items<JobView> = c
        .ok(
            Method::POST,
            "/v1/queues/b/jobs/batch",
            Some(json!({ "jobs": jobs })),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(out.items.len(), 100);
    assert_eq!(out.items[7].payload, json!({ "i": 7 }));

    // One bad job rejects the whole batch.
    let mut jobs: Vec<_> = (0..10).map(|i| json!({ "payload": { "i": i } })).collect();
    jobs[5] = json!({ "payload": 1, "priority": 12 });
    let p = c
        .problem(
            Method::POST,
            "/v1/queues/b2/jobs/batch",
            Some(json!({ "jobs": jobs })),
            400,
            "validation_failed",
        )
        .await;
    assert!(p.detail.contains("jobs[5]"), "{}", p.detail);
    let page: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?queue=b2", None, StatusCode::OK)
        .await;
    assert!(page.items.is_empty());

    let too_many: Vec<_> = (0..1001).map(|i| json!({ "payload": i })).collect();
    c.problem(
        Method::POST,
        "/v1/queues/b3/jobs/batch",
        Some(json!({ "jobs": too_many })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/b3/jobs/batch",
        Some(json!({ "jobs": [] })),
        400,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn list_pages_with_cursors_and_filters() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let mut ids = Vec::new();
    for i in 0..7 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        let q = if i < 5 { "a" } else { "b" };
        ids.push(
            c.enqueue(
                q,
                json!({ "payload": i, "tags": tags, "group": format!("g{}", i % 3) }),
            )
            .await
            .id,
        );
    }
    // Newest first, in pages of 3.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/jobs?limit=3&cursor={cur}"),
            None => "/v1/jobs?limit=3".to_owned(),
        };
        let page: Page<JobView> = c.ok(Method::GET, &path, None, StatusCode::OK).await;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let by_queue: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?queue=b", None, StatusCode::OK)
        .await;
    assert_eq!(by_queue.items.len(), 2);
    let by_tag: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?tag=even", None, StatusCode::OK)
        .await;
    assert_eq!(by_tag.items.len(), 4);
    let by_group: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?group=g0", None, StatusCode::OK)
        .await;
    assert_eq!(by_group.items.len(), 3);
    c.lease("a", 2, 0, None).await;
    let running: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?state=running", None, StatusCode::OK)
        .await;
    assert_eq!(running.items.len(), 2);
    c.problem(
        Method::GET,
        "/v1/jobs?state=bogus",
        None,
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::GET,
        "/v1/jobs?limit=501",
        None,
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::GET,
        "/v1/jobs?cursor=nope",
        None,
        400,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn wait_returns_when_the_job_ends() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c.enqueue("w", json!({ "payload": 1 })).await;

    // Times out with the current job.
    let started = Instant::now();
    let cur: JobView = c
        .ok(
            Method::GET,
            &format!("/v1/jobs/{}/wait?timeout_ms=200", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(cur.state, JobState::Available);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let waiter = {
        let c = c.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            let v: JobView = c
                .ok(
                    Method::GET,
                    &format!("/v1/jobs/{id}/wait?timeout_ms=20000"),
                    None,
                    StatusCode::OK,
                )
                .await;
            (v, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leased = c.lease("w", 1, 0, None).await;
    c.complete(&leased[0], json!(null)).await;
    let completed_at = Instant::now();
    let (v, returned_at) = waiter.await.unwrap();
    assert_eq!(v.state, JobState::Completed);
    // Woken by the completion, not by the 20 s timeout.
    assert!(returned_at.duration_since(completed_at) < Duration::from_secs(2));
}

#[tokio::test]
async fn cancel_and_retry() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c.enqueue("c", json!({ "payload": 1 })).await;
    let cancelled: JobView = c
        .ok(
            Method::POST,
            &format!("/v1/jobs/{}/cancel", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(cancelled.state, JobState::Cancelled);
    c.problem(
        Method::POST,
        &format!("/v1/jobs/{}/cancel", job.id),
        None,
        409,
        "invalid_state",
    )
    .await;
    assert!(c.lease("c", 1, 0, None).await.is_empty());

    let retried: JobView = c
        .ok(
            Method::POST,
            &format!("/v1/jobs/{}/retry", job.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!((retried.state, retried.attempt), (JobState::Available, 0));
    c.problem(
        Method::POST,
        &format!("/v1/jobs/{}/retry", job.id),
        None,
        409,
        "invalid_state",
    )
    .await;

    // Cancelling a running job fences its lease.
    let leased = c.lease("c", 1, 0, None).await;
    c.ok::<JobView>(
        Method::POST,
        &format!("/v1/jobs/{}/cancel", job.id),
        None,
        StatusCode::OK,
    )
    .await;
    let (s, body) = c.complete(&leased[0], json!(1)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["code"], "lease_lost");
    assert_eq!(c.get(&job.id).await.state, JobState::Cancelled);
}

#[tokio::test]
async fn delayed_jobs_wait_for_run_at_and_then_wake_leases() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let job = c
        .enqueue("d", json!({ "payload": 1, "delay_ms": 400 }))
        .await;
    assert_eq!(job.state, JobState::Scheduled);
    assert!(c.lease("d", 1, 0, None).await.is_empty());
    let started = Instant::now();
    let leased = c.lease("d", 1, 5_000, None).await;
    assert_eq!(leased.len(), 1, "the promoter woke the long-poll");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));

    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = c.enqueue("d", json!({ "payload": 1, "run_at": at })).await;
    assert_eq!(later.state, JobState::Scheduled);
    c.problem(
        Method::POST,
        "/v1/queues/d/jobs",
        Some(json!({ "payload": 1, "run_at": at, "delay_ms": 5 })),
        400,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn priorities_order_leases() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let low = c
        .enqueue("p", json!({ "payload": "low", "priority": 9 }))
        .await;
    let mid = c.enqueue("p", json!({ "payload": "mid" })).await;
    let high = c
        .enqueue("p", json!({ "payload": "high", "priority": 0 }))
        .await;
    let mid2 = c.enqueue("p", json!({ "payload": "mid2" })).await;
    let order: Vec<_> = c
        .lease("p", 10, 0, None)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(order, [high.id, mid.id, mid2.id, low.id]);
}
