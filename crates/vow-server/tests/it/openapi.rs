//! The committed OpenAPI document must match the one the code generates.

use reqwest::{Method, StatusCode};

use crate::common::*;

#[tokio::test]
async fn openapi_is_served_and_committed_copy_is_current() {
    let t = TestApp::spawn().await;
    let served: serde_json::Value = t
        .with_key(None)
        .ok(Method::GET, "/openapi.json", None, StatusCode::OK)
        .await;
    let generated = serde_json::to_value(vow_server::openapi::document()).unwrap();
    assert_eq!(served, generated);
    for path in [
        "/v1/queues/{queue}/jobs",
        "/v1/queues/{queue}/lease",
        "/v1/acks",
        "/v1/jobs/{id}/wait",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} missing");
    }
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    let pretty = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("VOW_UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path, &pretty).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(
        committed == pretty,
        "openapi.json is stale: run `VOW_UPDATE_OPENAPI=1 cargo test -p vow-server --test it openapi` and commit it"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let t = TestApp::spawn().await;
    let anon = t.with_key(None);
    let (s, _) = anon.call(Method::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = anon.call(Method::GET, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn metrics_cover_http_store_calls_and_jobs() {
    let t = TestApp::spawn().await;
    let c = t.client();
    c.enqueue("metrics-q", serde_json::json!({ "payload": 1 }))
        .await;
    let leased = c.lease("metrics-q", 1, 0, None).await.remove(0);
    c.complete(&leased, serde_json::json!(null)).await;
    let resp = t
        .http
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for needle in [
        r#"vow_http_requests_total{method="POST",route="/v1/queues/{queue}/jobs",status="202"}"#,
        r#"vow_http_request_duration_seconds_bucket{method="POST",route="/v1/jobs/{id}/complete""#,
        r#"vow_store_calls_total{method="job_insert_many",outcome="ok"}"#,
        r#"vow_store_call_duration_seconds_bucket{method="job_lease""#,
        r#"vow_jobs_total{event="enqueued"}"#,
        r#"vow_jobs_total{event="completed"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // Ids never become labels.
    assert!(!text.contains(leased.id.as_str()));
}
