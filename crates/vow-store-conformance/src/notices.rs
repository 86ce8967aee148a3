//! Conformance cases of completion notices: the outbox written with the job's
//! transition, claiming and recording deliveries, the breaker, subscriptions and secrets.

use serde_json::{json, Value};
use vow_core::api::{DeliveryState, DeliveryView, WebhookEvent};
use vow_core::notice::{Breaker, EndpointHealth, NoticeBody};
use vow_core::{JobId, JobState, TenantId, Timestamp, WebhookId};
use vow_store::*;

use crate::fixtures::*;

const HOLD_MS: u64 = 30_000;

async fn subscribe(
    store: &DynStore,
    tenant: &TenantId,
    url: &str,
    events: &[WebhookEvent],
    queues: Option<&[&str]>,
) -> WebhookId {
    let id = WebhookId::generate();
    let view = store
        .webhook_insert(&WebhookInsert {
            tenant_id: tenant.clone(),
            id: id.clone(),
            url: url.into(),
            events: events.to_vec(),
            queues: queues.map(|qs| qs.iter().map(|n| q(n)).collect()),
            secret: format!("whsec_{}", "A".repeat(44)),
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(view.id, id);
    assert!(
        view.secret.is_some(),
        "the creation answer carries the secret"
    );
    id
}

async fn claim(store: &DynStore, now: Timestamp) -> Vec<DeliveryTask> {
    store
        .delivery_claim(&DeliveryClaim {
            now,
            limit: 100,
            hold_ms: HOLD_MS,
            breaker: Breaker::default(),
            per_endpoint: 1_000,
            in_flight: Default::default(),
        })
        .await
        .unwrap()
}

async fn record(store: &DynStore, task: &DeliveryTask, at: Timestamp, next: DeliveryNext) {
    let ok = next == DeliveryNext::Delivered;
    store
        .delivery_record(&DeliveryOutcome {
            id: task.id.clone(),
            attempts_before: task.attempts,
            at,
            status: Some(if ok { 204 } else { 500 }),
            latency_ms: 12,
            error: (!ok).then(|| "HTTP 500".to_owned()),
            response: Some("body".into()),
            next,
            breaker: Breaker::default(),
        })
        .await
        .unwrap();
}

async fn job_deliveries(store: &DynStore, tenant: &TenantId, job: &JobId) -> Vec<DeliveryView> {
    store
        .delivery_list(&DeliveryList {
            tenant_id: tenant.clone(),
            webhook_id: None,
            job_id: Some(job.clone()),
            limit: 100,
            before: None,
        })
        .await
        .unwrap()
        .items
}

/// Runs one job of `queue` through lease and complete at `now`.
async fn run_to_completion(
    store: &DynStore,
    tenant: &TenantId,
    queue: &str,
    req: Value,
    now: Timestamp,
) -> JobId {
    let id = insert(store, tenant, queue, vec![req], now).await[0]
        .job
        .id
        .clone();
    let leased = lease(store, tenant, queue, 1, None, now).await;
    assert_eq!(leased[0].id, id);
    let done = store
        .job_ack_many(JobAckMany {
            tenant_id: tenant.clone(),
            items: vec![AckItem::Complete {
                id: id.clone(),
                lease_id: leased[0].lease_id.clone().unwrap(),
                result: Some(json!({ "paid": 42 })),
            }],
            now,
        })
        .await
        .unwrap();
    assert!(done[0].is_ok());
    id
}

/// A terminal transition writes its notices in the same transaction: one for the job's
/// `callback_url` and one per matching subscription of the job's tenant (event and queue
/// filters honoured); `job.retrying` only for subscriptions that ask for it. The body is
/// the Standard Webhooks envelope of the job after the transition.
pub async fn outbox_rows_come_with_transitions(store: DynStore) {
    let a = tenant(&store, "a").await;
    let b = tenant(&store, "b").await;
    let all = subscribe(
        &store,
        &a,
        "https://all.example/hook",
        &[
            WebhookEvent::JobCompleted,
            WebhookEvent::JobDead,
            WebhookEvent::JobRetrying,
        ],
        None,
    )
    .await;
    let only_q2 = subscribe(
        &store,
        &a,
        "https://q2.example/hook",
        &[WebhookEvent::JobCompleted],
        Some(&["q2"]),
    )
    .await;
    let cancels = subscribe(
        &store,
        &a,
        "https://cancels.example/hook",
        &[WebhookEvent::JobCancelled],
        None,
    )
    .await;
    let other_tenant = subscribe(
        &store,
        &b,
        "https://b.example/hook",
        &WebhookEvent::ALL,
        None,
    )
    .await;

    // Nothing is due before a job ends.
    let pending = insert_one(&store, &a, "idle", T0).await;
    assert!(job_deliveries(&store, &a, &pending.id).await.is_empty());

    // Completed in q, with a callback_url: the callback and the catch-all subscription.
    let done = run_to_completion(
        &store,
        &a,
        "q",
        json!({ "payload": 1, "callback_url": "https://caller.example/done?x=1",
                "metadata": { "order": 7 } }),
        T0,
    )
    .await;
    let ds = job_deliveries(&store, &a, &done).await;
    assert_eq!(ds.len(), 2, "{ds:?}");
    let callback = ds.iter().find(|d| d.webhook_id.is_none()).unwrap();
    assert_eq!(callback.url, "https://caller.example/done?x=1");
    let sub = ds.iter().find(|d| d.webhook_id.is_some()).unwrap();
    assert_eq!(sub.webhook_id.as_ref(), Some(&all));
    for d in &ds {
        assert_eq!(d.event, WebhookEvent::JobCompleted);
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.job_id, done);
        assert_eq!(d.next_attempt_at, Some(T0));
        assert_eq!(d.created_at, T0);
    }
    assert_ne!(ds[0].id, ds[1].id, "one webhook-id per target");

    // Completed in q2: the queue-filtered subscription joins in.
    let done2 = run_to_completion(&store, &a, "q2", json!({ "payload": 2 }), T0).await;
    let mut hooks: Vec<_> = job_deliveries(&store, &a, &done2)
        .await
        .into_iter()
        .map(|d| d.webhook_id.unwrap())
        .collect();
    hooks.sort();
    let mut want = vec![all.clone(), only_q2.clone()];
    want.sort();
    assert_eq!(hooks, want);

    // A retried failure: job.retrying to the subscription that asked, not the callback.
    let flaky = insert(
        &store,
        &a,
        "q",
        vec![
            json!({ "payload": 3, "max_attempts": 2, "callback_url": "https://caller.example/f" }),
        ],
        T0,
    )
    .await[0]
        .job
        .clone();
    let leased = lease(&store, &a, "q", 1, None, T0).await;
    let fail = |lease_id| AckItem::Fail {
        id: flaky.id.clone(),
        lease_id,
        message: "boom".into(),
        code: None,
        retryable: true,
        retry_after_ms: Some(0),
    };
    store
        .job_ack_many(JobAckMany {
            tenant_id: a.clone(),
            items: vec![fail(leased[0].lease_id.clone().unwrap())],
            now: T0,
        })
        .await
        .unwrap();
    let ds = job_deliveries(&store, &a, &flaky.id).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(
        (ds[0].event, ds[0].webhook_id.as_ref()),
        (WebhookEvent::JobRetrying, Some(&all))
    );
    // Second attempt fails too: dead, to the callback and the subscription.
    store.job_promote_due(T0.plus_ms(1)).await.unwrap();
    let leased = lease(&store, &a, "q", 1, None, T0.plus_ms(1)).await;
    assert_eq!(leased[0].id, flaky.id);
    store
        .job_ack_many(JobAckMany {
            tenant_id: a.clone(),
            items: vec![fail(leased[0].lease_id.clone().unwrap())],
            now: T0.plus_ms(1),
        })
        .await
        .unwrap();
    let dead: Vec<_> = job_deliveries(&store, &a, &flaky.id)
        .await
        .into_iter()
        .filter(|d| d.event == WebhookEvent::JobDead)
        .collect();
    assert_eq!(dead.len(), 2, "callback and subscription hear of the death");

    // Cancelled: the callback and the cancel subscription.
    let to_cancel = insert(
        &store,
        &a,
        "q",
        vec![json!({ "payload": 4, "callback_url": "https://caller.example/c" })],
        T0,
    )
    .await[0]
        .job
        .clone();
    store
        .job_cancel(&JobCancel {
            tenant_id: a.clone(),
            id: to_cancel.id.clone(),
            now: T0,
        })
        .await
        .unwrap();
    let ds = job_deliveries(&store, &a, &to_cancel.id).await;
    assert_eq!(ds.len(), 2);
    assert!(ds.iter().all(|d| d.event == WebhookEvent::JobCancelled));
    assert!(ds.iter().any(|d| d.webhook_id.as_ref() == Some(&cancels)));

    // Tenant b's subscription heard nothing of tenant a's jobs; b sees none of a's.
    let b_list = store
        .delivery_list(&DeliveryList {
            tenant_id: b.clone(),
            webhook_id: Some(other_tenant.clone()),
            job_id: None,
            limit: 100,
            before: None,
        })
        .await
        .unwrap();
    assert!(b_list.items.is_empty());
    assert!(job_deliveries(&store, &b, &done).await.is_empty());

    // Bodies: the envelope of the job as it ended, without its payload.
    let tasks = claim(&store, T0).await;
    let task = tasks
        .iter()
        .find(|t| t.job_id == done && t.webhook_id.is_none())
        .expect("the callback delivery is due");
    let body: NoticeBody = serde_json::from_str(&task.body).unwrap();
    assert_eq!(body.kind, WebhookEvent::JobCompleted);
    assert_eq!(body.data.id, done);
    assert_eq!(body.data.state, JobState::Completed);
    assert_eq!(body.data.result, Some(json!({ "paid": 42 })));
    assert_eq!(body.data.metadata, json!({ "order": 7 }));
    assert!(!task.body.contains("\"payload\""));
    assert_eq!(task.endpoint, "https://caller.example");
    assert_eq!(task.tenant_id, a);
    assert_eq!(task.traceparent, None);

    // The job's trace context travels with its notices.
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req: vow_core::api::EnqueueRequest =
        serde_json::from_value(json!({ "payload": 5, "callback_url": "https://caller.example/t" }))
            .unwrap();
    let traced = req
        .validate(
            &vow_core::limits::Limits::default(),
            T0,
            None,
            Some(TP.to_owned()),
        )
        .unwrap();
    let traced_id = traced.id.clone();
    store
        .job_insert_many(JobInsertMany {
            tenant_id: a.clone(),
            queue: q("traced"),
            jobs: vec![traced],
            now: T0,
        })
        .await
        .unwrap();
    let leased = lease(&store, &a, "traced", 1, None, T0).await;
    store
        .job_ack_many(JobAckMany {
            tenant_id: a.clone(),
            items: vec![AckItem::Complete {
                id: traced_id.clone(),
                lease_id: leased[0].lease_id.clone().unwrap(),
                result: None,
            }],
            now: T0,
        })
        .await
        .unwrap();
    let tasks = claim(&store, T0).await;
    let task = tasks
        .iter()
        .find(|t| t.job_id == traced_id && t.webhook_id.is_none())
        .unwrap();
    assert_eq!(task.traceparent.as_deref(), Some(TP));
}

/// Claims hold deliveries while they are sent; outcomes move them on (delivered, retry
/// at a time, dead), log each attempt, and a sender that dies leaves its delivery to be
/// claimed again, with the same id, once the hold runs out.
pub async fn claim_hold_and_record(store: DynStore) {
    let t = tenant(&store, "t").await;
    let hook = subscribe(
        &store,
        &t,
        "https://r.example/h",
        &[WebhookEvent::JobCompleted],
        None,
    )
    .await;
    let j1 = run_to_completion(&store, &t, "q", json!({ "payload": 1 }), T0).await;
    let j2 = run_to_completion(&store, &t, "q", json!({ "payload": 2 }), T0).await;
    let j3 = run_to_completion(&store, &t, "q", json!({ "payload": 3 }), T0).await;

    assert!(
        claim(&store, T0.plus_ms(-1)).await.is_empty(),
        "nothing is due before it was created"
    );
    let tasks = claim(&store, T0).await;
    assert_eq!(tasks.len(), 3);
    for task in &tasks {
        assert_eq!(task.webhook_id.as_ref(), Some(&hook));
        assert_eq!(task.attempts, 0);
        assert_eq!(task.round_attempts, 0);
        assert_eq!(task.secrets, vec![format!("whsec_{}", "A".repeat(44))]);
    }
    assert!(claim(&store, T0.plus_ms(1)).await.is_empty(), "held");
    let by_job = |j: &JobId| tasks.iter().find(|t| &t.job_id == j).unwrap().clone();

    // j1 delivered.
    record(&store, &by_job(&j1), T0.plus_ms(5), DeliveryNext::Delivered).await;
    // j2 failed, retry in a minute.
    let retry_at = T0.plus_ms(60_000);
    record(
        &store,
        &by_job(&j2),
        T0.plus_ms(5),
        DeliveryNext::RetryAt(retry_at),
    )
    .await;
    // j3's sender dies: nothing recorded.

    let d1 = job_deliveries(&store, &t, &j1).await.remove(0);
    assert_eq!(d1.state, DeliveryState::Delivered);
    assert_eq!(d1.attempts, 1);
    assert_eq!(d1.delivered_at, Some(T0.plus_ms(5)));
    assert_eq!(d1.next_attempt_at, None);
    assert_eq!(d1.last_status, Some(204));
    let d2 = job_deliveries(&store, &t, &j2).await.remove(0);
    assert_eq!(d2.state, DeliveryState::Pending);
    assert_eq!(d2.attempts, 1);
    assert_eq!(d2.next_attempt_at, Some(retry_at));
    assert_eq!(d2.last_status, Some(500));
    assert_eq!(d2.last_error.as_deref(), Some("HTTP 500"));

    // The log, on the single-delivery read.
    let full = store.delivery_get(&t, &d2.id).await.unwrap().unwrap();
    let log = full.log.expect("delivery_get carries the log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].at, T0.plus_ms(5));
    assert_eq!(log[0].status, Some(500));
    assert_eq!(log[0].latency_ms, 12);
    assert_eq!(log[0].response.as_deref(), Some("body"));
    assert!(store.delivery_get(&t, &d2.id).await.unwrap().is_some());
    let other = tenant(&store, "other").await;
    assert!(store.delivery_get(&other, &d2.id).await.unwrap().is_none());

    // After the hold: j3 comes back (same id, nothing recorded); j2 only once due.
    let again = claim(&store, T0.plus_ms(HOLD_MS as i64 + 1)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].id,
        by_job(&j3).id,
        "re-sent under the same webhook-id"
    );
    assert_eq!(again[0].attempts, 0);
    let due = claim(&store, retry_at).await;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job_id, j2);
    assert_eq!((due[0].attempts, due[0].round_attempts), (1, 1));
    record(&store, &due[0], retry_at, DeliveryNext::Delivered).await;

    // A late outcome of the first j3 send (after the re-claim) is logged, and the
    // delivery follows whichever outcome is recorded for the current claim.
    record(
        &store,
        &again[0],
        T0.plus_ms(HOLD_MS as i64 + 2),
        DeliveryNext::Dead,
    )
    .await;
    let d3 = job_deliveries(&store, &t, &j3).await.remove(0);
    assert_eq!(d3.state, DeliveryState::Dead);
    assert_eq!(d3.next_attempt_at, None);
    let stale = DeliveryTask {
        attempts: 0,
        ..by_job(&j3)
    };
    record(
        &store,
        &stale,
        T0.plus_ms(HOLD_MS as i64 + 3),
        DeliveryNext::Delivered,
    )
    .await;
    let d3 = store.delivery_get(&t, &d3.id).await.unwrap().unwrap();
    assert_eq!(
        d3.state,
        DeliveryState::Dead,
        "a stale outcome does not move it"
    );
    assert_eq!(d3.log.unwrap().len(), 2, "but it is logged");

    // Replay: pending, due now, a fresh round; the attempt count goes on.
    let replayed = store
        .delivery_retry(&t, &d3.id, T0.plus_ms(100_000))
        .await
        .unwrap();
    assert_eq!(replayed.state, DeliveryState::Pending);
    assert_eq!(replayed.next_attempt_at, Some(T0.plus_ms(100_000)));
    let task = claim(&store, T0.plus_ms(100_000)).await;
    assert_eq!(task.len(), 1);
    assert_eq!(task[0].id, d3.id);
    assert_eq!(task[0].round_attempts, 0);
    assert!(task[0].attempts >= 1);
    assert!(matches!(
        store.delivery_retry(&other, &d3.id, T0).await,
        Err(StoreError::NotFound)
    ));
}

