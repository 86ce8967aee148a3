//! Numbered schema migrations, embedded in the binary and applied at start under a
//! PostgreSQL advisory lock, so any number of nodes may start at once and exactly one
//! of them applies each pending migration while the others wait for it.
//!
//! Rule for every migration (so a rolling upgrade never needs downtime): **expand, then
//! contract.** A migration may only add (tables, nullable or defaulted columns, indexes
//! built `CONCURRENTLY` in a migration of their own, new enum-like values that old code
//! never reads). Ship code that works with both the old and the new shape; only a later
//! release, once no node of the old version runs, may drop or rename what is no longer
//! used. Never edit a shipped migration; add a new file with the next number.
//!
//! A migration whose first line is [`NO_TRANSACTION`] runs outside a transaction, one
//! statement at a time (statements end with `;`; comments are whole `--` lines): that is
//! how `CREATE INDEX CONCURRENTLY` runs, without a lock that blocks writes and without
//! the statement timeout. Write such a migration so it can run again from the start
//! (it is recorded only once all its statements succeeded).

use std::time::Duration;

use tokio_postgres::Client;

/// `(version, sql)` in order.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_webhooks.sql")),
    (3, include_str!("../migrations/0003_retention.sql")),
    (4, include_str!("../migrations/0004_queue_counts.sql")),
    (5, include_str!("../migrations/0005_queue_counts_fill.sql")),
];

/// First line of a migration that must run outside a transaction.
pub(crate) const NO_TRANSACTION: &str = "-- vow:no-transaction";

/// Key of the advisory lock that serialises migrations across nodes ("vow-migr").
const MIGRATION_LOCK: i64 = 0x766f_772d_6d69_6772;

/// How often a node that waits for another node's migrations tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// Applies every pending migration, each in its own transaction (or, if marked, outside
/// any), under the advisory lock.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    // Try, then sleep, rather than wait inside `pg_advisory_lock`: a waiting statement
    // holds a snapshot, which `CREATE INDEX CONCURRENTLY` on the holder's side would
    // wait for (a deadlock), and it would run into the statement timeout.
    let mut waited = false;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        if row.get::<_, bool>(0) {
            break;
        }
        if !waited {
            tracing::info!("another node is applying migrations; waiting for it");
            waited = true;
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
    let out = apply_pending(client, i64::MAX).await;
    // Release even when a migration failed; a dropped connection releases it too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    out?;
    unlock?;
    Ok(())
}

/// Applies the pending migrations up to `through` (a version), in order.
pub(crate) async fn apply_pending(
    client: &mut Client,
    through: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS vow_schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS.iter().take_while(|m| m.0 <= through) {
        if sql.starts_with(NO_TRANSACTION) {
            apply_outside_transaction(client, *version, sql).await?;
            continue;
        }
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT version FROM vow_schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if done.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO vow_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "applied migration");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Applies a [`NO_TRANSACTION`] migration, statement by statement, unless recorded.
async fn apply_outside_transaction(
    client: &Client,
    version: i64,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let done = client
        .query_opt(
            "SELECT version FROM vow_schema_migrations WHERE version = $1",
            &[&version],
        )
        .await?;
    if done.is_some() {
        return Ok(());
    }
    // An index built concurrently on a big table takes as long as it takes; it blocks
    // no reads or writes meanwhile.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await?;
    for statement in statements(sql) {
        client.batch_execute(&statement).await?;
    }
    client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await?;
    client
        .execute(
            "INSERT INTO vow_schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    tracing::info!(version, "applied migration (outside a transaction)");
    Ok(())
}

/// The statements of a migration: whole-line `--` comments dropped, split at `;`.
fn statements(sql: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Fails unless every migration this binary knows is applied. The query is prepared
/// once per pooled connection (readiness probes run it every few seconds).
pub(crate) async fn check(client: &deadpool_postgres::ClientWrapper) -> Result<(), String> {
    let st = client
        .prepare_cached("SELECT MAX(version) FROM vow_schema_migrations")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(&st, &[])
        .await
        .map_err(|e| e.to_string())?;
    let max: Option<i64> = row.get(0);
    let want = MIGRATIONS.last().map(|m| m.0);
    if max < want {
        return Err(format!("schema at {max:?}, binary needs {want:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_no_transaction_migration_splits_into_its_statements() {
        let sql = "-- vow:no-transaction\n-- a comment; with a semicolon\nDROP INDEX x;\nCREATE INDEX y\n    ON t (a);\n";
        assert_eq!(
            statements(sql),
            vec![
                "DROP INDEX x".to_owned(),
                "CREATE INDEX y\n    ON t (a)".to_owned()
            ]
        );
        let retention = MIGRATIONS.iter().find(|m| m.0 == 3).unwrap().1;
        assert!(retention.starts_with(NO_TRANSACTION));
        assert_eq!(statements(retention).len(), 2);
    }
}
