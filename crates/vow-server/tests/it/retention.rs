//! Retention: the pruner deletes finished jobs past their retention, and only those.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::JobView;
use vow_core::{ManualClock, Timestamp};
use vow_server::config::Retention;

use crate::common::{eventually, Api, TestApp};

const HOUR: i64 = 3_600_000;

async fn enqueue_keyed(t: &TestApp, key: &str, payload: i64) -> (StatusCode, JobView) {
    let resp = t
        .http
        .post(format!("{}/v1/queues/q/jobs", t.base))
        .bearer_auth(&t.admin_key)
        .header("Idempotency-Key", key)
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

async fn run_to_completion(c: &Api, id: &vow_core::JobId) {
    let leased = c.lease("q", 1, 0, None).await.remove(0);
    assert_eq!(&leased.id, id);
    let (s, body) = c.complete(&leased, json!({ "ok": true })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

async fn status(c: &Api, path: &str) -> StatusCode {
    c.call(Method::GET, path, None).await.0
}

#[tokio::test]
async fn a_completed_job_past_its_retention_is_pruned_and_a_recent_one_stays() {
    let clock = ManualClock::new(Timestamp(1_767_225_600_000));
    let retention = Retention {
        completed_ms: HOUR as u64,
        interval_ms: 50,
        ..Retention::default()
    };
    let t = TestApp::spawn_with_clock(Arc::new(clock.clone()), |app| app.with_retention(retention))
        .await;
    let c = t.client();

    let (s, old) = enqueue_keyed(&t, "k", 1).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    run_to_completion(&c, &old.id).await;
    // Many pruner passes later, a job within its retention is still there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get(&old.id).await.state, vow_core::JobState::Completed);

    clock.advance(2 * HOUR);
    let recent = c.enqueue("q", json!({ "payload": 2 })).await;
    run_to_completion(&c, &recent.id).await;

    let old_path = format!("/v1/jobs/{}", old.id);
    eventually(10, || async {
        (status(&c, &old_path).await == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(
        status(&c, &format!("{old_path}/events")).await,
        StatusCode::NOT_FOUND
    );
    // Several passes later, the recent one is still there, with its history.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get(&recent.id).await.state, vow_core::JobState::Completed);
    let (s, events) = c
        .call(Method::GET, &format!("/v1/jobs/{}/events", recent.id), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{events}");
    assert!(events.to_string().contains("completed"), "{events}");

    // The pruned job's idempotency key is free again: a new job, not a conflict.
    let (s, again) = enqueue_keyed(&t, "k", 3).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_ne!(again.id, old.id);

    let metrics = t
        .http
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"vow_jobs_total{event="pruned"}"#),
        "{metrics}"
    );
}