/// After `threshold` consecutive failures an endpoint is skipped until its cool-down
/// ends, then yields a single probe; a success closes it. Other endpoints (and the same
/// origin of another tenant) are unaffected.
pub async fn breaker_skips_open_endpoints_and_probes(store: DynStore) {
    let t = tenant(&store, "t").await;
    let u = tenant(&store, "u").await;
    let breaker = Breaker::default();
    subscribe(
        &store,
        &t,
        "https://down.example/a",
        &[WebhookEvent::JobCompleted],
        None,
    )
    .await;
    subscribe(
        &store,
        &u,
        "https://down.example/a",
        &[WebhookEvent::JobCompleted],
        None,
    )
    .await;
    let n = breaker.threshold as usize + 3;
    for i in 0..n {
        run_to_completion(&store, &t, "q", json!({ "payload": i }), T0).await;
    }
    run_to_completion(&store, &u, "q", json!({ "payload": 0 }), T0).await;

    // Fail `threshold` of t's deliveries; each retries one second later.
    let tasks = claim(&store, T0).await;
    assert_eq!(tasks.len(), n + 1);
    let (t_tasks, u_tasks): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|x| x.tenant_id == t);
    let retry_at = T0.plus_ms(1_000);
    for task in t_tasks.iter().take(breaker.threshold as usize) {
        record(&store, task, T0, DeliveryNext::RetryAt(retry_at)).await;
    }
    // The rest of t's fail too (they were in flight when the breaker tripped).
    for task in t_tasks.iter().skip(breaker.threshold as usize) {
        record(&store, task, T0, DeliveryNext::RetryAt(retry_at)).await;
    }
    record(&store, &u_tasks[0], T0, DeliveryNext::RetryAt(retry_at)).await;

    // t's endpoint is open: nothing of t's is claimed; u's delivery to the same origin is.
    let mut health = EndpointHealth::default();
    for _ in 0..n {
        health = breaker.on_failure(health, T0);
    }
    let open_until = health.open_until.unwrap();
    assert!(open_until > retry_at);
    let at_retry = claim(&store, retry_at).await;
    assert_eq!(at_retry.len(), 1, "{at_retry:?}");
    assert_eq!(at_retry[0].tenant_id, u);
    record(&store, &at_retry[0], retry_at, DeliveryNext::Delivered).await;
    assert!(claim(&store, open_until.plus_ms(-1)).await.is_empty());

    // Cool-down over: exactly one probe, even across claims.
    let probe = claim(&store, open_until).await;
    assert_eq!(probe.len(), 1, "one probe: {probe:?}");
    assert!(claim(&store, open_until.plus_ms(1)).await.is_empty());
    // The probe succeeds: the endpoint is closed, the rest flows.
    record(
        &store,
        &probe[0],
        open_until.plus_ms(2),
        DeliveryNext::Delivered,
    )
    .await;
    let rest = claim(&store, open_until.plus_ms(3)).await;
    assert_eq!(rest.len(), n - 1);
}

