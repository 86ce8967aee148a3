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

use tokio_postgres::Client;

/// `(version, sql)` in order.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_webhooks.sql")),
];

/// Key of the advisory lock that serialises migrations across nodes ("vow-migr").
const MIGRATION_LOCK: i64 = 0x766f_772d_6d69_6772;

/// Applies every pending migration, each in its own transaction, under the advisory lock.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let out = apply_pending(client).await;
    // Release even when a migration failed; a dropped connection releases it too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    out?;
    unlock?;
    Ok(())
}

async fn apply_pending(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS vow_schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
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

/// Fails unless every migration this binary knows is applied.
pub(crate) async fn check(client: &Client) -> Result<(), String> {
    let row = client
        .query_one("SELECT MAX(version) FROM vow_schema_migrations", &[])
        .await
        .map_err(|e| e.to_string())?;
    let max: Option<i64> = row.get(0);
    let want = MIGRATIONS.last().map(|m| m.0);
    if max < want {
        return Err(format!("schema at {max:?}, binary needs {want:?}"));
    }
    Ok(())
}
