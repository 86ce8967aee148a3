//! Keys, roles, and tenant isolation: another tenant's object is always a 404.

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::*;

use crate::common::*;

#[tokio::test]
async fn missing_bad_and_revoked_keys_are_401() {
    let t = TestApp::spawn().await;
    t.with_key(None)
        .problem(Method::GET, "/v1/jobs", None, 401, "unauthorized")
        .await;
    t.with_key(Some("nonsense"))
        .problem(Method::GET, "/v1/jobs", None, 401, "unauthorized")
        .await;
    // Right shape, wrong secret.
    let forged = format!("{}x", &t.admin_key[..t.admin_key.len() - 1]);
    t.with_key(Some(&forged))
        .problem(Method::GET, "/v1/jobs", None, 401, "unauthorized")
        .await;

    let worker = t.tenant_key("acme", "worker").await;
    worker
        .ok::<Page<JobView>>(Method::GET, "/v1/jobs", None, StatusCode::OK)
        .await;
    let keys: Items<KeyView> = t
        .root()
        .ok(Method::GET, "/v1/tenants/acme/keys", None, StatusCode::OK)
        .await;
    let revoked: KeyView = t
        .root()
        .ok(
            Method::DELETE,
            &format!("/v1/keys/{}", keys.items[0].id),
            None,
            StatusCode::OK,
        )
        .await;
    assert!(revoked.revoked_at.is_some());
    // The revoking node forgets its cache at once.
    worker
        .problem(Method::GET, "/v1/jobs", None, 401, "unauthorized")
        .await;
}

#[tokio::test]
async fn roles_are_enforced() {
    let t = TestApp::spawn().await;
    let producer = t.tenant_key("shop", "producer").await;
    let worker = t.tenant_key("shop", "worker").await;
    let job = producer.enqueue("q", json!({ "payload": 1 })).await;
    producer
        .problem(
            Method::POST,
            "/v1/queues/q/lease",
            Some(json!({ "worker_id": "w" })),
            403,
            "forbidden",
        )
        .await;
    producer
        .problem(
            Method::PATCH,
            "/v1/queues/q",
            Some(json!({ "paused": true })),
            403,
            "forbidden",
        )
        .await;
    worker
        .problem(
            Method::POST,
            "/v1/queues/q/jobs",
            Some(json!({ "payload": 1 })),
            403,
            "forbidden",
        )
        .await;
    worker
        .problem(
            Method::POST,
            &format!("/v1/jobs/{}/cancel", job.id),
            None,
            403,
            "forbidden",
        )
        .await;
    assert_eq!(worker.get(&job.id).await.id, job.id);
    assert_eq!(worker.lease("q", 1, 0, None).await.len(), 1);
    // Tenant keys cannot manage tenants; the root key sees no jobs.
    t.client()
        .problem(
            Method::POST,
            "/v1/tenants",
            Some(json!({ "name": "x" })),
            403,
            "forbidden",
        )
        .await;
    t.root()
        .problem(Method::GET, "/v1/jobs", None, 403, "forbidden")
        .await;
    t.root()
        .problem(
            Method::POST,
            "/v1/tenants/shop/keys",
            Some(json!({ "role": "root" })),
            400,
            "validation_failed",
        )
        .await;
    t.root()
        .problem(
            Method::POST,
            "/v1/tenants/nope/keys",
            Some(json!({ "role": "admin" })),
            404,
            "not_found",
        )
        .await;
    t.root()
        .problem(
            Method::POST,
            "/v1/tenants",
            Some(json!({ "name": "shop" })),
            409,
            "conflict",
        )
        .await;
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_other() {
    let t = TestApp::spawn().await;
    let a = t.tenant_key("alpha", "admin").await;
    let b = t.tenant_key("beta", "admin").await;
    let job = a
        .enqueue("shared-name", json!({ "payload": "secret", "tags": ["t"] }))
        .await;
    let id = job.id.to_string();

    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/events"),
        format!("/v1/jobs/{id}/wait?timeout_ms=10"),
    ] {
        b.problem(Method::GET, &path, None, 404, "not_found").await;
    }
    for action in ["cancel", "retry"] {
        b.problem(
            Method::POST,
            &format!("/v1/jobs/{id}/{action}"),
            None,
            404,
            "not_found",
        )
        .await;
    }
    let empty: Page<JobView> = b
        .ok(Method::GET, "/v1/jobs?tag=t", None, StatusCode::OK)
        .await;
    assert!(empty.items.is_empty());
    let queues: Items<QueueView> = b.ok(Method::GET, "/v1/queues", None, StatusCode::OK).await;
    assert!(queues.items.is_empty());
    b.problem(
        Method::GET,
        "/v1/queues/shared-name",
        None,
        404,
        "not_found",
    )
    .await;
    // Same queue name, other tenant: nothing to lease.
    assert!(b.lease("shared-name", 10, 0, None).await.is_empty());
    // Even with the lease id, another tenant cannot complete the job.
    let leased = a.lease("shared-name", 1, 0, None).await.remove(0);
    let (s, _) = b.complete(&leased, json!("stolen")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = b
        .fail(&leased, json!({ "error": { "message": "x" } }))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r: AckResponse = b
        .ok(
            Method::POST,
            "/v1/acks",
            Some(json!({ "complete": [{ "id": leased.id, "lease_id": leased.lease_id }] })),
            StatusCode::OK,
        )
        .await;
    assert!(!r.complete[0].ok);
    // A's job is untouched and still completable by A.
    let (s, _) = a.complete(&leased, json!("ok")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(a.get(&job.id).await.result, Some(json!("ok")));
}
