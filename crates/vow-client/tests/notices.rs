//! The completion-notice methods of the Client against a stand-in that records each
//! request: every method uses its route's verb, path and query, and decodes the
//! answers (a 204 with no body, problems as `Error::Api`). The real server is
//! exercised end to end by the `vow` binary's CLI tests.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use vow_client::Client;
use vow_core::api::{DeliveryState, PageQuery, WebhookCreate, WebhookEvent};
use vow_core::{DeliveryId, JobId, WebhookId};

const WH: &str = "wh_01JD0000000000000000000001";
const MSG: &str = "msg_01JD0000000000000000000002";
const JOB: &str = "job_01JD0000000000000000000003";
const AT: &str = "2030-01-01T00:00:00.000Z";

/// Requests seen, as `METHOD path?query body`.
type Seen = Arc<Mutex<Vec<String>>>;

fn webhook(secret: Option<&str>) -> Value {
    let mut w = json!({
        "id": WH, "url": "https://h.example/x", "events": ["job.completed", "job.dead"],
        "queues": ["emails"], "created_at": AT, "previous_secret_valid_until": null
    });
    if let Some(s) = secret {
        w["secret"] = json!(s);
    }
    w
}

fn delivery(state: &str, log: bool) -> Value {
    let mut d = json!({
        "id": MSG, "job_id": JOB, "webhook_id": null, "event": "job.completed",
        "url": "https://h.example/cb", "state": state, "attempts": 1,
        "next_attempt_at": null, "last_status": 500, "last_error": "HTTP 500",
        "created_at": AT, "delivered_at": null
    });
    if log {
        d["log"] = json!([{ "attempt": 1, "at": AT, "status": 500, "latency_ms": 12,
                            "error": "HTTP 500", "response": "oops" }]);
    }
    d
}

async fn stand_in(State(seen): State<Seen>, method: Method, uri: Uri, body: Bytes) -> Response {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    seen.lock()
        .unwrap()
        .push(format!("{method} {}{query} {body}", uri.path()));
    let wh = format!("/v1/webhooks/{WH}");
    let msg = format!("/v1/deliveries/{MSG}");
    let p = uri.path();
    let answer = match (method.as_str(), p) {
        ("POST", "/v1/webhooks") => (StatusCode::CREATED, json!(webhook(Some("whsec_new")))),
        ("GET", "/v1/webhooks") => (StatusCode::OK, json!({ "items": [webhook(None)] })),
        ("GET", _) if p == wh => (StatusCode::OK, webhook(None)),
        ("DELETE", _) if p == wh => return StatusCode::NO_CONTENT.into_response(),
        ("POST", _) if p == format!("{wh}/rotate-secret") => {
            (StatusCode::OK, webhook(Some("whsec_rotated")))
        }
        ("GET", _) if p == format!("{wh}/deliveries") => (
            StatusCode::OK,
            json!({ "items": [delivery("dead", false)], "next_cursor": "c2" }),
        ),
        ("GET", _) if p == format!("/v1/jobs/{JOB}/deliveries") => (
            StatusCode::OK,
            json!({ "items": [delivery("dead", false)] }),
        ),
        ("GET", _) if p == msg => (StatusCode::OK, delivery("dead", true)),
        ("POST", _) if p == format!("{msg}/retry") => (StatusCode::OK, delivery("pending", false)),
        ("POST", "/v1/callback-secret") => (
            StatusCode::OK,
            json!({ "secret": "whsec_cb", "previous_secret_valid_until": AT }),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({ "type": "about:blank", "title": "Not Found", "status": 404,
                    "detail": "webhook not found", "code": "not_found" }),
        ),
    };
    (answer.0, Json(answer.1)).into_response()
}

async fn start() -> (Seen, Client) {
    let seen = Seen::default();
    let app = Router::new().fallback(stand_in).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, Client::new(&format!("http://{addr}"), "k").unwrap())
}

#[tokio::test]
async fn every_notice_method_uses_its_route_and_decodes_the_answer() {
    let (seen, c) = start().await;
    let wh: WebhookId = WH.parse().unwrap();
    let msg: DeliveryId = MSG.parse().unwrap();
    let job: JobId = JOB.parse().unwrap();

    let created = c
        .create_webhook(&WebhookCreate {
            url: "https://h.example/x".into(),
            events: vec![WebhookEvent::JobCompleted, WebhookEvent::JobDead],
            queues: Some(vec!["emails".parse().unwrap()]),
        })
        .await
        .unwrap();
    assert_eq!(created.secret.as_deref(), Some("whsec_new"));
    let listed = c.webhooks().await.unwrap();
    assert_eq!((listed.len(), listed[0].secret.as_deref()), (1, None));
    assert_eq!(c.webhook(&wh).await.unwrap().id, wh);
    let rotated = c.rotate_webhook_secret(&wh).await.unwrap();
    assert_eq!(rotated.secret.as_deref(), Some("whsec_rotated"));
    let page = c
        .webhook_deliveries(
            &wh,
            &PageQuery {
                limit: Some(10),
                cursor: Some("c1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.next_cursor.as_deref(), Some("c2"));
    assert_eq!(page.items[0].state, DeliveryState::Dead);
    let of_job = c.job_deliveries(&job).await.unwrap();
    assert_eq!((of_job.len(), of_job[0].log.is_none()), (1, true));
    let one = c.delivery(&msg).await.unwrap();
    let log = one.log.unwrap();
    assert_eq!((log[0].status, log[0].latency_ms), (Some(500), 12));
    assert_eq!(log[0].response.as_deref(), Some("oops"));
    assert_eq!(
        c.retry_delivery(&msg).await.unwrap().state,
        DeliveryState::Pending
    );
    let cb = c.rotate_callback_secret().await.unwrap();
    assert_eq!(cb.secret, "whsec_cb");
    assert!(cb.previous_secret_valid_until.is_some());
    c.delete_webhook(&wh).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let wh_path = format!("/v1/webhooks/{WH}");
    assert_eq!(
        seen,
        [
            r#"POST /v1/webhooks {"url":"https://h.example/x","events":["job.completed","job.dead"],"queues":["emails"]}"#.to_owned(),
            "GET /v1/webhooks ".to_owned(),
            format!("GET {wh_path} "),
            format!("POST {wh_path}/rotate-secret {{}}"),
            format!("GET {wh_path}/deliveries?limit=10&cursor=c1 "),
            format!("GET /v1/jobs/{JOB}/deliveries "),
            format!("GET /v1/deliveries/{MSG} "),
            format!("POST /v1/deliveries/{MSG}/retry {{}}"),
            "POST /v1/callback-secret {}".to_owned(),
            format!("DELETE {wh_path} "),
        ]
    );
}

#[tokio::test]
async fn a_missing_webhook_is_a_not_found_problem() {
    let (_, c) = start().await;
    let other: WebhookId = "wh_01JD0000000000000000000009".parse().unwrap();
    let e = c.webhook(&other).await.unwrap_err();
    assert_eq!((e.code(), e.status()), (Some("not_found"), Some(404)));
    let e = c.delete_webhook(&other).await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
}
