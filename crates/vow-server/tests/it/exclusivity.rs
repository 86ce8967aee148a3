//! Concurrency properties under many workers: no job is leased to two workers at once,
//! every job is completed exactly once, and nothing acknowledged is lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use vow_core::api::*;
use vow_core::JobId;

use crate::common::*;

/// From each job's event log: every `leased` after the first is preceded by the end of
/// the previous attempt, i.e. the store never had two live leases on one job.
async fn assert_no_overlapping_leases(c: &Api, ids: &[JobId]) -> usize {
    let mut leases = 0;
    for id in ids {
        let ev: Items<JobEventView> = c
            .ok(
                Method::GET,
                &format!("/v1/jobs/{id}/events"),
                None,
                StatusCode::OK,
            )
            .await;
        let mut live = false;
        for e in &ev.items {
            match e.kind.as_str() {
                "leased" => {
                    assert!(
                        !live,
                        "job {id} leased while a lease was live: {:?}",
                        ev.items
                    );
                    live = true;
                    leases += 1;
                }
                "completed" | "failed" | "lease_expired" | "dead" | "cancelled" => live = false,
                _ => {}
            }
        }
        assert_eq!(ev.items.last().unwrap().kind.as_str(), "completed");
    }
    leases
}

async fn enqueue_many(c: &Api, queue: &str, n: usize) -> Vec<JobId> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs: Vec<_> = chunk
            .iter()
            .map(|i| json!({ "payload": { "i": i } }))
            .collect();
        let out: Items<JobView> = c
            .ok(
                Method::POST,
                &format!("/v1/queues/{queue}/jobs/batch"),
                Some(json!({ "jobs": jobs })),
                StatusCode::ACCEPTED,
            )
            .await;
        ids.extend(out.items.into_iter().map(|j| j.id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_workers_each_job_completed_exactly_once() {
    const JOBS: usize = 3_000;
    const WORKERS: usize = 24;
    let t = TestApp::spawn().await;
    let c = t.client();
    let ids = enqueue_many(&c, "excl", JOBS).await;

    let held: Arc<Mutex<HashSet<JobId>>> = Arc::default();
    let completed: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (c, held, completed) = (c.clone(), held.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let jobs = c.lease("excl", 1 + (w % 4) as u32, 300, Some(60_000)).await;
                if jobs.is_empty() {
                    return;
                }
                for job in jobs {
                    assert!(
                        held.lock().unwrap().insert(job.id.clone()),
                        "job {} held by two workers",
                        job.id
                    );
                    tokio::task::yield_now().await;
                    held.lock().unwrap().remove(&job.id);
                    let (s, body) = c.complete(&job, json!({ "by": w })).await;
                    assert_eq!(s, StatusCode::OK, "{body}");
                    *completed.lock().unwrap().entry(job.id).or_default() += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    assert_eq!(completed.len(), JOBS);
    assert!(completed.values().all(|&n| n == 1));
    let q: QueueView = c
        .ok(Method::GET, "/v1/queues/excl", None, StatusCode::OK)
        .await;
    assert_eq!(q.counts.completed, JOBS as u64);
    assert_eq!(
        q.counts.available + q.counts.running + q.counts.scheduled,
        0
    );
    let leases = assert_no_overlapping_leases(&c, &ids[..300]).await;
    assert_eq!(
        leases, 300,
        "no expiries with long leases: one lease per job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiring_leases_never_record_two_outcomes() {
    const JOBS: usize = 400;
    const WORKERS: usize = 16;
    let t = TestApp::spawn().await;
    let c = t.client();
    let ids = enqueue_many(&c, "flaky", JOBS).await;
    // Make short leases retry at once.
    let completed: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (c, completed, refused) = (c.clone(), completed.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            let mut n = 0u64;
            while idle < 3 {
                let jobs = c.lease("flaky", 2, 500, Some(300)).await;
                if jobs.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for job in jobs {
                    n += 1;
                    // Every 7th job of every worker stalls past its lease.
                    if (n + w as u64).is_multiple_of(7) {
                        tokio::time::sleep(Duration::from_millis(1_600)).await;
                    }
                    let (s, body) = c.complete(&job, json!(null)).await;
                    match s {
                        StatusCode::OK => {
                            *completed.lock().unwrap().entry(job.id).or_default() += 1
                        }
                        StatusCode::CONFLICT => {
                            assert_eq!(body["code"], "lease_lost");
                            *refused.lock().unwrap() += 1;
                        }
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Stragglers whose lease expired after the workers left: finish them here.
    loop {
        let q: QueueView = c
            .ok(Method::GET, "/v1/queues/flaky", None, StatusCode::OK)
            .await;
        if q.counts.completed == JOBS as u64 {
            break;
        }
        for job in c.lease("flaky", 50, 1_000, Some(30_000)).await {
            let (s, _) = c.complete(&job, json!(null)).await;
            assert_eq!(s, StatusCode::OK);
            *completed.lock().unwrap().entry(job.id).or_default() += 1;
        }
    }
    let completed = completed.lock().unwrap().clone();
    assert_eq!(completed.len(), JOBS);
    assert!(
        completed.values().all(|&n| n == 1),
        "a job recorded two outcomes"
    );
    assert!(
        *refused.lock().unwrap() > 0,
        "the test must exercise stale leases"
    );
    let leases = assert_no_overlapping_leases(&c, &ids).await;
    assert!(leases > JOBS, "some jobs were leased again after expiry");
}
