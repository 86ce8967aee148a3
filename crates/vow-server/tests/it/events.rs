//! `GET /v1/events`: live job events per tenant, filters, `Last-Event-ID` resume.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// A minimal SSE reader over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Msg {
    id: i64,
    event: String,
    data: Value,
}

impl Sse {
    async fn open(api: &Api, query: &str, last_event_id: Option<i64>) -> Sse {
        let mut req = api
            .http
            .get(format!("{}/v1/events{query}", api.base))
            .bearer_auth(api.key.as_ref().unwrap());
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (skipping keep-alive comments); panics after 10 s.
    async fn next(&mut self) -> Msg {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) = (None, String::new(), String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().parse().unwrap());
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if let Some(id) = id {
                        return Msg {
                            id,
                            event,
                            data: serde_json::from_str(&data).unwrap(),
                        };
                    }
                    continue;
                }
                let chunk = self.resp.chunk().await.unwrap().expect("stream ended");
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("no event within 10 s")
    }
}

#[tokio::test]
async fn live_events_are_per_tenant_and_resumable() {
    let t = TestApp::spawn().await;
    let a = t.client();
    let b = t.tenant_key("other", "admin").await;
    let mut stream = Sse::open(&a, "", None).await;
    let mut other = Sse::open(&b, "", None).await;

    b.enqueue("q", json!({ "payload": "b's" })).await;
    let job = a.enqueue("q", json!({ "payload": 1 })).await;
    let leased = a.lease("q", 1, 0, None).await.remove(0);
    a.complete(&leased, json!(null)).await;

    let first = stream.next().await;
    assert_eq!(
        (first.event.as_str(), first.data["job_id"].as_str()),
        ("enqueued", Some(job.id.as_str()))
    );
    let second = stream.next().await;
    let third = stream.next().await;
    assert_eq!(
        (second.event.as_str(), third.event.as_str()),
        ("leased", "completed")
    );
    assert!(first.id < second.id && second.id < third.id);
    assert_eq!(third.data["to_state"], "completed");
    // Tenant b saw only its own job.
    let theirs = other.next().await;
    assert_ne!(theirs.data["job_id"].as_str(), Some(job.id.as_str()));

    // Resume after the first event: the rest is replayed from the store, then live.
    let mut resumed = Sse::open(&a, "", Some(first.id)).await;
    assert_eq!(resumed.next().await.id, second.id);
    assert_eq!(resumed.next().await.id, third.id);
    let next_job = a.enqueue("q", json!({ "payload": 2 })).await;
    let live = resumed.next().await;
    assert_eq!(live.data["job_id"].as_str(), Some(next_job.id.as_str()));

    // Filters: one job only, replayed from the start.
    let mut one = Sse::open(&a, &format!("?job={}&after=0", job.id), None).await;
    let kinds = [
        one.next().await.event,
        one.next().await.event,
        one.next().await.event,
    ];
    assert_eq!(kinds, ["enqueued", "leased", "completed"]);
    let mut by_queue = Sse::open(&a, "?queue=elsewhere&after=0", None).await;
    let elsewhere = a.enqueue("elsewhere", json!({ "payload": 3 })).await;
    assert_eq!(
        by_queue.next().await.data["job_id"].as_str(),
        Some(elsewhere.id.as_str())
    );

    a.problem(
        Method::GET,
        "/v1/events?queue=Bad",
        None,
        400,
        "validation_failed",
    )
    .await;
    a.problem(
        Method::GET,
        "/v1/events?job=nope",
        None,
        400,
        "validation_failed",
    )
    .await;
    t.with_key(None)
        .problem(Method::GET, "/v1/events", None, 401, "unauthorized")
        .await;
}

/// On PostgreSQL, transactions commit in any order, so live events can arrive with a
/// lower sequence number than one already sent: they are sent, not dropped; an event
/// sent twice (a replay overlapping the live feed) is sent once.
#[tokio::test]
async fn live_events_out_of_sequence_order_are_sent_once_each() {
    let t = TestApp::spawn().await;
    let api = t.client();
    let job = api.enqueue("q", json!({ "payload": 1 })).await;
    let mut sse = Sse::open(&api, &format!("?job={}", job.id), Some(0)).await;
    let first = sse.next().await;
    assert_eq!(first.event, "enqueued");
    // Publish straight on the bus, as the PostgreSQL listener would: seq 1000, then 999
    // (committed later), then 1000 again.
    let app = &t.running.as_ref().unwrap().app;
    let tenant = app
        .store
        .tenant_get_by_name(&"default".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut ev: vow_core::api::JobEventView = serde_json::from_value(first.data).unwrap();
    for seq in [1000, 999, 1000] {
        ev.seq = seq;
        app.store.bus().publish(&tenant, [ev.clone()]);
    }
    ev.seq = 1001;
    app.store.bus().publish(&tenant, [ev.clone()]);
    let ids = [
        sse.next().await.id,
        sse.next().await.id,
        sse.next().await.id,
    ];
    assert_eq!(
        ids,
        [1000, 999, 1001],
        "out-of-order kept, duplicate dropped"
    );
}
