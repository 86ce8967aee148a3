//! The conformance cases. Each takes a fresh, empty store.

use std::collections::HashMap;

use serde_json::json;
use vow_core::api::QueuePatch;
use vow_core::auth::Role;
use vow_core::machine::{apply, EventKind, Op};
use vow_core::{JobId, JobState, KeyId, LeaseId, Timestamp};
use vow_store::*;

use crate::fixtures::*;

fn complete(id: &JobId, lease_id: &LeaseId) -> AckItem {
    AckItem::Complete {
        id: id.clone(),
        lease_id: lease_id.clone(),
        result: Some(json!({ "ok": true })),
    }
}

fn fail(id: &JobId, lease_id: &LeaseId, retryable: bool, retry_after_ms: Option<u64>) -> AckItem {
    AckItem::Fail {
        id: id.clone(),
        lease_id: lease_id.clone(),
        message: "boom".into(),
        code: Some("e".into()),
        retryable,
        retry_after_ms,
    }
}

async fn ack(
    store: &DynStore,
    tenant: &vow_core::TenantId,
    item: AckItem,
    now: Timestamp,
) -> StoreResult<vow_core::Job> {
    store
        .job_ack_many(JobAckMany {
            tenant_id: tenant.clone(),
            items: vec![item],
            now,
        })
        .await
        .unwrap()
        .remove(0)
}

/// The queue's counts by state, as `queue_get` reports them (all zero for a queue
/// never used).
async fn counts(store: &DynStore, t: &vow_core::TenantId, queue: &str) -> HashMap<JobState, u64> {
    let v = store.queue_get(t, &q(queue), T0).await.unwrap();
    let c = v.map(|v| v.counts).unwrap_or_default();
    JobState::ALL
        .iter()
        .map(|s| {
            let n = match s {
                JobState::Scheduled => c.scheduled,
                JobState::Available => c.available,
                JobState::Running => c.running,
                JobState::Completed => c.completed,
                JobState::Dead => c.dead,
                JobState::Cancelled => c.cancelled,
            };
            (*s, n)
        })
        .collect()
}

