//! Completion notices end to end: real receivers on loopback, real signatures.

use std::collections::{HashMap, HashSet};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vow_core::api::{
    CallbackSecretView, DeliveryState, DeliveryView, Items, Page, WebhookEvent, WebhookView,
};
use vow_core::notice::{Breaker, NoticeBody, RetrySchedule};
use vow_server::config::WebhookSettings;
use vow_server::App;

use crate::common::*;
use crate::receiver::Receiver;

/// Fast schedules so a test sees many attempts in a few seconds; loopback allowed.
fn fast(app: App) -> App {
    app.with_webhooks(
        WebhookSettings {
            timeout_ms: 2_000,
            retry_schedule_ms: RetrySchedule(vec![100; 40]),
            breaker: Breaker {
                threshold: 3,
                open_ms: 150,
                max_open_ms: 600,
            },
            max_in_flight: 16,
            max_in_flight_per_endpoint: 4,
            secret_grace_ms: 60_000,
        },
        "127.0.0.0/8".parse().unwrap(),
    )
    .unwrap()
}

async fn run_job(api: &Api, queue: &str, body: Value) -> vow_core::JobId {
    let job = api.enqueue(queue, body).await;
    let leased = api.lease(queue, 1, 1_000, None).await;
    assert_eq!(leased[0].id, job.id);
    let (s, b) = api.complete(&leased[0], json!({ "n": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    job.id
}

async fn job_deliveries(api: &Api, job: &vow_core::JobId) -> Vec<DeliveryView> {
    let items: Items<DeliveryView> = api
        .ok(
            Method::GET,
            &format!("/v1/jobs/{job}/deliveries"),
            None,
            StatusCode::OK,
        )
        .await;
    items.items
}

/// The scenario: a receiver that fails 30% of first attempts, then is down for
/// a while, then recovers. Every notice arrives, every signature verifies, and
/// duplicates only ever carry the same webhook-id (with the same body).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_notice_arrives_through_a_flaky_then_dead_receiver() {
    let t = TestApp::spawn_with(fast).await;
    let api = t.client();
    let mut rx = Receiver::start(3).await;

    let secret: CallbackSecretView = api
        .ok(Method::POST, "/v1/callback-secret", None, StatusCode::OK)
        .await;
    rx.trust(&secret.secret);
    let hook: WebhookView = api
        .ok(
            Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": rx.url("/subscription"),
                         "events": ["job.completed", "job.dead"] })),
            StatusCode::CREATED,
        )
        .await;
    rx.trust(hook.secret.as_deref().unwrap());

    let mut jobs = Vec::new();
    let callback = rx.url("/callback");
    let run = |n: usize| {
        let (api, url) = (api.clone(), callback.clone());
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.push(
                    run_job(
                        &api,
                        "pay",
                        json!({ "payload": { "i": i }, "callback_url": format!("{url}?job={i}") }),
                    )
                    .await,
                );
            }
            ids
        }
    };
    jobs.extend(run(20).await);
    // Down: connections refused while more jobs finish.
    rx.down().await;
    jobs.extend(run(20).await);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    rx.up().await;
    jobs.extend(run(20).await);

    // Every job: two notices (callback and subscription), both delivered.
    let all = eventually(60, || {
        let api = api.clone();
        let jobs = jobs.clone();
        async move {
            let mut all = Vec::new();
            for j in &jobs {
                let ds = job_deliveries(&api, j).await;
                if ds.len() != 2 || ds.iter().any(|d| d.state != DeliveryState::Delivered) {
                    return None;
                }
                all.extend(ds);
            }
            Some(all)
        }
    })
    .await;
    assert_eq!(all.len(), 120);

    let got = rx.received();
    assert!(got.iter().all(|r| r.verified), "every signature verifies");
    let mut bodies: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in &got {
        bodies.entry(&r.id).or_default().insert(&r.body);
    }
    // Each delivery's id arrived, acknowledged, with one body however often it was sent.
    let acked: HashSet<&str> = got
        .iter()
        .filter(|r| r.answered == 204)
        .map(|r| r.id.as_str())
        .collect();
    for d in &all {
        assert!(acked.contains(d.id.as_str()), "{} never acknowledged", d.id);
        assert_eq!(
            bodies[d.id.as_str()].len(),
            1,
            "duplicates carry the same body"
        );
    }
    assert_eq!(bodies.len(), 120, "no notice under an unknown id");
    let paths: HashMap<&str, usize> =
        got.iter()
            .filter(|r| r.answered == 204)
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.path.as_str()).or_default() += 1;
                m
            });
    assert!(
        paths["/callback"] >= 60 && paths["/subscription"] >= 60,
        "{paths:?}"
    );
    assert_eq!(paths.len(), 2);
    // The receiver really failed some first attempts, and was really down.
    let failed_first = got.iter().filter(|r| r.answered == 500).count();
    assert!(
        failed_first >= 6,
        "about 30% of first attempts fail: {failed_first}"
    );
    assert!(
        all.iter().any(|d| d.attempts >= 2),
        "some deliveries needed retries"
    );
    let retried = all
        .iter()
        .find(|d| d.attempts >= 2)
        .map(|d| d.id.clone())
        .unwrap();
    let full: DeliveryView = api
        .ok(
            Method::GET,
            &format!("/v1/deliveries/{retried}"),
            None,
            StatusCode::OK,
        )
        .await;
    let log = full.log.unwrap();
    assert!(log.len() >= 2);
    assert_eq!(log.last().unwrap().status, Some(204));
    assert!(log[..log.len() - 1].iter().all(|a| a.status != Some(204)));
    assert!(log.iter().any(|a| a.error.is_some()));

    // Bodies: the envelope with the job as it ended; callback URLs kept their query.
    for r in got.iter().filter(|r| r.answered == 204) {
        let body: NoticeBody = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body.kind, WebhookEvent::JobCompleted);
        assert_eq!(body.data.result, Some(json!({ "n": 1 })));
        assert!(jobs.contains(&body.data.id));
    }
    let subscription: Page<DeliveryView> = api
        .ok(
            Method::GET,
            &format!("/v1/webhooks/{}/deliveries?limit=100", hook.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(subscription.items.len(), 60);
}

/// Without an allow-list, loopback and private targets are refused — by IP literal and
/// by a name resolving to loopback — and the receiver never hears a thing. The refusal
/// is final (dead, with the reason); a replay after an operator allows it would work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_loopback_unless_allowed() {
    let t = TestApp::spawn().await;
    let api = t.client();
    let rx = Receiver::start(0).await;
    // A callback_url needs the tenant's callback secret first.
    let p = api
        .problem(
            Method::POST,
            "/v1/queues/q/jobs",
            Some(json!({ "payload": 0, "callback_url": rx.url("/x") })),
            409,
            "callback_secret_missing",
        )
        .await;
    assert!(p.detail.contains("/v1/callback-secret"), "{}", p.detail);
    api.problem(
        Method::POST,
        "/v1/queues/q/jobs/batch",
        Some(json!({ "jobs": [{ "payload": 0 }, { "payload": 1, "callback_url": rx.url("/x") }] })),
        409,
        "callback_secret_missing",
    )
    .await;
    let _: CallbackSecretView = api
        .ok(Method::POST, "/v1/callback-secret", None, StatusCode::OK)
        .await;
    let by_ip = run_job(
        &api,
        "q",
        json!({ "payload": 1, "callback_url": rx.url("/x") }),
    )
    .await;
    let by_name = run_job(
        &api,
        "q",
        json!({ "payload": 2,
                "callback_url": format!("http://localhost:{}/y", rx.addr.port()) }),
    )
    .await;
    let metadata = run_job(
        &api,
        "q",
        json!({ "payload": 3, "callback_url": "http://169.254.169.254/latest/meta-data" }),
    )
    .await;
    for job in [by_ip, by_name, metadata] {
        let d = eventually(10, || {
            let api = api.clone();
            let job = job.clone();
            async move {
                let ds = job_deliveries(&api, &job).await;
                ds.into_iter().find(|d| d.state == DeliveryState::Dead)
            }
        })
        .await;
        let error = d.last_error.unwrap();
        assert!(error.contains("SSRF guard"), "{error}");
        assert_eq!(d.attempts, 1, "a refusal is final, not retried");
    }
    assert!(rx.received().is_empty(), "nothing reached the receiver");
}

