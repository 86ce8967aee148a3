//! Several nodes (stores) on one PostgreSQL: wake-ups and events cross nodes through
//! LISTEN/NOTIFY, and a PostgreSQL outage is an error (never a hang) that the nodes
//! recover from by themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vow_core::api::EnqueueRequest;
use vow_core::limits::Limits;
use vow_core::{JobState, QueueName, TenantId, Timestamp};
use vow_postgres::testing::{Cluster, TestDb};
use vow_postgres::PgStore;
use vow_store::{AckItem, JobAckMany, JobInsertMany, JobLease, Store, StoreError, TenantInsert};
use vow_store_conformance::fixtures::complete;

const T0: Timestamp = Timestamp(1_767_225_600_000);

async fn node(db: &TestDb) -> Arc<PgStore> {
    let url = format!(
        "{}?pool_size=4&pool_timeout_ms=1000&statement_timeout_ms=2000",
        db.url
    );
    Arc::new(PgStore::connect(&url).await.unwrap())
}

async fn tenant(store: &PgStore) -> TenantId {
    let id = TenantId::generate();
    store
        .tenant_insert(&TenantInsert {
            id: id.clone(),
            name: "t".parse().unwrap(),
            max_pending: None,
            now: T0,
        })
        .await
        .unwrap();
    id
}

fn enqueue(t: &TenantId, q: &QueueName, n: usize) -> JobInsertMany {
    let jobs = (0..n)
        .map(|i| {
            let req: EnqueueRequest = serde_json::from_value(json!({ "payload": i })).unwrap();
            req.validate(&Limits::default(), T0, None, None).unwrap()
        })
        .collect();
    JobInsertMany {
        tenant_id: t.clone(),
        queue: q.clone(),
        jobs,
        now: T0,
    }
}

/// The next event of `job` on a bus subscription; fails with `what` after 2 s.
async fn next_event_of(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<vow_store::BusEvent>>,
    job: &vow_core::JobId,
    what: &str,
) -> Arc<vow_store::BusEvent> {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.event.job_id == *job {
                return ev;
            }
        }
    })
    .await
    .expect(what)
}

/// Two nodes on a fresh database, each listening, and a tenant.
async fn two_listening_nodes() -> (TestDb, Arc<PgStore>, Arc<PgStore>, TenantId) {
    let db = TestDb::fresh().await;
    let (a, b) = (node(&db).await, node(&db).await);
    let t = tenant(&a).await;
    until_listening(&b, &a, &t).await;
    until_listening(&a, &b, &t).await;
    (db, a, b, t)
}

/// Leases one job of `q` at `T0`.
async fn lease_one(node: &PgStore, t: &TenantId, q: &QueueName) -> Vec<vow_core::Job> {
    node.job_lease(&JobLease {
        tenant_id: t.clone(),
        queue: q.clone(),
        worker_id: "w".into(),
        max_jobs: 1,
        lease_ms: None,
        now: T0,
    })
    .await
    .unwrap()
}

