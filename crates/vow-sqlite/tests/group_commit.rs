//! Concurrent writes share commits: durability does not cost one fsync per request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use vow_core::api::EnqueueRequest;
use vow_core::limits::Limits;
use vow_core::{TenantId, Timestamp};
use vow_store::{JobInsertMany, Store, TenantInsert};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_share_fsyncs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vow.db");
    let store = Arc::new(vow_sqlite::SqliteStore::open(&path).unwrap());
    let tenant = TenantId::generate();
    let now = Timestamp(1_000);
    store
        .tenant_insert(&TenantInsert {
            id: tenant.clone(),
            name: "t".parse().unwrap(),
            max_pending: None,
            now,
        })
        .await
        .unwrap();
    let before = (
        store.writer_stats().commits.load(Ordering::Relaxed),
        store.writer_stats().commands.load(Ordering::Relaxed),
    );

    const N: usize = 400;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (store, tenant) = (store.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let job = EnqueueRequest::new(json!({ "i": i }))
                .validate(&Limits::default(), now, None, None)
                .unwrap();
            let id = job.id.clone();
            store
                .job_insert_many(JobInsertMany {
                    tenant_id: tenant,
                    queue: "q".parse().unwrap(),
                    jobs: vec![job],
                    now,
                })
                .await
                .unwrap();
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let commits = store.writer_stats().commits.load(Ordering::Relaxed) - before.0;
    let commands = store.writer_stats().commands.load(Ordering::Relaxed) - before.1;
    assert_eq!(commands, N as u64);
    assert!(
        commits < commands / 2,
        "{commits} commits for {commands} concurrent writes: no group commit"
    );

    // Everything acknowledged is in the file.
    drop(store);
    let reopened = vow_sqlite::SqliteStore::open(&path).unwrap();
    for id in &ids {
        assert!(reopened.job_get(&tenant, id).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn the_writer_survives_a_failing_command_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = vow_sqlite::SqliteStore::open(dir.path().join("vow.db")).unwrap();
    store.ready().await.unwrap();
    let tenant = TenantId::generate();
    let now = Timestamp(1_000);
    let insert = |name: &str| TenantInsert {
        id: TenantId::generate(),
        name: name.parse().unwrap(),
        max_pending: None,
        now,
    };
    store
        .tenant_insert(&TenantInsert {
            id: tenant,
            ..insert("t")
        })
        .await
        .unwrap();
    // A command that fails (duplicate name) rolls back alone, even within a group.
    let (again, fresh) = (insert("t"), insert("u"));
    let (dup, ok) = tokio::join!(store.tenant_insert(&again), store.tenant_insert(&fresh));
    assert!(dup.is_err());
    assert!(ok.is_ok());
    assert_eq!(store.tenant_list().await.unwrap().len(), 2);
    store.ready().await.unwrap();
}