/// The ids of the queue's jobs in `state`, as listed (newest first).
async fn listed(
    store: &DynStore,
    t: &vow_core::TenantId,
    queue: &str,
    state: JobState,
) -> Vec<JobId> {
    let page = store
        .job_list(&JobList {
            tenant_id: Some(t.clone()),
            queue: Some(q(queue)),
            state: Some(state),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.next_cursor.is_none());
    page.items.into_iter().map(|j| j.id).collect()
}

/// A job is visible to its tenant only.
pub async fn insert_get_and_isolation(store: DynStore) {
    let a = tenant(&store, "a").await;
    let b = tenant(&store, "b").await;
    let job = insert_one(&store, &a, "q", T0).await;
    assert_eq!(job.state, JobState::Available);
    let got = store.job_get(&a, &job.id).await.unwrap().unwrap();
    assert_eq!(got, job, "the inserted job reads back identically");
    assert!(store.job_get(&b, &job.id).await.unwrap().is_none());
    assert!(lease(&store, &b, "q", 10, None, T0).await.is_empty());
    assert!(store.job_event_list(&b, &job.id).await.unwrap().is_empty());
    let list = store
        .job_list(&JobList {
            tenant_id: Some(b.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(list.items.is_empty());
    assert!(matches!(
        store
            .job_cancel(&JobCancel {
                tenant_id: b.clone(),
                id: job.id.clone(),
                now: T0
            })
            .await,
        Err(StoreError::NotFound)
    ));
    let leased = lease(&store, &a, "q", 10, None, T0).await;
    let stolen = ack(
        &store,
        &b,
        complete(&job.id, leased[0].lease_id.as_ref().unwrap()),
        T0,
    )
    .await;
    assert!(matches!(stolen, Err(StoreError::NotFound)));
    assert!(store.queue_list(&b, T0).await.unwrap().is_empty());
}

/// Idempotency keys return the original job or conflict; batches are all-or-nothing.
pub async fn idempotency_and_atomic_batches(store: DynStore) {
    let t = tenant(&store, "t").await;
    let ins = |jobs, queue: &str| JobInsertMany {
        tenant_id: t.clone(),
        queue: q(queue),
        jobs,
        now: T0,
    };
    let first = store
        .job_insert_many(ins(
            vec![new_job(json!({ "payload": 1 }), T0, Some("k"))],
            "q",
        ))
        .await
        .unwrap();
    assert!(first[0].created);
    let again = store
        .job_insert_many(ins(
            vec![new_job(json!({ "payload": 1 }), T0, Some("k"))],
            "q",
        ))
        .await
        .unwrap();
    assert!(!again[0].created);
    assert_eq!(again[0].job.id, first[0].job.id);
    let conflict = store
        .job_insert_many(ins(
            vec![new_job(json!({ "payload": 2 }), T0, Some("k"))],
            "q",
        ))
        .await;
    assert!(matches!(conflict, Err(StoreError::IdempotencyConflict(id)) if id == first[0].job.id));
    // Scope is per queue.
    let other = store
        .job_insert_many(ins(
            vec![new_job(json!({ "payload": 2 }), T0, Some("k"))],
            "other",
        ))
        .await
        .unwrap();
    assert!(other[0].created);
    // A conflict in the middle of a batch inserts nothing of it.
    let batch = vec![
        new_job(json!({ "payload": "x" }), T0, None),
        new_job(json!({ "payload": 99 }), T0, Some("k")),
    ];
    assert!(store.job_insert_many(ins(batch, "q")).await.is_err());
    let list = store
        .job_list(&JobList {
            tenant_id: Some(t.clone()),
            queue: Some(q("q")),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    // A batch without keys that fails (two jobs with one id) writes nothing either, not
    // even its queue's row.
    let twin = new_job(json!({ "payload": "twin" }), T0, None);
    let batch = vec![twin.clone(), twin];
    assert!(store.job_insert_many(ins(batch, "fresh")).await.is_err());
    let fresh = store.queue_get(&t, &q("fresh"), T0).await.unwrap();
    assert!(fresh.is_none(), "{fresh:?}");
}

/// Leases follow priority, then run_at, then id; paused queues and future jobs are skipped.
pub async fn lease_order_pause_and_schedule(store: DynStore) {
    let t = tenant(&store, "t").await;
    let ins = insert(
        &store,
        &t,
        "q",
        vec![
            json!({ "payload": 0, "priority": 9 }),
            json!({ "payload": 1 }),
            json!({ "payload": 2, "priority": 0 }),
            json!({ "payload": 3 }),
            json!({ "payload": 4, "delay_ms": 10_000 }),
        ],
        T0,
    )
    .await;
    let ids: Vec<_> = ins.iter().map(|i| i.job.id.clone()).collect();
    assert_eq!(ins[4].job.state, JobState::Scheduled);
    store
        .queue_update(&QueueUpdate {
            tenant_id: t.clone(),
            name: q("q"),
            patch: QueuePatch {
                paused: Some(true),
                ..Default::default()
            },
            now: T0,
        })
        .await
        .unwrap();
    assert!(lease(&store, &t, "q", 10, None, T0).await.is_empty());
    store
        .queue_update(&QueueUpdate {
            tenant_id: t.clone(),
            name: q("q"),
            patch: QueuePatch {
                paused: Some(false),
                ..Default::default()
            },
            now: T0,
        })
        .await
        .unwrap();
    let got: Vec<_> = lease(&store, &t, "q", 2, None, T0)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(got, [ids[2].clone(), ids[1].clone()]);
    let got: Vec<_> = lease(&store, &t, "q", 10, Some(5_000), T0).await;
    assert_eq!(
        got.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [ids[3].clone(), ids[0].clone()]
    );
    assert_eq!(got[0].lease_expires_at, Some(T0.plus_ms(5_000)));
    assert_eq!((got[0].attempt, got[0].state), (1, JobState::Running));
    assert!(got[0].lease_id.is_some() && got[0].lease_id != got[1].lease_id);
    // The scheduled job becomes leasable once promoted at its run_at.
    let sweep = store.job_promote_due(T0.plus_ms(9_999)).await.unwrap();
    assert_eq!(
        (sweep.changed, sweep.next_at),
        (0, Some(T0.plus_ms(10_000)))
    );
    let sweep = store.job_promote_due(T0.plus_ms(10_000)).await.unwrap();
    assert_eq!((sweep.changed, sweep.next_at), (1, None));
    let got = lease(&store, &t, "q", 10, None, T0.plus_ms(10_000)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, ids[4]);
}

/// Complete, fail and heartbeat need the current lease.
pub async fn fencing_and_heartbeats(store: DynStore) {
    let t = tenant(&store, "t").await;
    let job = insert_one(&store, &t, "q", T0).await;
    let leased = lease(&store, &t, "q", 1, Some(1_000), T0).await.remove(0);
    let lid = leased.lease_id.clone().unwrap();
    let hb = |lease_id: LeaseId, now: Timestamp| JobHeartbeat {
        tenant_id: t.clone(),
        id: job.id.clone(),
        lease_id,
        extend_ms: 10_000,
        progress: Some(json!({ "pct": 5 })),
        now,
    };
    assert_eq!(
        store
            .job_heartbeat(hb(lid.clone(), T0.plus_ms(500)))
            .await
            .unwrap(),
        T0.plus_ms(10_500)
    );
    assert_eq!(
        store.job_get(&t, &job.id).await.unwrap().unwrap().progress,
        Some(json!({ "pct": 5 }))
    );
    assert!(matches!(
        store.job_heartbeat(hb(LeaseId::generate(), T0)).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        ack(&store, &t, complete(&job.id, &LeaseId::generate()), T0).await,
        Err(StoreError::LeaseLost)
    ));
    let done = ack(&store, &t, complete(&job.id, &lid), T0.plus_ms(600))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.finished_at, done.lease_id.clone()),
        (JobState::Completed, Some(T0.plus_ms(600)), None)
    );
    assert_eq!(done.result, Some(json!({ "ok": true })));
    // A second outcome under the same lease is refused and changes nothing.
    assert!(matches!(
        ack(&store, &t, fail(&job.id, &lid, true, None), T0).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.job_heartbeat(hb(lid, T0)).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(store.job_get(&t, &job.id).await.unwrap().unwrap(), done);
}

/// Failed attempts back off (or follow retry_after_ms), then end dead; retry replays.
pub async fn failures_backoff_dead_and_retry(store: DynStore) {
    let t = tenant(&store, "t").await;
    let req = json!({ "payload": 1, "max_attempts": 2, "backoff": { "initial_ms": 1_000, "max_ms": 1_000 } });
    let job = insert(&store, &t, "q", vec![req], T0).await.remove(0).job;
    let l1 = lease(&store, &t, "q", 1, None, T0).await.remove(0);
    let failed = ack(
        &store,
        &t,
        fail(&job.id, l1.lease_id.as_ref().unwrap(), true, None),
        T0,
    )
    .await
    .unwrap();
    assert_eq!(failed.state, JobState::Scheduled);
    assert!(
        failed.run_at >= T0 && failed.run_at <= T0.plus_ms(1_000),
        "full jitter within the ceiling"
    );
    assert_eq!(failed.last_error.as_ref().unwrap().message, "boom");
    store.job_promote_due(T0.plus_ms(1_000)).await.unwrap();
    let l2 = lease(&store, &t, "q", 1, None, T0.plus_ms(1_000))
        .await
        .remove(0);
    assert_eq!(l2.attempt, 2);
    let dead = ack(
        &store,
        &t,
        fail(&job.id, l2.lease_id.as_ref().unwrap(), true, Some(5)),
        T0.plus_ms(1_001),
    )
    .await
    .unwrap();
    assert_eq!(
        (dead.state, dead.finished_at),
        (JobState::Dead, Some(T0.plus_ms(1_001)))
    );
    let retried = store
        .job_retry(&JobRetry {
            tenant_id: t.clone(),
            id: job.id.clone(),
            now: T0.plus_ms(2_000),
        })
        .await
        .unwrap();
    assert_eq!(
        (retried.state, retried.attempt, retried.finished_at),
        (JobState::Available, 0, None)
    );
    assert!(matches!(
        store
            .job_retry(&JobRetry {
                tenant_id: t.clone(),
                id: job.id.clone(),
                now: T0
            })
            .await,
        Err(StoreError::InvalidState(JobState::Available))
    ));
    // retry_after_ms is exact; non-retryable is dead at once.
    let l3 = lease(&store, &t, "q", 1, None, T0.plus_ms(2_000))
        .await
        .remove(0);
    let later = ack(
        &store,
        &t,
        fail(&job.id, l3.lease_id.as_ref().unwrap(), true, Some(7_000)),
        T0.plus_ms(2_000),
    )
    .await
    .unwrap();
    assert_eq!(later.run_at, T0.plus_ms(9_000));
    store.job_promote_due(T0.plus_ms(9_000)).await.unwrap();
    let l4 = lease(&store, &t, "q", 1, None, T0.plus_ms(9_000))
        .await
        .remove(0);
    let dead = ack(
        &store,
        &t,
        fail(&job.id, l4.lease_id.as_ref().unwrap(), false, None),
        T0.plus_ms(9_000),
    )
    .await
    .unwrap();
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 2));
}

/// Expired leases become failed attempts; unexpired ones are left alone.
pub async fn reaper_expires_leases(store: DynStore) {
    let t = tenant(&store, "t").await;
    let req =
        json!({ "payload": 1, "max_attempts": 2, "backoff": { "initial_ms": 0, "max_ms": 0 } });
    let job = insert(&store, &t, "q", vec![req], T0).await.remove(0).job;
    let l1 = lease(&store, &t, "q", 1, Some(1_000), T0).await.remove(0);
    let sweep = store.job_reap_expired(T0.plus_ms(999)).await.unwrap();
    assert_eq!((sweep.changed, sweep.next_at), (0, Some(T0.plus_ms(1_000))));
    let sweep = store.job_reap_expired(T0.plus_ms(1_000)).await.unwrap();
    assert_eq!((sweep.changed, sweep.next_at), (1, None));
    let j = store.job_get(&t, &job.id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempt, j.lease_id.clone()),
        (JobState::Scheduled, 1, None)
    );
    assert_eq!(j.last_error.unwrap().code.as_deref(), Some("lease_expired"));
    assert!(matches!(
        ack(
            &store,
            &t,
            complete(&job.id, l1.lease_id.as_ref().unwrap()),
            T0.plus_ms(1_001)
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    store.job_promote_due(T0.plus_ms(1_000)).await.unwrap();
    lease(&store, &t, "q", 1, Some(1_000), T0.plus_ms(1_000))
        .await
        .remove(0);
    store.job_reap_expired(T0.plus_ms(2_000)).await.unwrap();
    let j = store.job_get(&t, &job.id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Dead, 2));
}

/// How a job of [`finished`] ends.
#[derive(Clone, Copy)]
enum End {
    Complete,
    Cancel,
    Die,
}

/// A job of `queue` (which must have no other available job) that ended at `at`.
async fn finished(
    store: &DynStore,
    t: &vow_core::TenantId,
    queue: &str,
    end: End,
    at: Timestamp,
) -> JobId {
    let job = insert_one(store, t, queue, at).await;
    match end {
        End::Cancel => {
            store
                .job_cancel(&JobCancel {
                    tenant_id: t.clone(),
                    id: job.id.clone(),
                    now: at,
                })
                .await
                .unwrap();
        }
        End::Complete | End::Die => {
            let l = lease(store, t, queue, 1, None, at).await.remove(0);
            assert_eq!(l.id, job.id);
            let lease_id = l.lease_id.as_ref().unwrap();
            let item = match end {
                End::Complete => complete(&job.id, lease_id),
                _ => fail(&job.id, lease_id, false, None),
            };
            ack(store, t, item, at).await.unwrap();
        }
    }
    job.id
}

/// Event `seq`s only grow, even when pruning takes every job, the one holding the newest
/// event included: a reused `seq` would make an SSE client resuming after it skip events.
/// Nothing of a pruned job's events is visible to any tenant afterwards.
pub async fn event_seqs_are_never_reused(store: DynStore) {
    let a = tenant(&store, "a").await;
    let b = tenant(&store, "b").await;
    let replay = |t: &vow_core::TenantId| {
        let store = store.clone();
        let p = JobEventListSince {
            tenant_id: t.clone(),
            after: 0,
            queue: None,
            job_id: None,
            limit: 100,
        };
        async move { store.job_event_list_since(&p).await.unwrap() }
    };
    // Completed jobs that finished before `at + 1 ms`.
    let prune_until = |at: Timestamp| {
        let store = store.clone();
        let p = JobPrune {
            completed_before: Some(at.plus_ms(1)),
            cancelled_before: None,
            dead_before: None,
            limit: 100,
        };
        async move { store.job_prune(&p).await.unwrap() }
    };
    let mut newest = 0;
    for round in 0..3 {
        let at = T0.plus_ms(round * 1_000);
        let done = finished(&store, &a, "q", End::Complete, at).await;
        let seqs: Vec<i64> = store
            .job_event_list(&a, &done)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs.len(), 3, "enqueued, leased, completed");
        assert!(seqs[0] > newest, "round {round}: {seqs:?} after {newest}");
        newest = seqs[2];
        let pruned = prune_until(at).await;
        assert_eq!((pruned.jobs, pruned.events), (1, 3), "round {round}");
        assert_eq!(
            replay(&a).await,
            [],
            "round {round}: a pruned job's events are gone"
        );
        assert_eq!(replay(&b).await, []);
    }
    let next = insert_one(&store, &a, "q", T0.plus_ms(5_000)).await;
    let events = replay(&a).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].job_id, next.id);
    assert!(events[0].seq > newest, "{} after {newest}", events[0].seq);
    // Two jobs pruned together, while the newest event is a live job's.
    let at = T0.plus_ms(6_000);
    let one = finished(&store, &a, "p1", End::Complete, at).await;
    let two = finished(&store, &a, "p2", End::Complete, at).await;
    let live = insert_one(&store, &a, "q", at).await;
    let pruned = prune_until(at).await;
    assert_eq!((pruned.jobs, pruned.events), (2, 6));
    let left: Vec<JobId> = replay(&a).await.into_iter().map(|e| e.job_id).collect();
    assert_eq!(left, [next.id.clone(), live.id.clone()], "{one} {two}");
    let last = insert_one(&store, &a, "q", at).await;
    let events = replay(&a).await;
    assert_eq!(events.len(), 3);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(events[2].job_id, last.id);
}

/// Pruning deletes, in bounded batches, only finished jobs older than their state's
/// cut-off (all tenants), with their events and idempotency keys.
pub async fn prune_finished_jobs(store: DynStore) {
    let a = tenant(&store, "a").await;
    let b = tenant(&store, "b").await;
    let old = T0.plus_ms(1_000);
    let recent = T0.plus_ms(5_000);
    let done_old = finished(&store, &a, "q", End::Complete, old).await;
    let done_recent = finished(&store, &a, "q", End::Complete, recent).await;
    let cancelled_old = finished(&store, &a, "q", End::Cancel, old).await;
    let dead_old = finished(&store, &a, "q", End::Die, old).await;
    let other_old = finished(&store, &b, "q", End::Complete, old).await;
    let other_recent = finished(&store, &b, "q", End::Complete, recent).await;
    // Pending and running jobs, created long ago; and a dead job replayed since.
    let waiting = insert_one(&store, &a, "idle", T0).await.id;
    let scheduled = insert(
        &store,
        &a,
        "idle",
        vec![json!({ "payload": 1, "delay_ms": 3_600_000 })],
        T0,
    )
    .await
    .remove(0)
    .job
    .id;
    let running = insert_one(&store, &a, "busy", T0).await.id;
    lease(&store, &a, "busy", 1, None, T0).await;
    let replayed = finished(&store, &a, "again", End::Die, T0).await;
    store
        .job_retry(&JobRetry {
            tenant_id: a.clone(),
            id: replayed.clone(),
            now: T0,
        })
        .await
        .unwrap();

    let exists = |t: &vow_core::TenantId, id: &JobId| {
        let (store, t, id) = (store.clone(), t.clone(), id.clone());
        async move { store.job_get(&t, &id).await.unwrap().is_some() }
    };
    let events = |t: &vow_core::TenantId, id: &JobId| {
        let (store, t, id) = (store.clone(), t.clone(), id.clone());
        async move { store.job_event_list(&t, &id).await.unwrap().len() }
    };
    let prune = |completed, cancelled, dead, limit| {
        let store = store.clone();
        let p = JobPrune {
            completed_before: completed,
            cancelled_before: cancelled,
            dead_before: dead,
            limit,
        };
        async move { store.job_prune(&p).await.unwrap() }
    };

    // Nothing is older than a cut-off at the moment the old jobs finished.
    assert_eq!(
        prune(Some(old), Some(old), Some(old), 100).await,
        Pruned::default()
    );

    // Completed jobs before T0+2s go (every tenant's); cancelled ones are kept forever;
    // dead ones only before T0+0.5s, which the dead job is not.
    let want_events = events(&a, &done_old).await + events(&b, &other_old).await;
    assert_eq!(want_events, 6, "enqueued, leased, completed each");
    let cut = T0.plus_ms(2_000);
    let n = prune(Some(cut), None, Some(T0.plus_ms(500)), 100).await;
    assert_eq!(
        n,
        Pruned {
            jobs: 2,
            events: want_events,
            deliveries: 0,
        }
    );
    assert!(!exists(&a, &done_old).await && !exists(&b, &other_old).await);
    assert_eq!(events(&a, &done_old).await, 0, "its events went too");
    let replay = store
        .job_event_list_since(&JobEventListSince {
            tenant_id: a.clone(),
            after: 0,
            queue: None,
            job_id: None,
            limit: 1_000,
        })
        .await
        .unwrap();
    assert!(replay.iter().all(|e| e.job_id != done_old));
    for (t, id) in [
        (&a, &done_recent),
        (&a, &cancelled_old),
        (&a, &dead_old),
        (&b, &other_recent),
    ] {
        assert!(exists(t, id).await, "{id} stays");
        assert!(events(t, id).await > 0, "{id} keeps its events");
    }
    assert_eq!(
        prune(Some(cut), None, Some(T0.plus_ms(500)), 100)
            .await
            .jobs,
        0
    );

    // Now the cancelled and the dead one.
    let n = prune(None, Some(cut), Some(cut), 100).await;
    assert_eq!(n.jobs, 2);
    assert!(!exists(&a, &cancelled_old).await && !exists(&a, &dead_old).await);
    assert!(exists(&a, &done_recent).await);

    let c = counts(&store, &a, "q").await;
    assert_eq!(
        (
            c[&JobState::Completed],
            c[&JobState::Cancelled],
            c[&JobState::Dead]
        ),
        (1, 0, 0),
        "pruned jobs are no longer counted: {c:?}"
    );
    assert!(listed(&store, &a, "q", JobState::Dead).await.is_empty());
    assert_eq!(
        listed(&store, &a, "q", JobState::Completed).await,
        std::slice::from_ref(&done_recent)
    );

    // However late the cut-offs, pending, running and replayed jobs stay.
    let late = Some(T0.plus_ms(1_000_000_000));
    let n = prune(late, late, late, 100).await;
    assert_eq!(n.jobs, 2, "the two recent completed jobs");
    assert_eq!(counts(&store, &b, "q").await[&JobState::Completed], 0);
    for id in [&waiting, &scheduled, &running, &replayed] {
        assert!(exists(&a, id).await, "{id} is not finished and stays");
        assert!(events(&a, id).await > 0);
    }

    // A batch is bounded by the limit (across states), oldest first; repeated calls
    // finish the work.
    let mut bulk = Vec::new();
    for i in 0..4 {
        bulk.push(finished(&store, &a, "bulk", End::Complete, T0.plus_ms(10 + i)).await);
    }
    for i in 0..2 {
        bulk.push(finished(&store, &b, "bulk", End::Die, T0.plus_ms(20 + i)).await);
    }
    assert_eq!(prune(late, None, late, 1).await.jobs, 1);
    assert!(!exists(&a, &bulk[0]).await, "the oldest goes first");
    assert!(exists(&a, &bulk[1]).await);
    let mut sizes = Vec::new();
    loop {
        let n = prune(late, None, late, 4).await;
        sizes.push(n.jobs);
        if n.jobs < 4 {
            break;
        }
    }
    assert_eq!(sizes, [4, 1]);
    for id in &bulk {
        assert!(!exists(&a, id).await && !exists(&b, id).await);
    }
    assert_eq!(prune(late, late, late, 4).await, Pruned::default());

    // The idempotency key of a pruned job is free again: a new job, not the old one.
    let keyed = |payload: i64| JobInsertMany {
        tenant_id: a.clone(),
        queue: q("keyed"),
        jobs: vec![new_job(json!({ "payload": payload }), T0, Some("k"))],
        now: T0,
    };
    let first = store.job_insert_many(keyed(1)).await.unwrap().remove(0).job;
    let l = lease(&store, &a, "keyed", 1, None, T0).await.remove(0);
    ack(
        &store,
        &a,
        complete(&first.id, l.lease_id.as_ref().unwrap()),
        T0,
    )
    .await
    .unwrap();
    assert_eq!(prune(late, late, late, 100).await.jobs, 1);
    let again = store.job_insert_many(keyed(2)).await.unwrap().remove(0);
    assert!(again.created, "a different body is no conflict once pruned");
    assert_ne!(again.job.id, first.id);
    let repeat = store.job_insert_many(keyed(2)).await.unwrap().remove(0);
    assert_eq!((repeat.created, repeat.job.id), (false, again.job.id));
}

/// One bad item does not spoil the others.
pub async fn ack_many_reports_per_item(store: DynStore) {
    let t = tenant(&store, "t").await;
    insert(
        &store,
        &t,
        "q",
        (0..3).map(|i| json!({ "payload": i })).collect(),
        T0,
    )
    .await;
    let jobs = lease(&store, &t, "q", 3, None, T0).await;
    let l = |i: usize| jobs[i].lease_id.clone().unwrap();
    let out = store
        .job_ack_many(JobAckMany {
            tenant_id: t.clone(),
            items: vec![
                complete(&jobs[0].id, &l(0)),
                complete(&jobs[1].id, &l(2)),
                fail(&jobs[2].id, &l(2), false, None),
                complete(&JobId::generate(), &l(0)),
            ],
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].as_ref().unwrap().state, JobState::Completed);
    assert!(matches!(out[1], Err(StoreError::LeaseLost)));
    assert_eq!(out[2].as_ref().unwrap().state, JobState::Dead);
    assert!(matches!(out[3], Err(StoreError::NotFound)));
    assert_eq!(
        store.job_get(&t, &jobs[1].id).await.unwrap().unwrap().state,
        JobState::Running
    );
}

/// Cancel works from every non-terminal state and never from a terminal one.
pub async fn cancel_semantics(store: DynStore) {
    let t = tenant(&store, "t").await;
    let ins = insert(
        &store,
        &t,
        "q",
        vec![
            json!({ "payload": 1 }),
            json!({ "payload": 2, "delay_ms": 1000 }),
            json!({ "payload": 3 }),
        ],
        T0,
    )
    .await;
    let running = lease(&store, &t, "q", 1, None, T0).await.remove(0);
    for i in &ins {
        let c = store
            .job_cancel(&JobCancel {
                tenant_id: t.clone(),
                id: i.job.id.clone(),
                now: T0,
            })
            .await
            .unwrap();
        assert_eq!((c.state, c.lease_id), (JobState::Cancelled, None));
    }
    let again = store
        .job_cancel(&JobCancel {
            tenant_id: t.clone(),
            id: ins[0].job.id.clone(),
            now: T0,
        })
        .await;
    assert!(matches!(
        again,
        Err(StoreError::InvalidState(JobState::Cancelled))
    ));
    assert!(matches!(
        ack(
            &store,
            &t,
            complete(&running.id, running.lease_id.as_ref().unwrap()),
            T0
        )
        .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(
        store
            .job_promote_due(T0.plus_ms(5_000))
            .await
            .unwrap()
            .changed
            == 0
    );
}

/// Every transition is logged in order and published on the bus after commit.
pub async fn events_and_bus(store: DynStore) {
    let t = tenant(&store, "t").await;
    let mut rx = store.bus().subscribe();
    let waiter = store.bus().queue_waiter(&t, &q("q"));
    let woken = waiter.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    let job = insert_one(&store, &t, "q", T0).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), woken)
        .await
        .expect("enqueue wakes the queue");
    let l = lease(&store, &t, "q", 1, None, T0).await.remove(0);
    ack(
        &store,
        &t,
        complete(&job.id, l.lease_id.as_ref().unwrap()),
        T0,
    )
    .await
    .unwrap();
    let log = store.job_event_list(&t, &job.id).await.unwrap();
    let kinds: Vec<_> = log.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Enqueued, EventKind::Leased, EventKind::Completed]
    );
    assert_eq!(log[0].from_state, None);
    assert_eq!(
        (log[1].from_state, log[1].to_state, log[1].attempt),
        (Some(JobState::Available), JobState::Running, 1)
    );
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    for want in &log {
        let got = rx.recv().await.unwrap();
        assert_eq!(got.tenant_id, t);
        assert_eq!(&got.event, want);
    }
}

