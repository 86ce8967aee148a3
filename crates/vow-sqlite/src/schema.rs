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
];

pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
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
