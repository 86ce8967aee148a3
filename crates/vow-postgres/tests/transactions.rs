//! Write transactions are pipelined (`BEGIN` rides with the first statement), so the
//! store ends them itself. These tests hold it to that: a failed or cancelled write
//! leaves no open transaction on a pooled connection, and nothing half-written; a
//! committed write is answered as such whatever becomes of its notification. They also
//! check what every session runs with, and the plans of the hot statements.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vow_postgres::testing::TestDb;
use vow_postgres::PgStore;
use vow_store::*;
use vow_store_conformance::fixtures::{
    complete, insert, insert_one, lease, new_job, tenant, DynStore, T0,
};

/// One pooled connection: a transaction left open would be inherited by the next call.
async fn single_connection_store(db: &TestDb) -> DynStore {
    let url = format!("{}?pool_size=1&pool_timeout_ms=2000", db.url);
    Arc::new(PgStore::connect(&url).await.unwrap())
}

/// Sessions of the store's database that sit inside a transaction.
async fn open_transactions(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'vow' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits up to five seconds for no session to be inside a transaction; fails otherwise.
async fn settled(admin: &tokio_postgres::Client) {
    for _ in 0..500 {
        if open_transactions(admin).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a cancelled write left its connection inside a transaction");
}

#[tokio::test]
async fn a_failed_write_rolls_back_and_the_connection_goes_on() {
    let db = TestDb::fresh().await;
    let store = single_connection_store(&db).await;
    let t = tenant(&store, "acme").await;
    let job = insert_one(&store, &t, "q", T0).await;
    let leased = lease(&store, &t, "q", 1, None, T0).await;
    assert_eq!(leased.len(), 1);
    let cancel = JobCancel {
        tenant_id: t.clone(),
        id: job.id.clone(),
        now: T0,
    };
    store.job_cancel(&cancel).await.unwrap();
    // Cancelling again is refused inside the transaction: it must be rolled back.
    for _ in 0..3 {
        let again = store.job_cancel(&cancel).await;
        assert!(
            matches!(again, Err(StoreError::InvalidState(_))),
            "{again:?}"
        );
    }
    // The one connection is usable: not stuck in an aborted or open transaction.
    let more = insert(&store, &t, "q", vec![json!({ "payload": 2 })], T0).await;
    assert_eq!(more.len(), 1);
    let admin = db.client().await;
    assert_eq!(open_transactions(&admin).await, 0);
}

#[tokio::test]
async fn a_cancelled_write_leaves_no_open_transaction_and_no_half_of_itself() {
    let db = TestDb::fresh().await;
    let store = single_connection_store(&db).await;
    let t = tenant(&store, "acme").await;
    let admin = db.client().await;
    let mut ok = 0usize;
    // Cancel enqueues at every point of their flight: before BEGIN, between the body's
    // statements, around COMMIT.
    for i in 0..200u64 {
        let limit = Duration::from_micros(50 * (i % 40));
        let p = JobInsertMany {
            tenant_id: t.clone(),
            queue: "q".parse().unwrap(),
            jobs: vec![new_job(json!({ "payload": i }), T0, None)],
            now: T0,
        };
        match tokio::time::timeout(limit, store.job_insert_many(p)).await {
            Ok(r) => {
                r.unwrap();
                ok += 1;
            }
            // The cancelled call's session must not linger inside a transaction (its
            // connection is closed, which PostgreSQL sees within moments).
            Err(_) => settled(&admin).await,
        }
    }
    // Every call after the cancellations still gets the one connection and works.
    let last = insert(&store, &t, "q", vec![json!({ "payload": "last" })], T0).await;
    assert_eq!(last.len(), 1);
    assert_eq!(open_transactions(&admin).await, 0);
    // Each job that exists came with its event, and every acknowledged one exists.
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM jobs WHERE tenant_id = $1), \
                    (SELECT count(*) FROM job_events WHERE tenant_id = $1 AND kind = 'enqueued')",
            &[&t.as_str()],
        )
        .await
        .unwrap();
    let (jobs, events): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(jobs, events, "a job without its event, or the reverse");
    assert!(
        jobs as usize > ok,
        "{jobs} jobs stored, {ok} inserts answered (+1 last)"
    );
}