/// Event replay after a sequence number, per tenant, with queue and job filters.
pub async fn event_replay_since(store: DynStore) {
    let t = tenant(&store, "t").await;
    let other = tenant(&store, "o").await;
    insert_one(&store, &other, "q", T0).await;
    let a = insert_one(&store, &t, "q", T0).await;
    let b = insert_one(&store, &t, "r", T0).await;
    lease(&store, &t, "q", 1, None, T0).await;
    let since = |after: i64, queue: Option<&str>, job_id: Option<&JobId>, limit: usize| {
        let store = store.clone();
        let p = JobEventListSince {
            tenant_id: t.clone(),
            after,
            queue: queue.map(q),
            job_id: job_id.cloned(),
            limit,
        };
        async move { store.job_event_list_since(&p).await.unwrap() }
    };
    let all = since(0, None, None, 100).await;
    let kinds: Vec<_> = all.iter().map(|e| (e.job_id.clone(), e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (a.id.clone(), EventKind::Enqueued),
            (b.id.clone(), EventKind::Enqueued),
            (a.id.clone(), EventKind::Leased)
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let rest = since(all[0].seq, None, None, 100).await;
    assert_eq!(rest, all[1..]);
    assert_eq!(since(all[0].seq, None, None, 1).await, all[1..2]);
    assert_eq!(since(0, Some("r"), None, 100).await, all[1..2]);
    assert_eq!(since(0, None, Some(&a.id), 100).await.len(), 2);
    assert!(since(all[2].seq, None, None, 100).await.is_empty());
}

/// Listing: newest first, filters, cursor pages.
pub async fn list_filters_and_pages(store: DynStore) {
    let t = tenant(&store, "t").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!([])
        };
        let ins = insert(
            &store,
            &t,
            if i < 3 { "a" } else { "b" },
            vec![json!({ "payload": i, "tags": tags, "group": "g" })],
            T0,
        )
        .await;
        ids.push(ins[0].job.id.clone());
    }
    let base = JobList {
        tenant_id: Some(t.clone()),
        limit: 2,
        ..Default::default()
    };
    let p1 = store.job_list(&base).await.unwrap();
    assert_eq!(
        p1.items.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [ids[4].clone(), ids[3].clone()]
    );
    let before: JobId = p1.next_cursor.unwrap().parse().unwrap();
    let p2 = store
        .job_list(&JobList {
            before: Some(before),
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(p2.items[0].id, ids[2]);
    let all = |f: JobList| {
        let store = store.clone();
        async move {
            store
                .job_list(&JobList { limit: 100, ..f })
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(
        all(JobList {
            queue: Some(q("a")),
            ..base.clone()
        })
        .await,
        3
    );
    assert_eq!(
        all(JobList {
            tag: Some("even".into()),
            ..base.clone()
        })
        .await,
        3
    );
    assert_eq!(
        all(JobList {
            group: Some("g".parse().unwrap()),
            ..base.clone()
        })
        .await,
        5
    );
    assert_eq!(
        all(JobList {
            state: Some(JobState::Running),
            ..base.clone()
        })
        .await,
        0
    );
}

/// Queue rows: created on first use, counted by state, settings patched.
pub async fn queues_counts_and_settings(store: DynStore) {
    let t = tenant(&store, "t").await;
    assert!(store.queue_get(&t, &q("q"), T0).await.unwrap().is_none());
    insert(
        &store,
        &t,
        "q",
        vec![
            json!({ "payload": 1 }),
            json!({ "payload": 2 }),
            json!({ "payload": 3, "delay_ms": 50 }),
        ],
        T0,
    )
    .await;
    lease(&store, &t, "q", 1, None, T0).await;
    let v = store
        .queue_get(&t, &q("q"), T0.plus_ms(40))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.counts.available, v.counts.running, v.counts.scheduled),
        (1, 1, 1)
    );
    assert_eq!(v.oldest_available_age_ms, Some(40));
    // The oldest available job may have any priority: here the last one in lease order.
    for (priority, at) in [(2, T0), (5, T0.plus_ms(-30)), (9, T0.plus_ms(-70))] {
        insert(
            &store,
            &t,
            "p",
            vec![json!({ "payload": 1, "priority": priority })],
            at,
        )
        .await;
    }
    let v = store.queue_get(&t, &q("p"), T0).await.unwrap().unwrap();
    assert_eq!(v.oldest_available_age_ms, Some(70));
    lease(&store, &t, "q", 1, None, T0).await;
    let v = store.queue_get(&t, &q("q"), T0).await.unwrap().unwrap();
    assert_eq!(v.counts.available, 0);
    assert_eq!(v.oldest_available_age_ms, None, "no available job left");
    let patch = QueuePatch {
        concurrency_limit: Some(Some(3)),
        max_pending: Some(Some(100)),
        ..Default::default()
    };
    let v = store
        .queue_update(&QueueUpdate {
            tenant_id: t.clone(),
            name: q("q"),
            patch,
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(
        (v.concurrency_limit, v.max_pending, v.paused),
        (Some(3), Some(100), false)
    );
    let patch = QueuePatch {
        concurrency_limit: Some(None),
        ..Default::default()
    };
    let v = store
        .queue_update(&QueueUpdate {
            tenant_id: t.clone(),
            name: q("q"),
            patch,
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!((v.concurrency_limit, v.max_pending), (None, Some(100)));
    assert_eq!(store.queue_list(&t, T0).await.unwrap().len(), 2);
}

/// Tenants have unique names; keys are stored hashed and can be revoked.
pub async fn tenants_and_keys(store: DynStore) {
    let t = tenant(&store, "acme").await;
    let dup = store
        .tenant_insert(&TenantInsert {
            id: vow_core::TenantId::generate(),
            name: "acme".parse().unwrap(),
            max_pending: None,
            now: T0,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    assert_eq!(
        store
            .tenant_get_by_name(&"acme".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .id,
        t
    );
    assert_eq!(store.tenant_list().await.unwrap().len(), 1);
    let id = KeyId::generate();
    let rec = store
        .api_key_insert(&ApiKeyInsert {
            id: id.clone(),
            tenant_id: Some(t.clone()),
            role: Role::Worker,
            hash: "h".into(),
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!((rec.role, rec.revoked_at), (Role::Worker, None));
    assert_eq!(store.api_key_list(Some(&t)).await.unwrap().len(), 1);
    assert!(store.api_key_list(None).await.unwrap().is_empty());
    let revoked = store.api_key_revoke(&id, T0.plus_ms(5)).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(T0.plus_ms(5)));
    assert!(matches!(
        store.api_key_revoke(&KeyId::generate(), T0).await,
        Err(StoreError::NotFound)
    ));
}

/// Random operations on a few jobs, applied to the store and to the reference model
/// (`vow_core::machine`) side by side: after every step the two agree.
pub async fn model_based_random_ops(store: DynStore) {
    let t = tenant(&store, "t").await;
    // Deterministic pseudo-random sequence (xorshift), so a failure reproduces.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let req =
        json!({ "payload": 1, "max_attempts": 3, "backoff": { "initial_ms": 0, "max_ms": 0 } });
    // A job in another queue and one of another tenant in the same queue's name: no
    // count of theirs moves with the model's jobs.
    insert_one(&store, &t, "bystander", T0).await;
    let other = tenant(&store, "other").await;
    insert_one(&store, &other, "m", T0).await;
    let mut model: HashMap<JobId, vow_core::Job> = HashMap::new();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let job = insert(&store, &t, "m", vec![req.clone()], T0)
            .await
            .remove(0)
            .job;
        ids.push(job.id.clone());
        model.insert(job.id.clone(), job);
    }
    let mut now = T0;
    for step in 0..400 {
        now = now.plus_ms(next(400) as i64);
        let id = ids[next(ids.len() as u64) as usize].clone();
        let m = model.get_mut(&id).unwrap();
        // Sometimes use the current lease, sometimes a stale one.
        let lease_id = if next(4) == 0 {
            LeaseId::generate()
        } else {
            m.lease_id.clone().unwrap_or_else(LeaseId::generate)
        };
        let before = m.clone();
        match next(7) {
            0 => {
                // Lease whatever the store picks first; mirror it in the model.
                let got = lease(&store, &t, "m", 1, Some(300), now).await;
                let avail: Vec<_> = model
                    .values()
                    .filter(|j| j.state == JobState::Available)
                    .map(|j| j.id.clone())
                    .collect();
                assert_eq!(got.len(), usize::from(!avail.is_empty()), "step {step}");
                if let Some(j) = got.first() {
                    let mj = model.get_mut(&j.id).unwrap();
                    assert_eq!(
                        mj.state,
                        JobState::Available,
                        "step {step}: leased a job that is not available"
                    );
                    let op = Op::Lease {
                        lease_id: j.lease_id.clone().unwrap(),
                        worker_id: "w1".into(),
                        lease_ms: Some(300),
                    };
                    apply(mj, op, now, 0.0).unwrap();
                }
            }
            1 => {
                let r = ack(&store, &t, complete(&id, &lease_id), now).await;
                let want = apply(
                    m,
                    Op::Complete {
                        lease_id,
                        result: Some(json!({ "ok": true })),
                    },
                    now,
                    0.0,
                );
                assert_eq!(
                    r.is_ok(),
                    want.is_ok(),
                    "step {step}: complete on {before:?}"
                );
            }
            2 => {
                let retryable = next(3) != 0;
                let r = ack(&store, &t, fail(&id, &lease_id, retryable, Some(100)), now).await;
                let op = Op::Fail {
                    lease_id,
                    message: "boom".into(),
                    code: Some("e".into()),
                    retryable,
                    retry_after_ms: Some(100),
                };
                let want = apply(m, op, now, 0.0);
                assert_eq!(r.is_ok(), want.is_ok(), "step {step}: fail on {before:?}");
            }
            3 => {
                store.job_reap_expired(now).await.unwrap();
                for j in model.values_mut() {
                    let _ = apply(j, Op::Expire, now, 0.0);
                }
            }
            4 => {
                store.job_promote_due(now).await.unwrap();
                for j in model.values_mut() {
                    let _ = apply(j, Op::Promote, now, 0.0);
                }
            }
            5 => {
                let r = store
                    .job_cancel(&JobCancel {
                        tenant_id: t.clone(),
                        id: id.clone(),
                        now,
                    })
                    .await;
                assert_eq!(
                    r.is_ok(),
                    apply(m, Op::Cancel, now, 0.0).is_ok(),
                    "step {step}: cancel on {before:?}"
                );
            }
            _ => {
                let r = store
                    .job_retry(&JobRetry {
                        tenant_id: t.clone(),
                        id: id.clone(),
                        now,
                    })
                    .await;
                assert_eq!(
                    r.is_ok(),
                    apply(m, Op::Retry, now, 0.0).is_ok(),
                    "step {step}: retry on {before:?}"
                );
            }
        }
        for (id, want) in &model {
            let got = store.job_get(&t, id).await.unwrap().unwrap();
            assert_eq!(
                (
                    got.state,
                    got.attempt,
                    got.run_at,
                    got.lease_id.clone(),
                    got.lease_expires_at,
                    got.finished_at
                ),
                (
                    want.state,
                    want.attempt,
                    want.run_at,
                    want.lease_id.clone(),
                    want.lease_expires_at,
                    want.finished_at
                ),
                "step {step}: store and model disagree on {id}"
            );
        }
        // The queue's counts and its listing by state agree with the model.
        let got = counts(&store, &t, "m").await;
        for s in JobState::ALL {
            let mut want: Vec<JobId> = model
                .values()
                .filter(|j| j.state == s)
                .map(|j| j.id.clone())
                .collect();
            want.sort_by(|a, b| b.cmp(a));
            assert_eq!(got[&s], want.len() as u64, "step {step}: count of {s:?}");
            assert_eq!(
                listed(&store, &t, "m", s).await,
                want,
                "step {step}: listing of {s:?}"
            );
        }
    }
    for (who, queue) in [(&t, "bystander"), (&other, "m")] {
        let c = counts(&store, who, queue).await;
        assert_eq!(c[&JobState::Available], 1, "{queue}: {c:?}");
        assert_eq!(c.values().sum::<u64>(), 1, "{queue}: {c:?}");
    }
}