/// Subscriptions: create, read, list, rotate (the previous secret signs during the grace
/// period), delete (pending deliveries become dead); all per tenant.
pub async fn subscriptions_and_secrets(store: DynStore) {
    let t = tenant(&store, "t").await;
    let other = tenant(&store, "other").await;
    let hook = subscribe(
        &store,
        &t,
        "https://r.example/h",
        &[WebhookEvent::JobCompleted, WebhookEvent::JobDead],
        Some(&["q"]),
    )
    .await;
    let got = store.webhook_get(&t, &hook).await.unwrap().unwrap();
    assert_eq!(got.url, "https://r.example/h");
    assert_eq!(
        got.events,
        vec![WebhookEvent::JobCompleted, WebhookEvent::JobDead]
    );
    assert_eq!(got.queues, Some(vec![q("q")]));
    assert_eq!(got.created_at, T0);
    assert_eq!(got.secret, None, "reads never show the secret");
    assert!(store.webhook_get(&other, &hook).await.unwrap().is_none());
    let second = subscribe(&store, &t, "https://r2.example/", &WebhookEvent::ALL, None).await;
    let list = store.webhook_list(&t).await.unwrap();
    assert_eq!(
        list.iter().map(|w| w.id.clone()).collect::<Vec<_>>(),
        vec![hook.clone(), second.clone()]
    );
    assert!(list.iter().all(|w| w.secret.is_none()));
    assert!(store.webhook_list(&other).await.unwrap().is_empty());

    // Rotation: both secrets sign until the grace period ends.
    let old = format!("whsec_{}", "A".repeat(44));
    let new = format!("whsec_{}", "B".repeat(44));
    let rotated = store
        .webhook_secret_rotate(&SecretRotate {
            tenant_id: t.clone(),
            webhook_id: Some(hook.clone()),
            secret: new.clone(),
            now: T0,
            grace_ms: 1_000,
        })
        .await
        .unwrap();
    assert_eq!(rotated.secret.as_deref(), Some(new.as_str()));
    assert_eq!(rotated.previous_secret_valid_until, Some(T0.plus_ms(1_000)));
    assert!(matches!(
        store
            .webhook_secret_rotate(&SecretRotate {
                tenant_id: other.clone(),
                webhook_id: Some(hook.clone()),
                secret: new.clone(),
                now: T0,
                grace_ms: 1_000,
            })
            .await,
        Err(StoreError::NotFound)
    ));
    run_to_completion(&store, &t, "q", json!({ "payload": 1 }), T0).await;
    let during = claim(&store, T0.plus_ms(999)).await;
    let mine = during
        .iter()
        .find(|d| d.webhook_id.as_ref() == Some(&hook))
        .unwrap();
    assert_eq!(mine.secrets, vec![new.clone(), old.clone()]);
    for d in &during {
        record(
            &store,
            d,
            T0.plus_ms(999),
            DeliveryNext::RetryAt(T0.plus_ms(1_000)),
        )
        .await;
    }
    let after = claim(&store, T0.plus_ms(1_000)).await;
    let mine = after
        .iter()
        .find(|d| d.webhook_id.as_ref() == Some(&hook))
        .unwrap();
    assert_eq!(mine.secrets, vec![new.clone()], "the grace period is over");
    for d in &after {
        record(
            &store,
            d,
            T0.plus_ms(1_000),
            DeliveryNext::RetryAt(T0.plus_ms(5_000)),
        )
        .await;
    }

    // Delete while a send is in flight: gone for reads; its pending deliveries are dead,
    // nothing more is sent, and the late outcome of the send in flight changes nothing.
    assert!(matches!(
        store.webhook_delete(&other, &hook, T0).await,
        Err(StoreError::NotFound)
    ));
    let in_flight = claim(&store, T0.plus_ms(5_000)).await;
    let in_flight = in_flight
        .iter()
        .find(|d| d.webhook_id.as_ref() == Some(&hook))
        .unwrap();
    store
        .webhook_delete(&t, &hook, T0.plus_ms(5_001))
        .await
        .unwrap();
    record(
        &store,
        in_flight,
        T0.plus_ms(5_002),
        DeliveryNext::RetryAt(T0.plus_ms(6_000)),
    )
    .await;
    assert!(store.webhook_get(&t, &hook).await.unwrap().is_none());
    let ds = store
        .delivery_list(&DeliveryList {
            tenant_id: t.clone(),
            webhook_id: Some(hook.clone()),
            job_id: None,
            limit: 10,
            before: None,
        })
        .await
        .unwrap()
        .items;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].state, DeliveryState::Dead);
    assert!(
        matches!(
            store.delivery_retry(&t, &ds[0].id, T0.plus_ms(5_003)).await,
            Err(StoreError::Conflict(_))
        ),
        "nothing to replay it to"
    );
    let later = claim(&store, T0.plus_ms(60_000)).await;
    assert!(later.iter().all(|d| d.webhook_id.as_ref() != Some(&hook)));
    assert!(matches!(
        store.webhook_delete(&t, &hook, T0).await,
        Err(StoreError::NotFound)
    ));
}