/// The lease walks `jobs_lease` in order even on a table the planner has no statistics
/// for (a new database, or autovacuum off), where it would otherwise sort every
/// available job of the queue on each lease.
/// A fresh database whose `jobs` table autovacuum never visits, so that no autoanalyze
/// sneaks in between a test's inserts and its EXPLAIN; a single-connection store on it,
/// a plain connection, and a tenant.
async fn jobs_never_analyzed() -> (TestDb, DynStore, tokio_postgres::Client, vow_core::TenantId) {
    let db = TestDb::fresh().await;
    let store = single_connection_store(&db).await;
    let admin = db.client().await;
    admin
        .batch_execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let t = tenant(&store, "acme").await;
    (db, store, admin, t)
}

#[tokio::test]
async fn the_lease_walks_its_index_without_statistics() {
    let (_db, store, mut admin, t) = jobs_never_analyzed().await;
    let reqs = (0..10_000).map(|i| json!({ "payload": i })).collect();
    insert(&store, &t, "q", reqs, T0).await;
    let tx = admin.transaction().await.unwrap();
    let analyzed: f32 = tx
        .query_one("SELECT reltuples FROM pg_class WHERE relname = 'jobs'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(analyzed < 0.0, "the jobs table has no statistics yet");
    let (sql, settings) = vow_postgres::testing::lease_statement();
    tx.batch_execute(settings).await.unwrap();
    // The lease's commit does not wait for the WAL flush: it promises nothing durable.
    assert_eq!(show(&tx, "synchronous_commit").await, "off");
    let none: Option<i64> = None;
    let lease_ids = vec!["lease".to_owned()];
    let plan: Vec<String> = tx
        .query(
            &format!("EXPLAIN {sql}"),
            &[&t.as_str(), &"q", &1i64, &"w", &T0.0, &none, &lease_ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("using jobs_lease on jobs"), "{plan}");
    assert!(!plan.contains("Sort Key: jobs.priority"), "{plan}");
    // The store's sessions run generic plans (`plan_cache_mode`): that one too.
    tx.batch_execute(&format!("PREPARE lease AS {sql}"))
        .await
        .unwrap();
    let plan = generic_plan(
        &tx,
        &format!("lease('{t}', 'q', 1, 'w', {}, NULL, ARRAY['lease'])", T0.0),
    )
    .await;
    assert!(plan.contains("using jobs_lease on jobs"), "{plan}");
    assert!(!plan.contains("Sort Key: jobs.priority"), "{plan}");
}

/// A queue's oldest available job is found by probing `jobs_lease` once per priority,
/// statistics or not, never by reading every available job.
#[tokio::test]
async fn the_oldest_available_job_is_a_probe_per_priority() {
    let (_db, store, mut admin, t) = jobs_never_analyzed().await;
    // The oldest jobs have the lowest priority (the last to probe).
    for (priority, age) in [(0, 0), (1, 500), (2, 1_000)] {
        let reqs = (0..2_000)
            .map(|i| json!({ "payload": i, "priority": priority }))
            .collect();
        insert(&store, &t, "q", reqs, vow_core::Timestamp(T0.0 - age)).await;
    }
    let tx = admin.transaction().await.unwrap();
    let sql = vow_postgres::testing::oldest_statement();
    tx.batch_execute(&format!("PREPARE oldest AS {sql}"))
        .await
        .unwrap();
    let plan = generic_plan(&tx, &format!("oldest('{t}', 'q')")).await;
    assert!(plan.contains("using jobs_lease on jobs"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
    let oldest: Option<i64> = tx
        .query_one(sql, &[&t.as_str(), &"q"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(oldest, Some(T0.0 - 1_000));
}

/// The deliveries claim, under the lease's settings and with its generic plan, walks
/// `deliveries_due` and stops at its limit, however many deliveries are pending (a sort
/// of all of them made every claim cost 13 ms at a few thousand, 34 ms at 10,000).
#[tokio::test]
async fn the_deliveries_claim_walks_its_index() {
    let db = TestDb::fresh().await;
    let _store = single_connection_store(&db).await;
    let mut admin = db.client().await;
    admin
        .batch_execute(
            "INSERT INTO deliveries (id, tenant_id, job_id, event, url, endpoint, body, state, \
               next_attempt_at, created_at) \
             SELECT 'd' || i, 't', 'j' || i, 'job.completed', 'https://example.com/', \
               'https://example.com', '{}', 'pending', 0, 0 FROM generate_series(1, 10000) i; \
             ANALYZE deliveries",
        )
        .await
        .unwrap();
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute(vow_postgres::testing::claim_settings())
        .await
        .unwrap();
    let sql = vow_postgres::testing::claim_statement(128);
    tx.batch_execute(&format!("PREPARE claim AS {sql}"))
        .await
        .unwrap();
    let plan = generic_plan(&tx, "claim(1, '{}', '{}')").await;
    assert!(
        plan.contains("using deliveries_due on deliveries"),
        "{plan}"
    );
    assert!(!plan.contains("Sort Key"), "{plan}");
}

/// The generic plan of `execute` (`name(args)` of a prepared statement), the one the
/// store's sessions run.
async fn generic_plan(tx: &tokio_postgres::Transaction<'_>, execute: &str) -> String {
    tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let plan: Vec<String> = tx
        .query(&format!("EXPLAIN EXECUTE {execute}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.batch_execute("SET LOCAL plan_cache_mode = auto")
        .await
        .unwrap();
    plan.join("\n")
}

/// A tenant created after the last `ANALYZE` is estimated at one row. Its lookups by id
/// must still walk the id's index, not an index that starts with `tenant_id` (which
/// would filter every one of its jobs for the id: 17 ms a job lock at 20,000 jobs).
#[tokio::test]
async fn lookups_by_id_walk_the_ids_index_for_a_tenant_the_statistics_have_not_seen() {
    let db = TestDb::fresh().await;
    let store = single_connection_store(&db).await;
    let mut admin = db.client().await;
    admin
        .batch_execute(
            "ALTER TABLE jobs SET (autovacuum_enabled = false); \
             ALTER TABLE job_events SET (autovacuum_enabled = false); \
             ALTER TABLE deliveries SET (autovacuum_enabled = false); \
             ALTER TABLE webhooks SET (autovacuum_enabled = false)",
        )
        .await
        .unwrap();
    // Deliveries and subscriptions of a tenant, `d<tenant>-<i>` and `w<tenant>-<i>`.
    let seed = |t: &vow_core::TenantId| {
        format!(
            "INSERT INTO deliveries (id, tenant_id, job_id, event, url, endpoint, body, state, \
               next_attempt_at, created_at) \
             SELECT 'd{t}-' || i, '{t}', 'j' || i, 'job.completed', 'https://example.com/', \
               'https://example.com', '{{}}', 'delivered', NULL, 0 FROM generate_series(1, 5000) i; \
             INSERT INTO webhooks (id, tenant_id, url, events, secret, created_at) \
             SELECT 'w{t}-' || i, '{t}', 'https://example.com/', '{{job.completed}}', 's', i \
             FROM generate_series(1, 5000) i"
        )
    };
    let old = tenant(&store, "old").await;
    let reqs = |n| (0..n).map(|i| json!({ "payload": i })).collect();
    insert(&store, &old, "q", reqs(5_000), T0).await;
    admin.batch_execute(&seed(&old)).await.unwrap();
    admin.batch_execute("ANALYZE").await.unwrap();
    let new = tenant(&store, "new").await;
    let ids = insert(&store, &new, "q", reqs(5_000), T0).await;
    admin.batch_execute(&seed(&new)).await.unwrap();
    let job_id = ids[ids.len() / 2].job.id.as_str().to_owned();
    let tx = admin.transaction().await.unwrap();
    for (sql, table, index) in vow_postgres::testing::lookups_by_id() {
        let id = match table {
            "deliveries" => format!("d{new}-2500"),
            "webhooks" => format!("w{new}-2500"),
            _ => job_id.clone(),
        };
        let st = tx.prepare(&format!("EXPLAIN {sql}")).await.unwrap();
        let one = vec![id.clone()];
        let by_array = st.params()[0] == tokio_postgres::types::Type::TEXT_ARRAY;
        let rows = if by_array {
            tx.query(&st, &[&one, &new.as_str()]).await
        } else {
            tx.query(&st, &[&id, &new.as_str()]).await
        };
        let plan: Vec<String> = rows.unwrap().iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        assert!(plan.contains(&format!("using {index} on")), "{sql}\n{plan}");
        tx.batch_execute(&format!("DEALLOCATE ALL; PREPARE lookup AS {sql}"))
            .await
            .unwrap();
        let arg = if by_array {
            format!("ARRAY['{id}']")
        } else {
            format!("'{id}'")
        };
        let plan = generic_plan(&tx, &format!("lookup({arg}, '{new}')")).await;
        assert!(plan.contains(&format!("using {index} on")), "{sql}\n{plan}");
    }
}

/// A write is committed before its notification to the other nodes is sent, and the
/// notification cannot fail it: here the store's role may not call `pg_notify`, so every
/// notification (and its retry) fails, and every write is still answered as done.
#[tokio::test]
async fn a_write_whose_notification_fails_is_answered_as_committed() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let role = format!("vow_mute_{:08x}", rand::random::<u32>());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA public TO {role}; \
             REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC"
        ))
        .await
        .unwrap();
    let mut config = vow_postgres::PgConfig::from_url(&format!("{}?pool_size=2", db.url)).unwrap();
    config.pg.user(&role);
    let store: DynStore = Arc::new(PgStore::open(config.clone()).await.unwrap());
    // The role really cannot notify.
    let (mute, conn) = config.pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let refused = mute.batch_execute("SELECT pg_notify('vow', 'x')").await;
    assert!(refused.is_err(), "pg_notify was allowed");
    // Another node says hello (the superuser may notify), so the store has a peer to
    // notify, and tries.
    admin
        .batch_execute(r#"SELECT pg_notify('vow', '{"n":"elsewhere","h":true}')"#)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = tenant(&store, "acme").await;
    let job = insert_one(&store, &t, "q", T0).await;
    let leased = lease(&store, &t, "q", 1, None, T0).await;
    assert_eq!(leased[0].id, job.id);
    let done = complete(&*store, &t, &leased[0], T0).await;
    assert_eq!(done.state, vow_core::JobState::Completed);
    let stored = store.job_get(&t, &job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, vow_core::JobState::Completed);

    drop((store, mute));
    admin
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_notify(text, text) TO PUBLIC; \
             DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}

/// Every pooled session commits durably and runs its prepared statements with their
/// generic plan, whatever the database's own defaults say.
#[tokio::test]
async fn sessions_commit_durably_and_plan_generically_whatever_the_defaults() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let name: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET synchronous_commit = off; \
             ALTER DATABASE {name} SET plan_cache_mode = force_custom_plan"
        ))
        .await
        .unwrap();
    let store = PgStore::connect(&format!("{}?pool_size=1", db.url))
        .await
        .unwrap();
    use vow_postgres::testing::session_setting;
    assert_eq!(session_setting(&store, "synchronous_commit").await, "on");
    assert_eq!(
        session_setting(&store, "plan_cache_mode").await,
        "force_generic_plan"
    );
    // The database's defaults did apply to other sessions.
    let (other, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(show(&other, "synchronous_commit").await, "off");
}

/// A setting's value in `c`'s session (or transaction).
async fn show(c: &impl tokio_postgres::GenericClient, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// A lease runs with its `COMMIT` in one round trip. When the statement fails (here: the
/// lease deadline overflows `int8`), PostgreSQL turns that `COMMIT` into a rollback:
/// nothing is leased, the error is the caller's, and the connection goes on.
#[tokio::test]
async fn a_failing_last_statement_sent_with_its_commit_commits_nothing() {
    let db = TestDb::fresh().await;
    let store = single_connection_store(&db).await;
    let admin = db.client().await;
    let t = tenant(&store, "acme").await;
    let job = insert_one(&store, &t, "q", T0).await;
    let failed = store
        .job_lease(&JobLease {
            tenant_id: t.clone(),
            queue: "q".parse().unwrap(),
            worker_id: "w".into(),
            max_jobs: 1,
            lease_ms: Some(i64::MAX as u64),
            now: T0,
        })
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(open_transactions(&admin).await, 0);
    let stored = store.job_get(&t, &job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, vow_core::JobState::Available);
    assert_eq!(stored.attempt, 0);
    let events = store.job_event_list(&t, &job.id).await.unwrap();
    assert_eq!(events.len(), 1, "only the enqueue: {events:?}");
    // The one connection is usable, and the job leases normally.
    let leased = lease(&store, &t, "q", 1, None, T0).await;
    assert_eq!(leased[0].id, job.id);
    assert_eq!(leased[0].attempt, 1);
}

/// An enqueue's, an ack's and a cancel's last writes go out with the `COMMIT` in one
/// round trip. They must all be inside the transaction, also on a connection that has
/// not prepared them yet (a statement sent after its `Parse` round trip would land
/// behind the `COMMIT`, in a transaction of its own): every row carries the same xmin.
#[tokio::test]
async fn an_acks_writes_sent_with_its_commit_are_one_transaction() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    for round in 0..2 {
        // A new store: its one connection has prepared nothing yet.
        let store = single_connection_store(&db).await;
        let t = tenant(&store, &format!("acme{round}")).await;
        let ins = insert(
            &store,
            &t,
            "q",
            vec![json!({ "payload": 1, "callback_url": "https://example.com/done" })],
            T0,
        )
        .await;
        let job = &ins[0].job;
        // The enqueue's queue row and event: one transaction too.
        let row = admin
            .query_one(
                "SELECT q.xmin::text, e.xmin::text FROM queues q \
                 JOIN job_events e ON e.tenant_id = q.tenant_id AND e.kind = 'enqueued' \
                 WHERE q.tenant_id = $1 AND q.name = 'q'",
                &[&t.as_str()],
            )
            .await
            .unwrap();
        let (q, e): (String, String) = (row.get(0), row.get(1));
        assert_eq!(q, e, "queue row and enqueued event");
        // Round 0 acks (lease first), round 1 cancels: both end with one round trip.
        let (state, kind) = if round == 0 {
            let leased = lease(&store, &t, "q", 1, None, T0).await;
            (
                complete(&*store, &t, &leased[0], T0).await.state,
                "completed",
            )
        } else {
            let cancelled = store
                .job_cancel(&JobCancel {
                    tenant_id: t.clone(),
                    id: job.id.clone(),
                    now: T0,
                })
                .await
                .unwrap();
            (cancelled.state, "cancelled")
        };
        assert_eq!(state.as_str(), kind);
        let row = admin
            .query_one(
                "SELECT j.xmin::text, e.xmin::text, d.xmin::text FROM jobs j \
                 JOIN job_events e ON e.job_id = j.id AND e.kind = $2 \
                 JOIN deliveries d ON d.job_id = j.id WHERE j.id = $1",
                &[&job.id.as_str(), &kind],
            )
            .await
            .unwrap();
        let (j, e, d): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(j == e && e == d, "job {j}, event {e}, delivery {d}");
    }
}

/// A plain enqueue (no idempotency key) is one statement that PostgreSQL commits on its
/// own, at the `Sync` after it. Its answer must follow that commit, and a commit that
/// fails must fail the call. A deferred constraint trigger runs at the commit, after the
/// statement's rows and its end have been produced: first it makes the commit take
/// 200 ms (an answer taken before the commit would find the jobs still invisible), then
/// it makes the commit fail (the call must fail, leaving no job, no queue row and no
/// published event).
#[tokio::test]
async fn a_plain_enqueue_is_answered_after_its_commit() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let at_commit = |body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN {body} RETURN NULL; END $$; \
             DROP TRIGGER IF EXISTS at_commit ON jobs; \
             CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON jobs \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION at_commit();"
        )
    };
    let store = single_connection_store(&db).await;
    let t = tenant(&store, "t").await;
    admin
        .batch_execute(&at_commit(
            "IF current_setting('test.slept', true) IS DISTINCT FROM 'y' THEN \
               PERFORM set_config('test.slept', 'y', true); PERFORM pg_sleep(0.2); \
             END IF;",
        ))
        .await
        .unwrap();
    let batch = |queue: &str| JobInsertMany {
        tenant_id: t.clone(),
        queue: queue.parse().unwrap(),
        jobs: (0..100)
            .map(|i| new_job(json!({ "payload": i }), T0, None))
            .collect(),
        now: T0,
    };
    let count = |queue: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM jobs WHERE queue = $1", &[&queue])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let inserted = store.job_insert_many(batch("slow")).await.unwrap();
    assert_eq!((inserted.len(), count("slow").await), (100, 100));

    admin
        .batch_execute(&at_commit("RAISE EXCEPTION 'refused at commit';"))
        .await
        .unwrap();
    let mut events = store.bus().subscribe();
    let refused = store.job_insert_many(batch("refused")).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(count("refused").await, 0);
    let queue = store.queue_get(&t, &"refused".parse().unwrap(), T0).await;
    assert!(matches!(queue, Ok(None)), "{queue:?}");
    assert!(events.try_recv().is_err(), "nothing published");
}

/// A write whose caller goes away while its `COMMIT` is in flight (its HTTP client
/// disconnected, say) still commits and still publishes its effects: the job's event
/// reaches the bus although nobody waits for the answer. A deferred trigger makes each
/// commit take 300 ms and the caller gives up after 50. Checked for a plain enqueue
/// (one statement outside a transaction block) and for one with an idempotency key (a
/// transaction, committed with its last statement).
#[tokio::test]
async fn a_write_whose_caller_went_away_still_publishes_its_effects() {
    let db = TestDb::fresh().await;
    let admin = db.client().await;
    let store = single_connection_store(&db).await;
    admin
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               PERFORM pg_sleep(0.3); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON jobs \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .await
        .unwrap();
    let t = tenant(&store, "t").await;
    for (queue, key) in [("plain", None), ("keyed", Some("k1"))] {
        let mut events = store.bus().subscribe();
        let p = JobInsertMany {
            tenant_id: t.clone(),
            queue: queue.parse().unwrap(),
            jobs: vec![new_job(json!({ "payload": 1 }), T0, key)],
            now: T0,
        };
        let gone = tokio::time::timeout(Duration::from_millis(50), store.job_insert_many(p)).await;
        assert!(gone.is_err(), "{queue}: the caller gave up first");
        let heard = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap_or_else(|_| panic!("{queue}: no event published"))
            .unwrap();
        assert_eq!(heard.event.queue.as_str(), queue);
        assert_eq!(heard.event.kind, vow_core::machine::EventKind::Enqueued);
        let n: i64 = admin
            .query_one("SELECT count(*) FROM jobs WHERE queue = $1", &[&queue])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{queue}");
    }
}
