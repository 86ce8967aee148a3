//! Tenants, API keys and queues of the SQLite store.

use rusqlite::{params, Connection, OptionalExtension, Row};
use vow_core::api::{QueueCounts, QueueView, RateLimit, TenantView};
use vow_core::{KeyId, QueueName, TenantId, TenantName, Timestamp};
use vow_store::*;

use crate::internal;

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let bad = |i, e: vow_core::ValidationError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(ApiKeyRecord {
        id: r.get::<_, String>(0)?.parse().map_err(|e| bad(0, e))?,
        tenant_id: r
            .get::<_, Option<String>>(1)?
            .map(|t| t.parse().map_err(|e| bad(1, e)))
            .transpose()?,
        role: r.get::<_, String>(2)?.parse().map_err(|e| bad(2, e))?,
        hash: r.get(3)?,
        created_at: Timestamp(r.get(4)?),
        revoked_at: r.get::<_, Option<i64>>(5)?.map(Timestamp),
    })
}

const KEY_COLS: &str = "id, tenant_id, role, hash, created_at, revoked_at";

pub(crate) fn api_key_get(c: &Connection, id: &KeyId) -> StoreResult<Option<ApiKeyRecord>> {
    c.prepare_cached(&format!("SELECT {KEY_COLS} FROM api_keys WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id.as_str()], key_from_row).optional())
        .map_err(internal)
}

pub(crate) fn api_key_insert(c: &Connection, p: &ApiKeyInsert) -> StoreResult<ApiKeyRecord> {
    c.execute(
        "INSERT INTO api_keys (id, tenant_id, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            p.id.as_str(),
            p.tenant_id.as_ref().map(|t| t.as_str()),
            p.role.as_str(),
            p.hash,
            p.now.0
        ],
    )
    .map_err(internal)?;
    api_key_get(c, &p.id)?.ok_or(StoreError::NotFound)
}

pub(crate) fn api_key_list(
    c: &Connection,
    tenant: Option<&TenantId>,
) -> StoreResult<Vec<ApiKeyRecord>> {
    c.prepare_cached(&format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id IS ?1 ORDER BY id"
    ))
    .and_then(|mut s| {
        s.query_map([tenant.map(|t| t.as_str())], key_from_row)?
            .collect()
    })
    .map_err(internal)
}

pub(crate) fn api_key_revoke(
    c: &Connection,
    id: &KeyId,
    now: Timestamp,
) -> StoreResult<ApiKeyRecord> {
    c.execute(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![id.as_str(), now.0],
    )
    .map_err(internal)?;
    api_key_get(c, id)?.ok_or(StoreError::NotFound)
}

fn tenant_from_row(r: &Row<'_>) -> rusqlite::Result<TenantView> {
    let bad = |i, e: vow_core::ValidationError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(TenantView {
        id: r.get::<_, String>(0)?.parse().map_err(|e| bad(0, e))?,
        name: r.get::<_, String>(1)?.parse().map_err(|e| bad(1, e))?,
        max_pending: r.get(2)?,
        created_at: Timestamp(r.get(3)?),
    })
}

const TENANT_COLS: &str = "id, name, max_pending, created_at";

pub(crate) fn tenant_get(c: &Connection, id: &TenantId) -> StoreResult<Option<TenantView>> {
    c.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id.as_str()], tenant_from_row).optional())
        .map_err(internal)
}

pub(crate) fn tenant_get_by_name(
    c: &Connection,
    name: &TenantName,
) -> StoreResult<Option<TenantView>> {
    c.prepare_cached(&format!(
        "SELECT {TENANT_COLS} FROM tenants WHERE name = ?1"
    ))
    .and_then(|mut s| s.query_row([name.as_str()], tenant_from_row).optional())
    .map_err(internal)
}

pub(crate) fn tenant_insert(c: &Connection, p: &TenantInsert) -> StoreResult<TenantView> {
    if tenant_get_by_name(c, &p.name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a tenant named `{}` exists",
            p.name
        )));
    }
    c.execute(
        "INSERT INTO tenants (id, name, max_pending, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![p.id.as_str(), p.name.as_str(), p.max_pending, p.now.0],
    )
    .map_err(internal)?;
    tenant_get(c, &p.id)?.ok_or(StoreError::NotFound)
}

pub(crate) fn tenant_list(c: &Connection) -> StoreResult<Vec<TenantView>> {
    c.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name"))
        .and_then(|mut s| s.query_map([], tenant_from_row)?.collect())
        .map_err(internal)
}

const QUEUE_COLS: &str = "name, paused, concurrency_limit, group_concurrency_limit, \
    rate_per_second, rate_burst, max_pending";

fn queue_from_row(r: &Row<'_>) -> rusqlite::Result<QueueView> {
    let name: String = r.get(0)?;
    let rate: Option<f64> = r.get(4)?;
    let burst: Option<u32> = r.get(5)?;
    Ok(QueueView {
        name: name.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        paused: r.get(1)?,
        counts: QueueCounts::default(),
        oldest_available_age_ms: None,
        concurrency_limit: r.get(2)?,
        group_concurrency_limit: r.get(3)?,
        rate_limit: rate.map(|per_second| RateLimit {
            per_second,
            burst: burst.unwrap_or(1),
        }),
        max_pending: r.get(6)?,
    })
}