/// The callback secret: created on first claim if the tenant has none, rotated with a
/// grace period, per tenant.
pub async fn callback_secret_rotation(store: DynStore) {
    let t = tenant(&store, "t").await;
    let u = tenant(&store, "u").await;
    assert!(!store.callback_secret_exists(&t).await.unwrap());
    run_to_completion(
        &store,
        &t,
        "q",
        json!({ "payload": 1, "callback_url": "https://caller.example/x" }),
        T0,
    )
    .await;
    // The server refuses a callback_url until the tenant has a secret; a store that
    // meets such a delivery anyway signs it with a fresh secret rather than send it
    // unsigned.
    let first = claim(&store, T0).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].secrets.len(),
        1,
        "a secret is made when none exists"
    );
    assert!(store.callback_secret_exists(&t).await.unwrap());
    assert!(!store.callback_secret_exists(&u).await.unwrap());
    let made = first[0].secrets[0].clone();
    assert!(made.starts_with("whsec_"));
    record(&store, &first[0], T0, DeliveryNext::RetryAt(T0.plus_ms(10))).await;

    let rotated = store
        .callback_secret_rotate(&SecretRotate {
            tenant_id: t.clone(),
            webhook_id: None,
            secret: format!("whsec_{}", "C".repeat(44)),
            now: T0.plus_ms(10),
            grace_ms: 86_400_000,
        })
        .await
        .unwrap();
    assert_eq!(rotated.secret, format!("whsec_{}", "C".repeat(44)));
    assert_eq!(
        rotated.previous_secret_valid_until,
        Some(T0.plus_ms(10 + 86_400_000))
    );
    let second = claim(&store, T0.plus_ms(10)).await;
    assert_eq!(
        second[0].secrets,
        vec![format!("whsec_{}", "C".repeat(44)), made.clone()]
    );

    // Another tenant's first rotation has no previous secret; t's is untouched.
    let fresh = store
        .callback_secret_rotate(&SecretRotate {
            tenant_id: u.clone(),
            webhook_id: None,
            secret: format!("whsec_{}", "D".repeat(44)),
            now: T0,
            grace_ms: 1_000,
        })
        .await
        .unwrap();
    assert_eq!(fresh.previous_secret_valid_until, None);
    assert!(store.callback_secret_exists(&u).await.unwrap());
    record(
        &store,
        &second[0],
        T0.plus_ms(10),
        DeliveryNext::RetryAt(T0.plus_ms(20)),
    )
    .await;
    let third = claim(&store, T0.plus_ms(20)).await;
    assert_eq!(third[0].secrets[0], format!("whsec_{}", "C".repeat(44)));
}

