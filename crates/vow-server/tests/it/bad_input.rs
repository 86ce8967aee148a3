//! Bad input gets a 4xx with a stable code, never a 5xx, and loses nothing accepted.

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::*;

use crate::common::*;

#[tokio::test]
async fn bad_requests_are_4xx_with_codes_and_lose_nothing() {
    let t = TestApp::spawn().await;
    let c = t.client();
    let kept = c
        .enqueue("good", json!({ "payload": { "keep": true } }))
        .await;

    let raw = |body: &'static str, ct: &'static str| {
        let (http, base, key) = (t.http.clone(), t.base.clone(), t.admin_key.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/queues/good/jobs"))
                .bearer_auth(key)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            let p: Problem = r.json().await.unwrap();
            (status.as_u16(), p.code)
        }
    };
    assert_eq!(
        raw("{not json", "application/json").await,
        (400, "invalid_json".into())
    );
    assert_eq!(
        raw("", "application/json").await,
        (400, "invalid_json".into())
    );
    assert_eq!(
        raw("[1,2]", "application/json").await,
        (400, "validation_failed".into())
    );
    assert_eq!(
        raw(r#"{"payload": 1}"#, "text/plain").await,
        (415, "unsupported_media_type".into())
    );

    let p = c
        .problem(
            Method::POST,
            "/v1/queues/good/jobs",
            Some(json!({ "payload": 1, "prioritty": 1 })),
            400,
            "validation_failed",
        )
        .await;
    assert!(p.detail.contains("prioritty"), "{}", p.detail);
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "nopayload": 1 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "priority": -1 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "max_attempts": 0 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "timeout_ms": 1 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "run_at": "tomorrow" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "callback_url": "ftp://x" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "group": "" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": 1, "backoff": { "multiplier": 0.5 } })),
        400,
        "validation_failed",
    )
    .await;

    for bad in ["Bad", "-x", "a%20b", "%C3%A9", &"q".repeat(65)] {
        c.problem(
            Method::POST,
            &format!("/v1/queues/{bad}/jobs"),
            Some(json!({ "payload": 1 })),
            400,
            "validation_failed",
        )
        .await;
        c.problem(
            Method::POST,
            &format!("/v1/queues/{bad}/lease"),
            Some(json!({ "worker_id": "w" })),
            400,
            "validation_failed",
        )
        .await;
    }

    // Oversize payload: 413, and a body over the request limit too.
    let big = "x".repeat(256 * 1024 + 1);
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": big })),
        413,
        "payload_too_large",
    )
    .await;
    let huge = "x".repeat(17 * 1024 * 1024);
    c.problem(
        Method::POST,
        "/v1/queues/good/jobs",
        Some(json!({ "payload": huge })),
        413,
        "payload_too_large",
    )
    .await;

    // Bad ids are not found; bad leases are refused.
    c.problem(Method::GET, "/v1/jobs/not-an-id", None, 404, "not_found")
        .await;
    c.problem(
        Method::GET,
        "/v1/jobs/job_01JD0000000000000000000000",
        None,
        404,
        "not_found",
    )
    .await;
    c.problem(
        Method::POST,
        &format!("/v1/jobs/{}/complete", kept.id),
        Some(json!({ "lease_id": "nope" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        &format!("/v1/jobs/{}/complete", kept.id),
        Some(json!({ "lease_id": "lease_01JD0000000000000000000000" })),
        409,
        "lease_lost",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/lease",
        Some(json!({ "worker_id": "w", "max_jobs": 0 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/lease",
        Some(json!({ "worker_id": "w", "wait_ms": 3_600_000 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::POST,
        "/v1/queues/good/lease",
        Some(json!({ "worker_id": "" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::PATCH,
        "/v1/queues/good",
        Some(json!({ "paused": "yes" })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(
        Method::PATCH,
        "/v1/queues/good",
        Some(json!({ "concurrency_limit": 0 })),
        400,
        "validation_failed",
    )
    .await;
    c.problem(Method::GET, "/v1/nothing-here", None, 404, "not_found")
        .await;
    c.problem(Method::DELETE, "/v1/jobs", None, 405, "method_not_allowed")
        .await;

    // Nothing accepted was lost, and the service still works.
    let again = c.get(&kept.id).await;
    assert_eq!(again.payload, json!({ "keep": true }));
    let page: Page<JobView> = c
        .ok(Method::GET, "/v1/jobs?queue=good", None, StatusCode::OK)
        .await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(c.lease("good", 5, 0, None).await.len(), 1);
}
