//! Numbered schema migrations, embedded in the binary and applied at open.
//!
//! Rule for every migration (so a rolling upgrade never needs downtime): expand first
//! (add tables, nullable columns, indexes), ship code that works with both shapes, and
//! only contract (drop, rename) in a later release once no old node runs.

use rusqlite::{Connection, OptionalExtension};

/// `(version, sql)` in order. Never edit a shipped migration; add a new one.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_webhooks.sql")),
    (3, include_str!("../migrations/0003_retention.sql")),
    (4, include_str!("../migrations/0004_fewer_btrees.sql")),
    (5, include_str!("../migrations/0005_queue_counts.sql")),
];

/// Applies the pending migrations. Refuses a database whose schema is newer than this
/// binary knows: going back past a schema change is not supported (schema 4, say, rebuilt
/// tables that older code would scan whole and prune wrongly).
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    let found = applied(conn).map_err(|e| e.to_string())?;
    if found > newest {
        return Err(format!(
            "the database's schema is at version {found}, newer than this binary's \
             {newest}: it was opened by a newer vow, and going back is not supported"
        ));
    }
    apply(conn).map_err(|e| e.to_string())
}

/// The highest schema version applied so far (0 for a new database).
fn applied(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
}

fn apply(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()?;
        if done.is_none() {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, unixepoch() * 1000)",
                [version],
            )?;
            tracing::info!(version, "applied migration");
        }
        tx.commit()?;
    }
    Ok(())
}

/// Fails unless every known migration is applied.
pub(crate) fn check(conn: &Connection) -> Result<(), String> {
    let max: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(|e| e.to_string())?;
    let want = MIGRATIONS.last().map(|m| m.0);
    if max < want {
        return Err(format!("schema at {max:?}, binary needs {want:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory database with the first `n` migrations applied, as an older binary
    /// left it.
    fn migrated_through(n: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        for (version, sql) in &MIGRATIONS[..n] {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                [version],
            )
            .unwrap();
        }
        conn
    }

    /// Schema 4 rebuilds `jobs` and `job_events`: rows survive as they were, and the
    /// highest event `seq` ever handed out stays taken even when its event was deleted.
    #[test]
    fn schema_4_keeps_rows_and_the_event_high_water_mark() {
        let mut conn = migrated_through(3);
        for i in 1..=3 {
            conn.execute(
                "INSERT INTO jobs (id, tenant_id, queue, state, priority, max_attempts, payload, \
                 run_at, created_at, tags, metadata, timeout_ms, backoff) \
                 VALUES (?1, 't', 'q', 'available', 5, 25, '{}', 0, 0, '[]', '{}', 1000, '{}')",
                [format!("job_{i}")],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO job_events (tenant_id, job_id, queue, kind, to_state, attempt, at) \
                 VALUES ('t', ?1, 'q', 'enqueued', 'available', 0, 0)",
                [format!("job_{i}")],
            )
            .unwrap();
        }
        // The newest event is gone (schema 3's pruning did that): seq 3 was handed out.
        conn.execute("DELETE FROM job_events WHERE seq = 3", [])
            .unwrap();

        migrate(&mut conn).unwrap();
        check(&conn).unwrap();
        let pairs = |sql: &str| -> Vec<(i64, String)> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            pairs("SELECT seq, id FROM jobs ORDER BY seq"),
            [
                (1, "job_1".into()),
                (2, "job_2".into()),
                (3, "job_3".into())
            ]
        );
        assert_eq!(
            pairs("SELECT seq, tenant_id FROM job_events ORDER BY seq"),
            [(1, "t".into()), (2, "t".into()), (3, String::new())],
            "seq 3 is held by a placeholder no tenant reads"
        );
        conn.execute(
            "INSERT INTO job_events (tenant_id, job_id, queue, kind, to_state, attempt, at) \
             VALUES ('t', 'job_4', 'q', 'enqueued', 'available', 0, 0)",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4);
        // One unique index serves lookups by id, always with the tenant.
        let dup = conn.execute(
            "INSERT INTO jobs (id, tenant_id, queue, state, priority, max_attempts, payload, \
             run_at, created_at, tags, metadata, timeout_ms, backoff) \
             VALUES ('job_1', 't', 'q', 'available', 5, 25, '{}', 0, 0, '[]', '{}', 1000, '{}')",
            [],
        );
        assert!(dup.is_err(), "a job id is unique within its tenant");
        // The newest event is kept whatever deletes it (older code pruning, say).
        let gone = conn
            .execute("DELETE FROM job_events WHERE seq = 4", [])
            .unwrap();
        assert_eq!(gone, 0, "the row holding the highest seq stays");
        conn.execute("DELETE FROM job_events WHERE seq = 1", [])
            .unwrap();
        assert_eq!(
            conn.query_row("SELECT COUNT(*) FROM job_events", [], |r| r
                .get::<_, i64>(0))
                .unwrap(),
            3
        );
    }

    /// Schema 5 counts the jobs already there, per tenant, queue and state.
    #[test]
    fn schema_5_counts_the_jobs_already_there() {
        let mut conn = migrated_through(4);
        for (i, (tenant, queue, state)) in [
            ("t", "q", "available"),
            ("t", "q", "available"),
            ("t", "q", "dead"),
            ("t", "r", "available"),
            ("u", "q", "completed"),
        ]
        .into_iter()
        .enumerate()
        {
            conn.execute(
                "INSERT INTO jobs (id, tenant_id, queue, state, priority, max_attempts, payload, \
                 run_at, created_at, tags, metadata, timeout_ms, backoff) \
                 VALUES (?1, ?2, ?3, ?4, 5, 25, '{}', 0, 0, '[]', '{}', 1000, '{}')",
                [format!("job_{i}").as_str(), tenant, queue, state],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        check(&conn).unwrap();
        let counts: Vec<(String, String, String, i64)> = conn
            .prepare("SELECT tenant_id, queue, state, n FROM queue_counts ORDER BY 1, 2, 3")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let row = |t: &str, q: &str, s: &str, n| (t.into(), q.into(), s.into(), n);
        assert_eq!(
            counts,
            [
                row("t", "q", "available", 2),
                row("t", "q", "dead", 1),
                row("t", "r", "available", 1),
                row("u", "q", "completed", 1),
            ]
        );
    }

    /// A database a newer binary migrated is refused, not half understood.
    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
            [],
        )
        .unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(e.contains("version 99"), "{e}");
    }
}