/// Listing deliveries: newest first, in pages, by subscription or by job.
pub async fn delivery_pages(store: DynStore) {
    let t = tenant(&store, "t").await;
    let hook = subscribe(
        &store,
        &t,
        "https://r.example/h",
        &[WebhookEvent::JobCompleted],
        None,
    )
    .await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(run_to_completion(&store, &t, "q", json!({ "payload": i }), T0).await);
    }
    let page = |before| {
        let store = store.clone();
        let (t, hook) = (t.clone(), hook.clone());
        async move {
            store
                .delivery_list(&DeliveryList {
                    tenant_id: t,
                    webhook_id: Some(hook),
                    job_id: None,
                    limit: 2,
                    before,
                })
                .await
                .unwrap()
        }
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let p = page(before.clone()).await;
        assert!(p.items.len() <= 2);
        seen.extend(p.items.iter().map(|d| d.job_id.clone()));
        match p.next_cursor {
            Some(c) => before = Some(c.parse().unwrap()),
            None => break,
        }
    }
    jobs.reverse();
    assert_eq!(seen, jobs, "newest first, every one once");
}

/// The concurrency cap: a claim takes at most `per_endpoint` deliveries of one endpoint,
/// fewer by those the claimer still has in flight; other endpoints are not held back.
pub async fn per_endpoint_cap(store: DynStore) {
    let t = tenant(&store, "t").await;
    for i in 0..5 {
        run_to_completion(
            &store,
            &t,
            "q",
            json!({ "payload": i, "callback_url": format!("https://busy.example/{i}") }),
            T0,
        )
        .await;
    }
    run_to_completion(
        &store,
        &t,
        "q",
        json!({ "payload": 9, "callback_url": "https://calm.example/" }),
        T0,
    )
    .await;
    let claim_capped = |in_flight: usize, now: Timestamp| {
        let store = store.clone();
        let t = t.clone();
        async move {
            let mut busy = std::collections::HashMap::new();
            if in_flight > 0 {
                busy.insert((t, "https://busy.example".to_owned()), in_flight);
            }
            store
                .delivery_claim(&DeliveryClaim {
                    now,
                    limit: 100,
                    hold_ms: HOLD_MS,
                    breaker: Breaker::default(),
                    per_endpoint: 2,
                    in_flight: busy,
                })
                .await
                .unwrap()
        }
    };
    let first = claim_capped(0, T0).await;
    let busy = first
        .iter()
        .filter(|d| d.endpoint == "https://busy.example")
        .count();
    assert_eq!((first.len(), busy), (3, 2), "{first:?}");
    let second = claim_capped(1, T0).await;
    assert_eq!(second.len(), 1, "one slot left: {second:?}");
    assert_eq!(second[0].endpoint, "https://busy.example");
    assert!(claim_capped(2, T0).await.is_empty(), "saturated");
}

