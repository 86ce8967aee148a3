//! Queues: counts, pause/resume, settings.

use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use vow_core::api::*;

use crate::common::*;

#[tokio::test]
async fn counts_pause_and_resume() {
    let t = TestApp::spawn().await;
    let c = t.client();
    for i in 0..3 {
        c.enqueue("q1", json!({ "payload": i })).await;
    }
    c.enqueue("q1", json!({ "payload": 9, "delay_ms": 3_600_000 }))
        .await;
    let l = c.lease("q1", 1, 0, None).await.remove(0);
    c.complete(&l, json!(null)).await;

    let q: QueueView = c
        .ok(Method::GET, "/v1/queues/q1", None, StatusCode::OK)
        .await;
    assert_eq!(
        q.counts,
        QueueCounts {
            scheduled: 1,
            available: 2,
            running: 0,
            completed: 1,
            dead: 0,
            cancelled: 0
        }
    );
    assert!(!q.paused);
    assert!(q.oldest_available_age_ms.is_some());

    let paused: QueueView = c
        .ok(
            Method::PATCH,
            "/v1/queues/q1",
            Some(json!({ "paused": true })),
            StatusCode::OK,
        )
        .await;
    assert!(paused.paused);
    assert!(c.lease("q1", 10, 0, None).await.is_empty());

    // A long-poll on a paused queue is woken by the resume.
    let poll = {
        let c = c.clone();
        tokio::spawn(async move { c.lease("q1", 10, 10_000, None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.ok::<QueueView>(
        Method::PATCH,
        "/v1/queues/q1",
        Some(json!({ "paused": false })),
        StatusCode::OK,
    )
    .await;
    assert_eq!(poll.await.unwrap().len(), 2);

    let list: Items<QueueView> = c.ok(Method::GET, "/v1/queues", None, StatusCode::OK).await;
    assert_eq!(list.items.len(), 1);
    c.problem(Method::GET, "/v1/queues/never-used", None, 404, "not_found")
        .await;
    let set: QueueView = c
        .ok(
            Method::PATCH,
            "/v1/queues/q1",
            Some(
                json!({ "concurrency_limit": 4, "rate_limit": { "per_second": 10.0, "burst": 5 } }),
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(set.concurrency_limit, Some(4));
    let cleared: QueueView = c
        .ok(
            Method::PATCH,
            "/v1/queues/q1",
            Some(json!({ "concurrency_limit": null })),
            StatusCode::OK,
        )
        .await;
    assert_eq!(cleared.concurrency_limit, None);
    assert!(cleared.rate_limit.is_some());
}
