//! Helpers to build store inputs tersely.

use std::sync::Arc;

use serde_json::json;
use vow_core::api::EnqueueRequest;
use vow_core::job::NewJob;
use vow_core::limits::Limits;
use vow_core::{Job, QueueName, TenantId, TenantName, Timestamp};
use vow_store::{AckItem, Inserted, JobAckMany, JobInsertMany, JobLease, Store, TenantInsert};

/// The time every case starts at.
pub const T0: Timestamp = Timestamp(1_767_225_600_000);

/// A store handle for the cases.
pub type DynStore = Arc<dyn Store>;

/// A fresh tenant.
pub async fn tenant(store: &DynStore, name: &str) -> TenantId {
    let id = TenantId::generate();
    store
        .tenant_insert(&TenantInsert {
            id: id.clone(),
            name: name.parse::<TenantName>().unwrap(),
            max_pending: None,
            now: T0,
        })
        .await
        .unwrap();
    id
}

/// A queue name.
pub fn q(name: &str) -> QueueName {
    name.parse().unwrap()
}

/// A validated job from request JSON (e.g. `json!({"payload": 1, "priority": 0})`).
pub fn new_job(req: serde_json::Value, now: Timestamp, idem: Option<&str>) -> NewJob {
    let req: EnqueueRequest = serde_json::from_value(req).unwrap();
    req.validate(&Limits::default(), now, idem.map(str::to_owned), None)
        .unwrap()
}

/// Inserts jobs from request JSONs at `now`.
pub async fn insert(
    store: &DynStore,
    tenant: &TenantId,
    queue: &str,
    reqs: Vec<serde_json::Value>,
    now: Timestamp,
) -> Vec<Inserted> {
    let jobs = reqs.into_iter().map(|r| new_job(r, now, None)).collect();
    store
        .job_insert_many(JobInsertMany {
            tenant_id: tenant.clone(),
            queue: q(queue),
            jobs,
            now,
        })
        .await
        .unwrap()
}

/// Inserts one plain job.
pub async fn insert_one(store: &DynStore, tenant: &TenantId, queue: &str, now: Timestamp) -> Job {
    insert(store, tenant, queue, vec![json!({ "payload": 1 })], now)
        .await
        .remove(0)
        .job
}

/// Leases up to `n` jobs at `now`.
pub async fn lease(
    store: &DynStore,
    tenant: &TenantId,
    queue: &str,
    n: u32,
    lease_ms: Option<u64>,
    now: Timestamp,
) -> Vec<Job> {
    store
        .job_lease(&JobLease {
            tenant_id: tenant.clone(),
            queue: q(queue),
            worker_id: "w1".into(),
            max_jobs: n,
            lease_ms,
            now,
        })
        .await
        .unwrap()
}

/// Completes a leased job (under the lease it holds) at `now`.
pub async fn complete(store: &dyn Store, tenant: &TenantId, job: &Job, now: Timestamp) -> Job {
    let lease_id = job.lease_id.clone().expect("a leased job");
    store
        .job_ack_many(JobAckMany {
            tenant_id: tenant.clone(),
            items: vec![AckItem::Complete {
                id: job.id.clone(),
                lease_id,
                result: None,
            }],
            now,
        })
        .await
        .unwrap()
        .remove(0)
        .unwrap()
}