/// Waits until `node`'s listener is connected: a notification from `other` arrives.
async fn until_listening(node: &PgStore, other: &PgStore, t: &TenantId) {
    let probe: QueueName = "probe".parse().unwrap();
    let waiter = node.bus().queue_waiter(t, &probe);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let woken = waiter.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if other.job_insert_many(enqueue(t, &probe, 1)).await.is_ok()
            && tokio::time::timeout(Duration::from_millis(500), woken)
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the listener never connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_one_node_wakes_a_lease_and_a_waiter_on_another() {
    let (_db, a, b, t) = two_listening_nodes().await;
    let q: QueueName = "q".parse().unwrap();
    let mut events = b.bus().subscribe();
    let waiter = b.bus().queue_waiter(&t, &q);
    let woken = waiter.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    let sent = Instant::now();
    let job = a.job_insert_many(enqueue(&t, &q, 1)).await.unwrap()[0]
        .job
        .clone();
    tokio::time::timeout(Duration::from_secs(2), woken)
        .await
        .expect("node b is woken by node a's enqueue");
    let latency = sent.elapsed();
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
    // Node b leases it, node a sees the `leased` event on its bus.
    let mut a_events = a.bus().subscribe();
    let leased = lease_one(&b, &t, &q).await;
    assert_eq!(leased[0].id, job.id);
    // b heard of the enqueue from a; a hears of the lease from b; both with the stored seq.
    let stored = a.job_event_list(&t, &job.id).await.unwrap();
    let got = next_event_of(&mut events, &job.id, "a's enqueued event reaches b").await;
    assert_eq!(got.event, stored[0]);
    let got = next_event_of(
        &mut a_events,
        &job.id,
        "b's leased event reaches a (once: from b's NOTIFY)",
    )
    .await;
    assert_eq!(got.event, stored[1]);
    assert_eq!(got.event.to_state, JobState::Running);

    // A failure's event can exceed a notification's 8000 bytes (a worker's message may
    // hold 16 KiB): it still reaches a, whole, and in order behind what came before.
    let message = "x".repeat(16 * 1024);
    let done = b
        .job_ack_many(JobAckMany {
            tenant_id: t.clone(),
            items: vec![AckItem::Fail {
                id: job.id.clone(),
                lease_id: leased[0].lease_id.clone().unwrap(),
                message: message.clone(),
                code: None,
                retryable: false,
                retry_after_ms: None,
            }],
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(done[0].as_ref().unwrap().state, JobState::Dead);
    let stored = a.job_event_list(&t, &job.id).await.unwrap();
    let got = next_event_of(
        &mut a_events,
        &job.id,
        "b's oversized failure event reaches a",
    )
    .await;
    assert_eq!(got.event, stored[2]);
    assert_eq!(got.event.to_state, JobState::Dead);
    assert!(got
        .event
        .detail
        .as_ref()
        .unwrap()
        .to_string()
        .contains(&message));
}

/// A node's notifications reach the others in the order its writes were answered: a
/// worker on node a that leases and completes jobs back to back, and node b's bus hears
/// every event of every job, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_events_reach_the_others_in_the_order_it_answered_them() {
    let (_db, a, b, t) = two_listening_nodes().await;
    let q: QueueName = "ordered".parse().unwrap();
    let mut heard = b.bus().subscribe();
    let n = 40;
    a.job_insert_many(enqueue(&t, &q, n)).await.unwrap();
    let mut answered = Vec::new();
    for _ in 0..n {
        let leased = lease_one(&a, &t, &q).await;
        let job = &leased[0];
        complete(&*a, &t, job, T0).await;
        for ev in a.job_event_list(&t, &job.id).await.unwrap() {
            answered.push(ev.seq);
        }
    }
    // Per job: enqueued, leased, completed; the enqueues all came first.
    let mut got = Vec::new();
    let mut enqueued = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 2 * n {
            let ev = heard.recv().await.unwrap();
            if ev.event.queue != q {
                continue;
            }
            if ev.event.from_state.is_none() {
                enqueued += 1;
            } else {
                got.push(ev.event.seq);
            }
        }
    })
    .await
    .expect("b hears every lease and completion");
    assert_eq!(enqueued, n);
    let expected: Vec<i64> = answered
        .chunks(3)
        .flat_map(|job| job[1..].to_vec())
        .collect();
    assert_eq!(got, expected, "heard out of the order they were answered");
}

/// A node that has heard of no other node sends no notifications (nobody would act on
/// them). A node that starts says hello before it serves, so the others notify it at
/// once; and it asks who is there, so it notifies them once its first seconds are over
/// (the others' own hellos come only every ten seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_sends_no_notifications_and_a_new_node_is_known_at_once() {
    let db = TestDb::fresh().await;
    // Everything sent on the channel, as a listener that is no node sees it.
    let (spy, mut spy_conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| spy_conn.poll_message(cx));
        while let Some(Ok(m)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = heard_tx.send(n.payload().to_owned());
            }
        }
    });
    spy.batch_execute("LISTEN vow").await.unwrap();
    let a = node(&db).await;
    let t = tenant(&a).await;
    let q: QueueName = "q".parse().unwrap();
    // Past a's first seconds (after a (re)connect a node counts on unheard peers).
    let grace = Duration::from_millis(2_500);
    tokio::time::sleep(grace).await;
    while heard.try_recv().is_ok() {}
    a.job_insert_many(enqueue(&t, &q, 3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut effects = 0;
    while let Ok(p) = heard.try_recv() {
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        if v.get("w").is_some() || v.get("e").is_some() {
            effects += 1;
        }
    }
    assert_eq!(effects, 0, "a lone node notified its writes");

    // b starts (it says hello before `connect` returns, and asks who is there). Past
    // its first seconds, and before a's next hello, b knows of a: a answered.
    let b = node(&db).await;
    tokio::time::sleep(grace).await;
    enqueue_wakes(&b, &a, &t, &q, "b notifies a, which answered b's question").await;
    // And a notifies b (it heard b's hello).
    enqueue_wakes(&a, &b, &t, &q, "a notifies b").await;
}

/// An enqueue of `q` on `from` wakes a lease waiting on `to` within 500 ms; fails with
/// `what` otherwise.
async fn enqueue_wakes(from: &PgStore, to: &PgStore, t: &TenantId, q: &QueueName, what: &str) {
    let waiter = to.bus().queue_waiter(t, q);
    let woken = waiter.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    from.job_insert_many(enqueue(t, q, 1)).await.unwrap();
    tokio::time::timeout(Duration::from_millis(500), woken)
        .await
        .expect(what);
}

/// A fresh database, a node `b` on it with a tenant, and what `b`'s bus hears.
async fn a_node_listening() -> (
    TestDb,
    Arc<PgStore>,
    TenantId,
    tokio::sync::broadcast::Receiver<Arc<vow_store::BusEvent>>,
) {
    let db = TestDb::fresh().await;
    let b = node(&db).await;
    let t = tenant(&b).await;
    let heard = b.bus().subscribe();
    (db, b, t, heard)
}

/// Runs `body` with a node `a` of its own (`body` gets it, the tenant and the database
/// URL) that listens beside `b`, on a runtime of its own, dropped with every task on it
/// as soon as `body` returns: as when a process exits.
async fn on_a_node_of_its_own<T, F, Fut>(url: &str, b: &Arc<PgStore>, t: &TenantId, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Arc<PgStore>, TenantId, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (url, b, t) = (url.to_owned(), b.clone(), t.clone());
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let a = Arc::new(
                PgStore::connect(&format!("{url}?pool_size=2"))
                    .await
                    .unwrap(),
            );
            until_listening(&b, &a, &t).await;
            body(a, t, url).await
        })
    })
    .await
    .unwrap()
}