/// Fills in counts and the oldest available job's age.
fn with_stats(
    c: &Connection,
    tenant: &TenantId,
    mut q: QueueView,
    now: Timestamp,
) -> StoreResult<QueueView> {
    let counts: Vec<(String, u64)> = c
        .prepare_cached("SELECT state, n FROM queue_counts WHERE tenant_id = ?1 AND queue = ?2")
        .and_then(|mut s| {
            s.query_map(params![tenant.as_str(), q.name.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    for (state, n) in counts {
        q.counts.add(state.parse().map_err(internal)?, n);
    }
    let oldest = oldest_available(c, tenant, q.name.as_str())?;
    q.oldest_available_age_ms = oldest.map(|t| (now.0 - t.0).max(0));
    Ok(q)
}

/// The earliest `run_at` of a queue's available jobs. `jobs_lease` is ordered by
/// priority first, so a plain `MIN(run_at)` reads every available job; this takes the
/// first entry of each priority in use instead, one index probe each.
pub(crate) fn oldest_available(
    c: &Connection,
    tenant: &TenantId,
    queue: &str,
) -> StoreResult<Option<Timestamp>> {
    let mut probe = c
        .prepare_cached(
            "SELECT priority, run_at FROM jobs INDEXED BY jobs_lease \
             WHERE tenant_id = ?1 AND queue = ?2 AND state = 'available' AND priority > ?3 \
             ORDER BY priority, run_at LIMIT 1",
        )
        .map_err(internal)?;
    let mut oldest: Option<i64> = None;
    let mut after = i64::MIN;
    while let Some((priority, run_at)) = probe
        .query_row(params![tenant.as_str(), queue, after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(internal)?
    {
        oldest = Some(oldest.map_or(run_at, |o| o.min(run_at)));
        after = priority;
    }
    Ok(oldest.map(Timestamp))
}

pub(crate) fn queue_get(
    c: &Connection,
    tenant: &TenantId,
    name: &QueueName,
    now: Timestamp,
) -> StoreResult<Option<QueueView>> {
    let q = c
        .prepare_cached(&format!(
            "SELECT {QUEUE_COLS} FROM queues WHERE tenant_id = ?1 AND name = ?2"
        ))
        .and_then(|mut s| {
            s.query_row(params![tenant.as_str(), name.as_str()], queue_from_row)
                .optional()
        })
        .map_err(internal)?;
    q.map(|q| with_stats(c, tenant, q, now)).transpose()
}

pub(crate) fn queue_list(
    c: &Connection,
    tenant: &TenantId,
    now: Timestamp,
) -> StoreResult<Vec<QueueView>> {
    let qs: Vec<QueueView> = c
        .prepare_cached(&format!(
            "SELECT {QUEUE_COLS} FROM queues WHERE tenant_id = ?1 ORDER BY name"
        ))
        .and_then(|mut s| s.query_map([tenant.as_str()], queue_from_row)?.collect())
        .map_err(internal)?;
    qs.into_iter()
        .map(|q| with_stats(c, tenant, q, now))
        .collect()
}

pub(crate) fn queue_update(c: &Connection, p: &QueueUpdate) -> StoreResult<QueueView> {
    let (t, n) = (p.tenant_id.as_str(), p.name.as_str());
    c.execute(
        "INSERT OR IGNORE INTO queues (tenant_id, name, created_at) VALUES (?1, ?2, ?3)",
        params![t, n, p.now.0],
    )
    .map_err(internal)?;
    let patch = &p.patch;
    if let Some(paused) = patch.paused {
        c.execute(
            "UPDATE queues SET paused = ?3 WHERE tenant_id = ?1 AND name = ?2",
            params![t, n, paused],
        )
        .map_err(internal)?;
    }
    if let Some(v) = patch.concurrency_limit {
        c.execute(
            "UPDATE queues SET concurrency_limit = ?3 WHERE tenant_id = ?1 AND name = ?2",
            params![t, n, v],
        )
        .map_err(internal)?;
    }
    if let Some(v) = patch.group_concurrency_limit {
        c.execute(
            "UPDATE queues SET group_concurrency_limit = ?3 WHERE tenant_id = ?1 AND name = ?2",
            params![t, n, v],
        )
        .map_err(internal)?;
    }
    if let Some(v) = patch.rate_limit {
        c.execute(
            "UPDATE queues SET rate_per_second = ?3, rate_burst = ?4 WHERE tenant_id = ?1 AND name = ?2",
            params![t, n, v.map(|r| r.per_second), v.map(|r| r.burst)],
        )
        .map_err(internal)?;
    }
    if let Some(v) = patch.max_pending {
        c.execute(
            "UPDATE queues SET max_pending = ?3 WHERE tenant_id = ?1 AND name = ?2",
            params![t, n, v],
        )
        .map_err(internal)?;
    }
    queue_get(c, &p.tenant_id, &p.name, p.now)?.ok_or(StoreError::NotFound)
}