/// Subscriptions: create (secret shown once), read (never the secret), filter by queue,
/// rotate (both secrets sign during the grace period), delete; roles and tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_rotation_roles_and_isolation() {
    let t = TestApp::spawn_with(fast).await;
    let api = t.client();
    let rx = Receiver::start(0).await;
    let hook: WebhookView = api
        .ok(
            Method::POST,
            "/v1/webhooks",
            Some(
                json!({ "url": rx.url("/h"), "events": ["job.completed", "job.completed"],
                         "queues": ["billing"] }),
            ),
            StatusCode::CREATED,
        )
        .await;
    let old = hook.secret.clone().unwrap();
    assert!(old.starts_with("whsec_"));
    assert_eq!(
        hook.events,
        vec![WebhookEvent::JobCompleted],
        "deduplicated"
    );
    let got: WebhookView = api
        .ok(
            Method::GET,
            &format!("/v1/webhooks/{}", hook.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(got.secret, None);
    let (_, raw) = api.call(Method::GET, "/v1/webhooks", None).await;
    assert!(!raw.to_string().contains(&old), "lists never show secrets");

    // Queue filter: a job in another queue is not notified.
    let other_queue = run_job(&api, "emails", json!({ "payload": 1 })).await;
    assert!(job_deliveries(&api, &other_queue).await.is_empty());

    // Rotate: deliveries carry two signatures; each secret alone verifies.
    let rotated: WebhookView = api
        .ok(
            Method::POST,
            &format!("/v1/webhooks/{}/rotate-secret", hook.id),
            None,
            StatusCode::OK,
        )
        .await;
    let new = rotated.secret.clone().unwrap();
    assert_ne!(new, old);
    assert!(rotated.previous_secret_valid_until.is_some());
    rx.trust(&old); // a receiver that has not switched yet still verifies
    let job = run_job(&api, "billing", json!({ "payload": 2 })).await;
    let r = eventually(10, || {
        let rx = &rx;
        async move { rx.received().into_iter().next() }
    })
    .await;
    assert!(r.verified);
    assert_eq!(r.signatures, 2);
    assert_eq!(job_deliveries(&api, &job).await.len(), 1);

    // Roles: a worker key reads but may not manage subscriptions.
    let worker = t.tenant_key("default", "worker").await;
    worker
        .problem(
            Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": rx.url("/w"), "events": ["job.dead"] })),
            403,
            "forbidden",
        )
        .await;
    worker
        .problem(Method::POST, "/v1/callback-secret", None, 403, "forbidden")
        .await;

    // Another tenant sees nothing of it.
    let other = t.tenant_key("other", "admin").await;
    for path in [
        format!("/v1/webhooks/{}", hook.id),
        format!("/v1/webhooks/{}/deliveries", hook.id),
        format!("/v1/jobs/{job}/deliveries"),
    ] {
        other
            .problem(Method::GET, &path, None, 404, "not_found")
            .await;
    }
    let d = &job_deliveries(&api, &job).await[0];
    other
        .problem(
            Method::GET,
            &format!("/v1/deliveries/{}", d.id),
            None,
            404,
            "not_found",
        )
        .await;
    other
        .problem(
            Method::POST,
            &format!("/v1/deliveries/{}/retry", d.id),
            None,
            404,
            "not_found",
        )
        .await;
    other
        .problem(
            Method::DELETE,
            &format!("/v1/webhooks/{}", hook.id),
            None,
            404,
            "not_found",
        )
        .await;
    let (s, list) = other.call(Method::GET, "/v1/webhooks", None).await;
    assert_eq!((s, list), (StatusCode::OK, json!({ "items": [] })));

    // Bad input.
    for body in [
        json!({ "url": "ftp://x.example/", "events": ["job.completed"] }),
        json!({ "url": "https://x.example/", "events": [] }),
        json!({ "url": "https://x.example/", "events": ["job.exploded"] }),
        json!({ "url": "https://user:pw@x.example/", "events": ["job.dead"] }),
        json!({ "url": "https://x.example/", "events": ["job.dead"], "queues": [] }),
        json!({ "url": "https://x.example/", "events": ["job.dead"], "secret": "mine" }),
    ] {
        let (s, b) = api.call(Method::POST, "/v1/webhooks", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
    api.problem(
        Method::GET,
        "/v1/deliveries/not-an-id",
        None,
        404,
        "not_found",
    )
    .await;

    // Delete: gone.
    let (s, _) = api
        .call(Method::DELETE, &format!("/v1/webhooks/{}", hook.id), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    api.problem(
        Method::GET,
        &format!("/v1/webhooks/{}", hook.id),
        None,
        404,
        "not_found",
    )
    .await;
}

/// A receiver that never acknowledges: the schedule runs out and the delivery is dead;
/// the job's other notices are unaffected. Replay sends it again under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_deliveries_replay_with_the_same_id() {
    let t = TestApp::spawn_with(|app| {
        app.with_webhooks(
            WebhookSettings {
                retry_schedule_ms: RetrySchedule(vec![50, 50]),
                breaker: Breaker {
                    threshold: 100,
                    ..Breaker::default()
                },
                ..WebhookSettings::default()
            },
            "127.0.0.0/8".parse().unwrap(),
        )
        .unwrap()
    })
    .await;
    let api = t.client();
    let rx = Receiver::start(0).await;
    let secret: CallbackSecretView = api
        .ok(Method::POST, "/v1/callback-secret", None, StatusCode::OK)
        .await;
    rx.trust(&secret.secret);
    rx.answer_always(Some(503));
    let job = run_job(
        &api,
        "q",
        json!({ "payload": 1, "callback_url": rx.url("/cb") }),
    )
    .await;
    let dead = eventually(10, || {
        let api = api.clone();
        let job = job.clone();
        async move {
            job_deliveries(&api, &job)
                .await
                .into_iter()
                .find(|d| d.state == DeliveryState::Dead)
        }
    })
    .await;
    assert_eq!(dead.attempts, 3, "the first attempt and two retries");
    assert_eq!(dead.last_status, Some(503));
    assert_eq!(rx.received().len(), 3);

    rx.answer_always(None);
    let replayed: DeliveryView = api
        .ok(
            Method::POST,
            &format!("/v1/deliveries/{}/retry", dead.id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(replayed.state, DeliveryState::Pending);
    let delivered = eventually(10, || {
        let api = api.clone();
        let id = dead.id.clone();
        async move {
            let d: DeliveryView = api
                .ok(
                    Method::GET,
                    &format!("/v1/deliveries/{id}"),
                    None,
                    StatusCode::OK,
                )
                .await;
            (d.state == DeliveryState::Delivered).then_some(d)
        }
    })
    .await;
    assert_eq!(delivered.attempts, 4);
    let ids: HashSet<String> = rx.received().into_iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        HashSet::from([dead.id.to_string()]),
        "one webhook-id throughout"
    );
}

/// The trace context of a job's enqueue (W3C `traceparent`) is sent with its notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_carry_the_jobs_traceparent() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let t = TestApp::spawn_with(fast).await;
    let api = t.client();
    let rx = Receiver::start(0).await;
    let secret: CallbackSecretView = api
        .ok(Method::POST, "/v1/callback-secret", None, StatusCode::OK)
        .await;
    rx.trust(&secret.secret);
    let r = api
        .http
        .post(format!("{}/v1/queues/traced/jobs", api.base))
        .bearer_auth(api.key.as_ref().unwrap())
        .header("traceparent", TP)
        .json(&json!({ "payload": 1, "callback_url": rx.url("/t") }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let leased = api.lease("traced", 1, 1_000, None).await;
    let (s, _) = api.complete(&leased[0], json!(null)).await;
    assert_eq!(s, StatusCode::OK);
    let got = eventually(10, || {
        let rx = &rx;
        async move { rx.received().into_iter().next() }
    })
    .await;
    assert!(got.verified);
    assert_eq!(got.traceparent.as_deref(), Some(TP));
}