/// A node that shuts down right after a write still tells the others of it: closing
/// the store sends the notifications still queued. Node `a` runs on a runtime of its
/// own, dropped (with every task on it) as soon as `close` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_closing_sends_its_queued_notifications_first() {
    let (db, b, t, mut heard) = a_node_listening().await;
    let last = on_a_node_of_its_own(&db.url, &b, &t, |a, t, _| async move {
        let q: QueueName = "last".parse().unwrap();
        let job = a.job_insert_many(enqueue(&t, &q, 1)).await.unwrap()[0]
            .job
            .id
            .clone();
        a.close().await;
        job
    })
    .await;
    next_event_of(&mut heard, &last, "the other node hears the last write").await;
}

/// Closing a node waits for the writes still running, so the others hear of them
/// too, and refuses new ones. Node `a`'s write takes 300 ms to commit (a deferred
/// trigger) and its caller gives up after 50 ms; `a` then closes and its runtime is
/// dropped, with every task on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_closing_waits_for_its_writes_in_flight() {
    let (db, b, t, mut heard) = a_node_listening().await;
    let refused = on_a_node_of_its_own(&db.url, &b, &t, |a, t, url| async move {
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$; \
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON jobs \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
                 EXECUTE FUNCTION slow_commit();",
            )
            .await
            .unwrap();
        let q: QueueName = "late".parse().unwrap();
        let gone = tokio::time::timeout(
            Duration::from_millis(50),
            a.job_insert_many(enqueue(&t, &q, 1)),
        )
        .await;
        assert!(gone.is_err(), "the caller gave up first");
        a.close().await;
        a.job_insert_many(enqueue(&t, &q, 1)).await
    })
    .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let late = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let e = heard.recv().await.unwrap();
            if e.event.queue.as_str() == "late" {
                break e;
            }
        }
    })
    .await
    .expect("the other node hears of the write that was in flight");
    assert_eq!(late.tenant_id, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_not_a_hang_and_the_nodes_recover() {
    let cluster = tokio::task::spawn_blocking(Cluster::throwaway)
        .await
        .unwrap();
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    let db = tokio::task::spawn_blocking(move || c.database())
        .await
        .unwrap();
    let (a, b) = (node(&db).await, node(&db).await);
    let t = tenant(&a).await;
    until_listening(&b, &a, &t).await;
    let q: QueueName = "q".parse().unwrap();
    let before = a.job_insert_many(enqueue(&t, &q, 10)).await.unwrap();

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    let started = Instant::now();
    for r in [
        a.ready().await.map(|_| ()),
        a.job_insert_many(enqueue(&t, &q, 1)).await.map(|_| ()),
        b.job_get(&t, &before[0].job.id).await.map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "during the outage: {r:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "errors came fast: {:?}",
        started.elapsed()
    );

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.ready().await.is_err() || b.ready().await.is_err() {
        assert!(Instant::now() < deadline, "the nodes did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing acknowledged before the outage is lost.
    for ins in &before {
        assert!(b.job_get(&t, &ins.job.id).await.unwrap().is_some());
    }
    // The listener reconnected by itself: cross-node wake-ups work again.
    until_listening(&b, &a, &t).await;
}

/// Nodes that start together on an empty database all come up: one applies the
/// migrations (the retention index is built `CONCURRENTLY`, outside a transaction)
/// while the others wait for it without holding a snapshot it would wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_all_apply_or_wait_for_the_migrations() {
    let db = TestDb::fresh().await;
    let nodes = futures::future::join_all((0..4).map(|_| {
        let url = format!("{}?pool_size=2&statement_timeout_ms=5000", db.url);
        async move { PgStore::connect(&url).await }
    }))
    .await;
    for n in nodes {
        let n = n.expect("every node starts");
        n.ready().await.expect("and finds the schema current");
    }
}
