//! Queue counts (schema 4): kept by triggers whoever writes the jobs, folded by roll-ups,
//! filled from the jobs already there when a database is upgraded. Each check compares
//! the store's counts with a `GROUP BY` over the jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use vow_core::api::QueueView;
use vow_core::TenantId;
use vow_postgres::testing::{migrate_through, roll_up_counts, TestDb};
use vow_postgres::PgStore;
use vow_store_conformance::fixtures::{complete, insert_one, lease, tenant, DynStore, T0};

type Counts = BTreeMap<(String, String), i64>;

/// The counts a `GROUP BY` over the tenant's jobs gives (no zeros).
async fn truth(admin: &tokio_postgres::Client, t: &TenantId) -> Counts {
    admin
        .query(
            "SELECT queue, state, count(*) FROM jobs WHERE tenant_id = $1 GROUP BY 1, 2",
            &[&t.as_str()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// The store's counts of the tenant's queues (no zeros), from `queue_list` and, queue by
/// queue, `queue_get`, which must agree.
async fn counted(store: &DynStore, t: &TenantId) -> Counts {
    let listed = store.queue_list(t, T0).await.unwrap();
    let mut out = Counts::new();
    for q in &listed {
        let one = store.queue_get(t, &q.name, T0).await.unwrap().unwrap();
        assert_eq!(
            one.counts, q.counts,
            "queue {}: get and list disagree",
            q.name
        );
        add(&mut out, q);
    }
    out
}

fn add(out: &mut Counts, q: &QueueView) {
    let c = &q.counts;
    for (state, n) in [
        ("scheduled", c.scheduled),
        ("available", c.available),
        ("running", c.running),
        ("completed", c.completed),
        ("dead", c.dead),
        ("cancelled", c.cancelled),
    ] {
        if n > 0 {
            out.insert((q.name.to_string(), state.to_owned()), n as i64);
        }
    }
}

async fn deltas(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one("SELECT count(*) FROM queue_count_deltas", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn counts_stay_exact_across_roll_ups_and_whoever_writes_the_jobs() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let pg = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let store: DynStore = pg.clone();
    let t = tenant(&store, "t").await;
    let other = tenant(&store, "other").await;
    for _ in 0..5 {
        insert_one(&store, &t, "a", T0).await;
    }
    for _ in 0..3 {
        insert_one(&store, &t, "b", T0).await;
    }
    insert_one(&store, &other, "a", T0).await;
    let leased = lease(&store, &t, "a", 2, None, T0).await;
    complete(&*store, &t, &leased[0], T0).await;

    let want = truth(&admin, &t).await;
    assert_eq!(want.get(&("a".into(), "running".into())), Some(&1));
    assert_eq!(counted(&store, &t).await, want);
    assert_eq!(counted(&store, &other).await, truth(&admin, &other).await);

    // Folded into the totals, the counts read the same, and no delta is left. (A
    // roll-up of the node's own may have run first: then this one folds what is left.)
    roll_up_counts(&pg).await;
    until_folded(&admin).await;
    assert_eq!(counted(&store, &t).await, want);

    // Writes that do not go through this store (an operator's SQL, a node of an
    // earlier release during a rolling upgrade) are counted too.
    admin
        .batch_execute(&format!(
            "UPDATE jobs SET state = 'dead', finished_at = 1 \
               WHERE id = (SELECT id FROM jobs WHERE tenant_id = '{t}' AND queue = 'b' LIMIT 1); \
             DELETE FROM jobs WHERE tenant_id = '{t}' AND queue = 'a' AND state = 'completed';"
        ))
        .await
        .unwrap();
    let want = truth(&admin, &t).await;
    assert_eq!(want.get(&("b".into(), "dead".into())), Some(&1));
    assert_eq!(want.get(&("a".into(), "completed".into())), None);
    assert_eq!(counted(&store, &t).await, want);

    // An update that moves no job between states (a heartbeat) adds no delta.
    roll_up_counts(&pg).await;
    until_folded(&admin).await;
    admin
        .batch_execute("UPDATE jobs SET progress = '{}'")
        .await
        .unwrap();
    assert_eq!(deltas(&admin).await, 0);
    roll_up_counts(&pg).await;
    assert_eq!(counted(&store, &t).await, want);
    assert_eq!(counted(&store, &other).await, truth(&admin, &other).await);

    // Starting over.
    admin.batch_execute("TRUNCATE jobs").await.unwrap();
    assert_eq!(counted(&store, &t).await, Counts::new());
    insert_one(&store, &t, "a", T0).await;
    assert_eq!(counted(&store, &t).await, truth(&admin, &t).await);
}

#[tokio::test]
async fn one_roll_up_at_a_time() {
    let db = TestDb::fresh().await;
    let mut admin = db.client().await;
    let pg = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let store: DynStore = pg.clone();
    let t = tenant(&store, "t").await;
    // Another node's roll-up holds the lock (the key is "vow-cnts").
    let other = admin.transaction().await.unwrap();
    other
        .execute("SELECT pg_advisory_xact_lock(8534170855715796083)", &[])
        .await
        .unwrap();
    insert_one(&store, &t, "a", T0).await;
    assert_eq!(
        roll_up_counts(&pg).await,
        0,
        "the lock is taken: nothing folded"
    );
    let n: i64 = other
        .query_one("SELECT count(*) FROM queue_count_deltas", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0, "the deltas are still there");
    other.rollback().await.unwrap();
    // Folded now (by this call, or by the node's own roll-up first).
    roll_up_counts(&pg).await;
    until_folded(&admin).await;
    assert_eq!(counted(&store, &t).await, truth(&admin, &t).await);
}

/// Waits (bounded) until no delta is left.
async fn until_folded(admin: &tokio_postgres::Client) {
    let mut left = -1;
    for _ in 0..50 {
        left = deltas(admin).await;
        if left == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{left} deltas left after 5 s");
}

#[tokio::test]
async fn a_node_folds_the_deltas_by_itself() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let store: DynStore = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let t = tenant(&store, "t").await;
    for _ in 0..3 {
        insert_one(&store, &t, "a", T0).await;
    }
    // The enqueues left deltas (see the test above); the node's own roll-ups fold them.
    until_folded(&admin).await;
    assert_eq!(counted(&store, &t).await, truth(&admin, &t).await);
}

/// SQL inserting jobs `job_<from>` to `job_<to>` of tenant `t` as a writer that is not
/// this store would: `queue` and `state` are SQL expressions of the job's number `i`.
fn raw_jobs(t: &str, queue: &str, state: &str, from: i32, to: i32) -> String {
    format!(
        "INSERT INTO jobs (id, tenant_id, queue, state, priority, max_attempts, run_at, \
           created_at, timeout_ms, backoff, tags, metadata, payload) \
         SELECT 'job_' || i, '{t}', {queue}, {state}, 0, 3, 0, 0, 1000, '{{}}', '[]', '{{}}', \
           '{{}}' FROM generate_series({from}, {to}) AS i"
    )
}

#[tokio::test]
async fn a_database_an_older_release_left_gets_its_counts_from_its_jobs() {
    let db = TestDb::fresh().await;
    let mut admin = db.client().await;
    // Schema 3, as the previous release left it, with jobs in it.
    migrate_through(&mut admin, 3).await;
    let t = "ten_01M99C11YTSE6E7EQ0XN3H3KQA";
    admin
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ('{t}', 'old', 0); \
             INSERT INTO queues (tenant_id, name, created_at) VALUES ('{t}', 'a', 0), ('{t}', 'b', 0); \
             {};",
            raw_jobs(
                t,
                "CASE WHEN i % 3 = 0 THEN 'b' ELSE 'a' END",
                "(ARRAY['available', 'running', 'completed', 'dead'])[1 + i % 4]",
                1,
                50
            )
        ))
        .await
        .unwrap();
    let t: TenantId = t.parse().unwrap();
    let want = truth(&admin, &t).await;
    assert_eq!(want.values().sum::<i64>(), 50);

    let store: DynStore = Arc::new(PgStore::connect(&db.url).await.unwrap());
    assert_eq!(counted(&store, &t).await, want);
}

/// Between the migration that adds the triggers and the one that counts the jobs
/// already there, writes go on (nodes of the previous release): each is counted once.
#[tokio::test]
async fn writes_between_the_triggers_and_the_first_count_are_counted_once() {
    let db = TestDb::fresh().await;
    let mut admin = db.client().await;
    migrate_through(&mut admin, 3).await;
    let t = "ten_01M99C11YTSE6E7EQ0XN3H3KQA";
    let jobs = |from, to| raw_jobs(t, "'a'", "'available'", from, to);
    admin
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ('{t}', 'old', 0); \
             INSERT INTO queues (tenant_id, name, created_at) VALUES ('{t}', 'a', 0); {};",
            jobs(1, 10)
        ))
        .await
        .unwrap();
    migrate_through(&mut admin, 4).await;
    admin
        .batch_execute(&format!(
            "{}; UPDATE jobs SET state = 'running' WHERE id IN ('job_1', 'job_11'); \
             DELETE FROM jobs WHERE id = 'job_2';",
            jobs(11, 15)
        ))
        .await
        .unwrap();
    assert!(
        deltas(&admin).await > 0,
        "the triggers counted those writes"
    );
    let t: TenantId = t.parse().unwrap();
    let want = truth(&admin, &t).await;
    assert_eq!(want.values().sum::<i64>(), 14);

    let store: DynStore = Arc::new(PgStore::connect(&db.url).await.unwrap());
    assert_eq!(counted(&store, &t).await, want);
}
