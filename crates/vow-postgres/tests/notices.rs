//! Completion notices with several nodes on one PostgreSQL: concurrent claims never hand
//! out the same delivery twice, and a half-open endpoint yields exactly one probe.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use vow_core::api::WebhookEvent;
use vow_core::notice::Breaker;
use vow_core::{TenantId, Timestamp, WebhookId};
use vow_postgres::testing::TestDb;
use vow_postgres::PgStore;
use vow_store::*;
use vow_store_conformance::fixtures::{insert, lease, tenant, DynStore, T0};

async fn node(db: &TestDb) -> DynStore {
    let url = format!("{}?pool_size=4", db.url);
    Arc::new(PgStore::connect(&url).await.unwrap())
}

/// `n` completed jobs of a tenant subscribed to completions at `url`.
async fn completed(store: &DynStore, t: &TenantId, url: &str, n: usize) {
    store
        .webhook_insert(&WebhookInsert {
            tenant_id: t.clone(),
            id: WebhookId::generate(),
            url: url.into(),
            events: vec![WebhookEvent::JobCompleted],
            queues: None,
            secret: format!("whsec_{}", "A".repeat(44)),
            now: T0,
        })
        .await
        .unwrap();
    let reqs = (0..n).map(|i| json!({ "payload": i })).collect();
    insert(store, t, "q", reqs, T0).await;
    let jobs = lease(store, t, "q", n as u32, None, T0).await;
    let items = jobs
        .iter()
        .map(|j| AckItem::Complete {
            id: j.id.clone(),
            lease_id: j.lease_id.clone().unwrap(),
            result: None,
        })
        .collect();
    let out = store
        .job_ack_many(JobAckMany {
            tenant_id: t.clone(),
            items,
            now: T0,
        })
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok));
}

fn claim_at(now: Timestamp, limit: usize) -> DeliveryClaim {
    DeliveryClaim {
        now,
        limit,
        hold_ms: 30_000,
        breaker: Breaker::default(),
        per_endpoint: 1_000,
        in_flight: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_two_nodes_never_share_a_delivery() {
    let db = TestDb::fresh().await;
    let (a, b) = (node(&db).await, node(&db).await);
    let t = tenant(&a, "t").await;
    completed(&a, &t, "https://r.example/h", 200).await;
    let claimer = |store: DynStore| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let got = store.delivery_claim(&claim_at(T0, 7)).await.unwrap();
                if got.is_empty() {
                    break ids;
                }
                ids.extend(got.into_iter().map(|d| d.id));
            }
        })
    };
    let runs = [
        claimer(a.clone()),
        claimer(b.clone()),
        claimer(a),
        claimer(b),
    ];
    let mut all = Vec::new();
    for r in runs {
        all.extend(r.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every delivery claimed");
    assert_eq!(distinct.len(), 200, "none claimed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_endpoint_yields_one_probe_across_nodes() {
    let db = TestDb::fresh().await;
    let (a, b) = (node(&db).await, node(&db).await);
    let breaker = Breaker::default();
    // Several tenants, each with its own (per-tenant) endpoint health, all tripped.
    let per_tenant = breaker.threshold as usize + 5;
    let mut tenants = Vec::new();
    for i in 0..6 {
        let t = tenant(&a, &format!("t{i}")).await;
        completed(&a, &t, "https://down.example/h", per_tenant).await;
        tenants.push(t);
    }
    let first = a.delivery_claim(&claim_at(T0, 1_000)).await.unwrap();
    assert_eq!(first.len(), 6 * per_tenant);
    for t in &tenants {
        let mine = first.iter().filter(|d| &d.tenant_id == t);
        for d in mine.take(breaker.threshold as usize) {
            a.delivery_record(&DeliveryOutcome {
                id: d.id.clone(),
                attempts_before: d.attempts,
                at: T0,
                status: Some(500),
                latency_ms: 1,
                error: Some("HTTP 500".into()),
                response: None,
                next: DeliveryNext::RetryAt(T0),
                breaker,
            })
            .await
            .unwrap();
        }
    }
    // Cool-down over: concurrent claims on two nodes share one probe per endpoint.
    let after = T0.plus_ms(breaker.open_ms as i64);
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                // Small claims, so that they pick different rows of one endpoint.
                store.delivery_claim(&claim_at(after, 1)).await
            })
        })
        .collect();
    let mut probes = Vec::new();
    for r in runs {
        probes.extend(r.await.unwrap().unwrap().into_iter().map(|d| d.tenant_id));
    }
    let distinct: HashSet<_> = probes.iter().collect();
    assert!(!probes.is_empty());
    assert_eq!(
        distinct.len(),
        probes.len(),
        "one probe per endpoint: {probes:?}"
    );
}