/// A backlog behind a receiver whose breaker is open never hides another receiver's
/// deliveries, however long the backlog and however small the claim.
pub async fn an_open_breaker_backlog_does_not_block_others(store: DynStore) {
    let t = tenant(&store, "t").await;
    let breaker = Breaker::default();
    for i in 0..30 {
        run_to_completion(
            &store,
            &t,
            "q",
            json!({ "payload": i, "callback_url": format!("https://down.example/{i}") }),
            T0,
        )
        .await;
    }
    run_to_completion(
        &store,
        &t,
        "q",
        json!({ "payload": "late", "callback_url": "https://up.example/" }),
        T0.plus_ms(1),
    )
    .await;
    // Every down delivery fails once: the breaker opens, they are due again at once.
    let all = claim(&store, T0.plus_ms(1)).await;
    assert_eq!(all.len(), 31);
    let retry_at = T0.plus_ms(2);
    for task in &all {
        record(&store, task, T0.plus_ms(1), DeliveryNext::RetryAt(retry_at)).await;
    }
    assert!(breaker.threshold < 30);
    let small = store
        .delivery_claim(&DeliveryClaim {
            now: retry_at,
            limit: 1,
            hold_ms: HOLD_MS,
            breaker,
            per_endpoint: 1_000,
            in_flight: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(small[0].endpoint, "https://up.example");
}

/// Retention covers notices too: settled deliveries past their retention go with their
/// log (delivered by the `completed` cut, dead by the `dead` cut); pending ones stay,
/// however old; the limit bounds a call.
pub async fn settled_deliveries_are_pruned_with_their_log(store: DynStore) {
    let t = tenant(&store, "t").await;
    subscribe(&store, &t, "https://r.example/h", &WebhookEvent::ALL, None).await;
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(run_to_completion(&store, &t, "q", json!({ "payload": i }), T0).await);
    }
    let tasks = claim(&store, T0).await;
    assert_eq!(tasks.len(), 4);
    let by_job = |j: &JobId| tasks.iter().find(|d| &d.job_id == j).unwrap().clone();
    record(&store, &by_job(&jobs[0]), T0, DeliveryNext::Delivered).await;
    record(&store, &by_job(&jobs[1]), T0, DeliveryNext::Delivered).await;
    record(&store, &by_job(&jobs[2]), T0, DeliveryNext::Dead).await;
    record(
        &store,
        &by_job(&jobs[3]),
        T0,
        DeliveryNext::RetryAt(T0.plus_ms(1)),
    )
    .await;

    let prune = |completed: Option<Timestamp>, dead: Option<Timestamp>, limit| {
        let store = store.clone();
        async move {
            store
                .job_prune(&JobPrune {
                    completed_before: completed,
                    cancelled_before: None,
                    dead_before: dead,
                    limit,
                })
                .await
                .unwrap()
        }
    };
    // Cut-offs at or before their creation: nothing goes.
    assert_eq!(prune(Some(T0), Some(T0), 100).await.deliveries, 0);
    // Delivered ones past the cut, one per call with limit 1 (the jobs are younger).
    let later = T0.plus_ms(1);
    let first = prune(Some(later), None, 1).await;
    assert_eq!(
        (first.jobs, first.deliveries),
        (1, 0),
        "the job took the one slot"
    );
    let again = prune(Some(later), None, 100).await;
    assert_eq!(again.deliveries, 2, "both delivered notices");
    let d0 = &job_deliveries(&store, &t, &jobs[0]).await;
    assert!(d0.is_empty());
    // Dead ones by the dead cut; the pending one stays.
    let dead = prune(None, Some(later), 100).await;
    assert_eq!(dead.deliveries, 1);
    let left = job_deliveries(&store, &t, &jobs[3]).await;
    assert_eq!(left.len(), 1, "a pending notice is never pruned");
    assert_eq!(left[0].state, DeliveryState::Pending);
    assert!(
        store
            .delivery_get(&t, &by_job(&jobs[2]).id)
            .await
            .unwrap()
            .is_none(),
        "its log went with it"
    );
}
