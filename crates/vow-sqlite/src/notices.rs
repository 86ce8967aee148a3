//! Completion notices in the SQLite store: the outbox rows written with a job's
//! transition, subscriptions and secrets, and the dispatcher's claim/record cycle.
//! Writes run on the writer thread (inside group commit), reads on the reader pool.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use vow_core::api::{
    CallbackSecretView, DeliveryAttemptView, DeliveryState, DeliveryView, Page, WebhookEvent,
    WebhookView,
};
use vow_core::notice::{endpoint_of, Admission, EndpointHealth, NoticeBody, NoticeType};
use vow_core::{DeliveryId, Job, JobId, QueueName, TenantId, Timestamp, WebhookId};
use vow_store::*;

use crate::internal;
use crate::rows::{json, json_opt, parsed, parsed_opt, to_json, ts_opt};

/// Writes the notices a transition of `job` produces, if any, in the caller's
/// transaction: one for the job's `callback_url` (terminal notices only) and one per
/// matching subscription of its tenant.
pub(crate) fn outbox(c: &Connection, job: &Job, t: NoticeType, now: Timestamp) -> StoreResult<()> {
    let mut targets: Vec<(Option<String>, String)> = Vec::new();
    if t.is_terminal() {
        if let Some(url) = &job.callback_url {
            targets.push((None, url.clone()));
        }
    }
    let mut hooks = c
        .prepare_cached("SELECT id, url, events, queues FROM webhooks WHERE tenant_id = ?1")
        .map_err(internal)?;
    let rows = hooks
        .query_map([job.tenant_id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                json::<Vec<WebhookEvent>>(r, 2)?,
                json_opt::<Vec<QueueName>>(r, 3)?,
            ))
        })
        .map_err(internal)?;
    for row in rows {
        let (id, url, events, queues) = row.map_err(internal)?;
        if events.contains(&t) && queues.is_none_or(|qs| qs.contains(&job.queue)) {
            targets.push((Some(id), url));
        }
    }
    if targets.is_empty() {
        return Ok(());
    }
    let body = NoticeBody::new(t, job, now).to_json();
    let mut insert = c
        .prepare_cached(
            "INSERT INTO deliveries (id, tenant_id, job_id, webhook_id, event, url, endpoint, \
             body, traceparent, state, next_attempt_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, 'pending', ?9, ?9)",
        )
        .map_err(internal)?;
    for (webhook, url) in targets {
        let endpoint = endpoint_of(&url).unwrap_or_else(|_| url.clone());
        insert
            .execute(params![
                DeliveryId::generate().as_str(),
                job.tenant_id.as_str(),
                job.id.as_str(),
                webhook,
                t.as_str(),
                url,
                endpoint,
                body,
                now.0,
                job.traceparent,
            ])
            .map_err(internal)?;
    }
    Ok(())
}

const WEBHOOK_COLS: &str = "id, url, events, queues, created_at, previous_expires_at";

fn webhook_from_row(r: &Row<'_>) -> rusqlite::Result<WebhookView> {
    Ok(WebhookView {
        id: parsed(r, 0)?,
        url: r.get(1)?,
        events: json(r, 2)?,
        queues: json_opt(r, 3)?,
        created_at: Timestamp(r.get(4)?),
        previous_secret_valid_until: ts_opt(r, 5)?,
        secret: None,
    })
}

fn webhook_load(
    c: &Connection,
    tenant: &TenantId,
    id: &WebhookId,
) -> StoreResult<Option<WebhookView>> {
    c.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE tenant_id = ?1 AND id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row([tenant.as_str(), id.as_str()], webhook_from_row)
            .optional()
    })
    .map_err(internal)
}

pub(crate) fn webhook_insert(c: &Connection, p: &WebhookInsert) -> StoreResult<WebhookView> {
    c.prepare_cached(
        "INSERT INTO webhooks (id, tenant_id, url, events, queues, secret, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            p.id.as_str(),
            p.tenant_id.as_str(),
            p.url,
            to_json(&p.events),
            p.queues.as_ref().map(to_json),
            p.secret,
            p.now.0,
        ])
    })
    .map_err(internal)?;
    let mut view = webhook_load(c, &p.tenant_id, &p.id)?.ok_or(StoreError::NotFound)?;
    view.secret = Some(p.secret.clone());
    Ok(view)
}

pub(crate) fn webhook_get(
    c: &Connection,
    tenant: &TenantId,
    id: &WebhookId,
) -> StoreResult<Option<WebhookView>> {
    webhook_load(c, tenant, id)
}

pub(crate) fn webhook_list(c: &Connection, tenant: &TenantId) -> StoreResult<Vec<WebhookView>> {
    c.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE tenant_id = ?1 ORDER BY created_at, id"
    ))
    .and_then(|mut s| s.query_map([tenant.as_str()], webhook_from_row)?.collect())
    .map_err(internal)
}

pub(crate) fn webhook_secret_rotate(c: &Connection, p: &SecretRotate) -> StoreResult<WebhookView> {
    let id = p.webhook_id.as_ref().ok_or(StoreError::NotFound)?;
    let n = c
        .prepare_cached(
            "UPDATE webhooks SET previous_secret = secret, previous_expires_at = ?3, secret = ?4 \
             WHERE tenant_id = ?1 AND id = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                p.tenant_id.as_str(),
                id.as_str(),
                p.now.plus_ms(p.grace_ms as i64).0,
                p.secret,
            ])
        })
        .map_err(internal)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    let mut view = webhook_load(c, &p.tenant_id, id)?.ok_or(StoreError::NotFound)?;
    view.secret = Some(p.secret.clone());
    Ok(view)
}

pub(crate) fn webhook_delete(
    c: &Connection,
    tenant: &TenantId,
    id: &WebhookId,
    now: Timestamp,
) -> StoreResult<()> {
    let n = c
        .prepare_cached("DELETE FROM webhooks WHERE tenant_id = ?1 AND id = ?2")
        .and_then(|mut s| s.execute([tenant.as_str(), id.as_str()]))
        .map_err(internal)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    c.prepare_cached(
        "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, \
         last_error = 'webhook deleted at ' || ?3 \
         WHERE webhook_id = ?2 AND tenant_id = ?1 AND state = 'pending'",
    )
    .and_then(|mut s| s.execute(params![tenant.as_str(), id.as_str(), now.to_rfc3339()]))
    .map_err(internal)?;
    Ok(())
}

pub(crate) fn callback_secret_exists(c: &Connection, tenant: &TenantId) -> StoreResult<bool> {
    c.prepare_cached("SELECT 1 FROM callback_secrets WHERE tenant_id = ?1")
        .and_then(|mut s| s.exists([tenant.as_str()]))
        .map_err(internal)
}

pub(crate) fn callback_secret_rotate(
    c: &Connection,
    p: &SecretRotate,
) -> StoreResult<CallbackSecretView> {
    let until = p.now.plus_ms(p.grace_ms as i64).0;
    c.prepare_cached(
        "INSERT INTO callback_secrets (tenant_id, secret, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant_id) DO UPDATE SET previous_secret = secret, \
         previous_expires_at = ?4, secret = excluded.secret, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![p.tenant_id.as_str(), p.secret, p.now.0, until]))
    .map_err(internal)?;
    let previous: Option<i64> = c
        .prepare_cached("SELECT previous_expires_at FROM callback_secrets WHERE tenant_id = ?1")
        .and_then(|mut s| s.query_row([p.tenant_id.as_str()], |r| r.get(0)))
        .map_err(internal)?;
    Ok(CallbackSecretView {
        secret: p.secret.clone(),
        previous_secret_valid_until: previous.map(Timestamp),
    })
}

/// The secrets that sign a delivery now: current first, then the previous one while it
/// is valid.
fn secrets_of(
    current: String,
    previous: Option<String>,
    until: Option<i64>,
    now: Timestamp,
) -> Vec<String> {
    let mut out = vec![current];
    if let (Some(p), Some(u)) = (previous, until) {
        if u > now.0 {
            out.push(p);
        }
    }
    out
}

fn callback_secrets(c: &Connection, tenant: &str, now: Timestamp) -> StoreResult<Vec<String>> {
    let read = |c: &Connection| {
        c.prepare_cached(
            "SELECT secret, previous_secret, previous_expires_at FROM callback_secrets \
             WHERE tenant_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(internal)
    };
    if let Some((cur, prev, until)) = read(c)? {
        return Ok(secrets_of(cur, prev, until, now));
    }
    let secret = vow_core::webhook::generate_secret();
    c.prepare_cached(
        "INSERT INTO callback_secrets (tenant_id, secret, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![tenant, secret, now.0]))
    .map_err(internal)?;
    let (cur, prev, until) = read(c)?.ok_or_else(|| internal("callback secret vanished"))?;
    Ok(secrets_of(cur, prev, until, now))
}

fn endpoint_health(c: &Connection, tenant: &str, endpoint: &str) -> StoreResult<EndpointHealth> {
    c.prepare_cached(
        "SELECT failures, open_until FROM endpoints WHERE tenant_id = ?1 AND endpoint = ?2",
    )
    .and_then(|mut s| {
        s.query_row([tenant, endpoint], |r| {
            Ok(EndpointHealth {
                failures: r.get(0)?,
                open_until: ts_opt(r, 1)?,
            })
        })
        .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(internal)
}

fn endpoint_save(
    c: &Connection,
    tenant: &str,
    endpoint: &str,
    h: EndpointHealth,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO endpoints (tenant_id, endpoint, failures, open_until) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (tenant_id, endpoint) DO UPDATE SET failures = excluded.failures, \
         open_until = excluded.open_until",
    )
    .and_then(|mut s| s.execute(params![tenant, endpoint, h.failures, h.open_until.map(|t| t.0)]))
    .map_err(internal)?;
    Ok(())
}

/// A due delivery as the claim reads it (secrets are added once it is taken), with its
/// `next_attempt_at` (the paging key).
fn task_from_row(r: &Row<'_>) -> rusqlite::Result<(DeliveryTask, i64)> {
    let event: String = r.get(4)?;
    let attempts: u32 = r.get(8)?;
    let round_start: u32 = r.get(9)?;
    let task = DeliveryTask {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        job_id: parsed(r, 2)?,
        webhook_id: parsed_opt(r, 3)?,
        event: NoticeType::parse(&event).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, event.into())
        })?,
        url: r.get(5)?,
        endpoint: r.get(6)?,
        body: r.get(7)?,
        traceparent: r.get(11)?,
        attempts,
        round_attempts: attempts.saturating_sub(round_start),
        secrets: Vec::new(),
    };
    Ok((task, r.get(10)?))
}

/// The current (and still valid previous) secret of a subscription; `None` if it is gone.
fn webhook_secrets(
    c: &Connection,
    tenant: &TenantId,
    id: &WebhookId,
    now: Timestamp,
) -> StoreResult<Option<Vec<String>>> {
    let row: Option<(String, Option<String>, Option<i64>)> = c
        .prepare_cached(
            "SELECT secret, previous_secret, previous_expires_at FROM webhooks \
             WHERE id = ?1 AND tenant_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([id.as_str(), tenant.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    Ok(row.map(|(cur, prev, until)| secrets_of(cur, prev, until, now)))
}

/// Whether any delivery is due at `now` (what [`delivery_claim`] would look at first).
pub(crate) fn any_due(c: &Connection, now: Timestamp) -> StoreResult<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_due \
         WHERE state = 'pending' AND next_attempt_at <= ?1)",
    )
    .and_then(|mut s| s.query_row([now.0], |r| r.get(0)))
    .map_err(internal)
}

pub(crate) fn delivery_claim(c: &Connection, p: &DeliveryClaim) -> StoreResult<Vec<DeliveryTask>> {
    // Pass 1 walks the due index (it covers tenant and endpoint, so no row is read) and
    // picks deliveries in due order, skipping open breakers and saturated endpoints: a
    // backlog behind one receiver never hides the others', and costs an index walk,
    // not a decode of every row. Pass 2 reads the picked rows.
    let open: std::collections::HashSet<(String, String)> = c
        .prepare_cached("SELECT tenant_id, endpoint FROM endpoints WHERE open_until > ?1")
        .and_then(|mut s| {
            s.query_map([p.now.0], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(internal)?;
    let hold_until = p.now.plus_ms(p.hold_ms as i64);
    let mut slots: HashMap<(String, String), usize> = HashMap::new();
    // Endpoints whose breaker was asked, and those shut for the rest of this claim.
    let mut checked: std::collections::HashSet<(String, String)> = Default::default();
    let mut probed: std::collections::HashSet<(String, String)> = Default::default();
    let mut picked: Vec<String> = Vec::new();
    {
        let mut due = c
            .prepare_cached(
                "SELECT id, tenant_id, endpoint FROM deliveries INDEXED BY deliveries_due \
                 WHERE state = 'pending' AND next_attempt_at <= ?1 \
                 ORDER BY next_attempt_at, id",
            )
            .map_err(internal)?;
        let mut rows = due.query([p.now.0]).map_err(internal)?;
        while picked.len() < p.limit {
            let Some(row) = rows.next().map_err(internal)? else {
                break;
            };
            let (id, tenant, endpoint): (String, String, String) = (
                row.get(0).map_err(internal)?,
                row.get(1).map_err(internal)?,
                row.get(2).map_err(internal)?,
            );
            let key = (tenant, endpoint);
            if open.contains(&key) || probed.contains(&key) {
                continue;
            }
            let taken = slots.entry(key.clone()).or_insert_with(|| {
                let tenant_id: Option<TenantId> = key.0.parse().ok();
                tenant_id
                    .and_then(|t| p.in_flight.get(&(t, key.1.clone())).copied())
                    .unwrap_or(0)
            });
            if *taken >= p.per_endpoint {
                continue;
            }
            *taken += 1;
            if checked.insert(key.clone()) {
                // First look at this endpoint in this claim: ask its breaker.
                match p.breaker.admit(endpoint_health(c, &key.0, &key.1)?, p.now) {
                    Admission::Open(_) => {
                        probed.insert(key);
                        continue;
                    }
                    Admission::Probe => {
                        // One probe; the endpoint stays shut to others while it runs.
                        let mut h = endpoint_health(c, &key.0, &key.1)?;
                        h.open_until = Some(hold_until);
                        endpoint_save(c, &key.0, &key.1, h)?;
                        probed.insert(key);
                    }
                    Admission::Closed => {}
                }
            }
            picked.push(id);
        }
    }
    let mut tasks = Vec::with_capacity(picked.len());
    for id in picked {
        let (mut task, _) = c
            .prepare_cached(
                "SELECT id, tenant_id, job_id, webhook_id, event, url, endpoint, body, \
                 attempts, round_start, next_attempt_at, traceparent FROM deliveries \
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.query_row([id.as_str()], task_from_row))
            .map_err(internal)?;
        task.secrets = match &task.webhook_id {
            Some(w) => match webhook_secrets(c, &task.tenant_id, w, p.now)? {
                Some(secrets) => secrets,
                None => {
                    c.prepare_cached(
                        "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, \
                         last_error = 'webhook deleted' WHERE id = ?1",
                    )
                    .and_then(|mut s| s.execute([id.as_str()]))
                    .map_err(internal)?;
                    continue;
                }
            },
            None => callback_secrets(c, task.tenant_id.as_str(), p.now)?,
        };
        c.prepare_cached("UPDATE deliveries SET next_attempt_at = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.as_str(), hold_until.0]))
            .map_err(internal)?;
        tasks.push(task);
    }
    Ok(tasks)
}

pub(crate) fn delivery_record(c: &Connection, p: &DeliveryOutcome) -> StoreResult<()> {
    let row: Option<(String, String, u32, String)> = c
        .prepare_cached("SELECT tenant_id, endpoint, attempts, state FROM deliveries WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([p.id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let (tenant, endpoint, attempts, state) = row.ok_or(StoreError::NotFound)?;
    c.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, at, status, latency_ms, error, \
         response) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            p.id.as_str(),
            attempts + 1,
            p.at.0,
            p.status,
            p.latency_ms as i64,
            p.error,
            p.response,
        ])
    })
    .map_err(internal)?;
    c.prepare_cached("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?1")
        .and_then(|mut s| s.execute([p.id.as_str()]))
        .map_err(internal)?;
    if attempts != p.attempts_before || state != DeliveryState::Pending.as_str() {
        // Stale (claimed again since) or settled meanwhile (e.g. its subscription was
        // deleted): logged, nothing more.
        return Ok(());
    }
    let (state, next, delivered) = match p.next {
        DeliveryNext::Delivered => (DeliveryState::Delivered, None, Some(p.at.0)),
        DeliveryNext::RetryAt(t) => (DeliveryState::Pending, Some(t.0), None),
        DeliveryNext::Dead => (DeliveryState::Dead, None, None),
    };
    c.prepare_cached(
        "UPDATE deliveries SET state = ?2, next_attempt_at = ?3, delivered_at = ?4, \
         last_status = ?5, last_error = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            p.id.as_str(),
            state.as_str(),
            next,
            delivered,
            p.status,
            p.error,
        ])
    })
    .map_err(internal)?;
    let health = if p.next == DeliveryNext::Delivered {
        p.breaker.on_success()
    } else {
        p.breaker
            .on_failure(endpoint_health(c, &tenant, &endpoint)?, p.at)
    };
    endpoint_save(c, &tenant, &endpoint, health)
}

pub(crate) fn delivery_retry(
    c: &Connection,
    tenant: &TenantId,
    id: &DeliveryId,
    now: Timestamp,
) -> StoreResult<DeliveryView> {
    let orphaned: Option<bool> = c
        .prepare_cached(
            "SELECT d.webhook_id IS NOT NULL AND w.id IS NULL FROM deliveries d \
             LEFT JOIN webhooks w ON w.id = d.webhook_id WHERE d.tenant_id = ?1 AND d.id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([tenant.as_str(), id.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(internal)?;
    match orphaned {
        None => return Err(StoreError::NotFound),
        Some(true) => {
            return Err(StoreError::Conflict(
                "its webhook was deleted: there is nothing to send it to".into(),
            ))
        }
        Some(false) => {}
    }
    let n = c
        .prepare_cached(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = ?3, \
             round_start = attempts WHERE tenant_id = ?1 AND id = ?2",
        )
        .and_then(|mut s| s.execute(params![tenant.as_str(), id.as_str(), now.0]))
        .map_err(internal)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    delivery_load(c, tenant, id)?.ok_or(StoreError::NotFound)
}

const DELIVERY_COLS: &str = "id, job_id, webhook_id, event, url, state, attempts, \
    next_attempt_at, last_status, last_error, created_at, delivered_at";

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<DeliveryView> {
    let event: String = r.get(3)?;
    let state: String = r.get(5)?;
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    Ok(DeliveryView {
        id: parsed(r, 0)?,
        job_id: parsed::<JobId>(r, 1)?,
        webhook_id: parsed_opt(r, 2)?,
        event: NoticeType::parse(&event).ok_or_else(|| bad(3, event.clone()))?,
        url: r.get(4)?,
        state: DeliveryState::parse(&state).ok_or_else(|| bad(5, state.clone()))?,
        attempts: r.get(6)?,
        next_attempt_at: ts_opt(r, 7)?,
        last_status: r.get(8)?,
        last_error: r.get(9)?,
        created_at: Timestamp(r.get(10)?),
        delivered_at: ts_opt(r, 11)?,
        log: None,
    })
}

fn delivery_load(
    c: &Connection,
    tenant: &TenantId,
    id: &DeliveryId,
) -> StoreResult<Option<DeliveryView>> {
    c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLS} FROM deliveries WHERE tenant_id = ?1 AND id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row([tenant.as_str(), id.as_str()], delivery_from_row)
            .optional()
    })
    .map_err(internal)
}

pub(crate) fn delivery_get(
    c: &Connection,
    tenant: &TenantId,
    id: &DeliveryId,
) -> StoreResult<Option<DeliveryView>> {
    let Some(mut view) = delivery_load(c, tenant, id)? else {
        return Ok(None);
    };
    let log = c
        .prepare_cached(
            "SELECT attempt, at, status, latency_ms, error, response FROM delivery_attempts \
             WHERE delivery_id = ?1 ORDER BY attempt",
        )
        .and_then(|mut s| {
            s.query_map([id.as_str()], |r| {
                Ok(DeliveryAttemptView {
                    attempt: r.get(0)?,
                    at: Timestamp(r.get(1)?),
                    status: r.get(2)?,
                    latency_ms: r.get::<_, i64>(3)?.max(0) as u64,
                    error: r.get(4)?,
                    response: r.get(5)?,
                })
            })?
            .collect()
        })
        .map_err(internal)?;
    view.log = Some(log);
    Ok(Some(view))
}

pub(crate) fn delivery_list(c: &Connection, p: &DeliveryList) -> StoreResult<Page<DeliveryView>> {
    let mut sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE tenant_id = ?");
    let mut args: Vec<String> = vec![p.tenant_id.to_string()];
    if let Some(w) = &p.webhook_id {
        sql.push_str(" AND webhook_id = ?");
        args.push(w.to_string());
    }
    if let Some(j) = &p.job_id {
        sql.push_str(" AND job_id = ?");
        args.push(j.to_string());
    }
    if let Some(b) = &p.before {
        sql.push_str(" AND id < ?");
        args.push(b.to_string());
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", p.limit + 1));
    let mut items: Vec<DeliveryView> = c
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(args.iter()), delivery_from_row)?
                .collect()
        })
        .map_err(internal)?;
    let next_cursor = if items.len() > p.limit {
        items.truncate(p.limit);
        items.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Deletes up to `limit` settled deliveries past their retention, with their logs:
/// delivered ones created before `completed_before`, dead ones before `dead_before`.
pub(crate) fn prune(c: &Connection, p: &JobPrune, limit: usize) -> StoreResult<usize> {
    let mut pick = c
        .prepare_cached(
            "SELECT id FROM deliveries WHERE state = ?2 AND created_at < ?1 \
             ORDER BY created_at LIMIT ?3",
        )
        .map_err(internal)?;
    let mut del_log = c
        .prepare_cached("DELETE FROM delivery_attempts WHERE delivery_id = ?1")
        .map_err(internal)?;
    let mut del = c
        .prepare_cached("DELETE FROM deliveries WHERE id = ?1")
        .map_err(internal)?;
    let mut gone = 0;
    for (state, before) in [
        (DeliveryState::Delivered, p.completed_before),
        (DeliveryState::Dead, p.dead_before),
    ] {
        let (Some(before), left) = (before, limit.saturating_sub(gone)) else {
            continue;
        };
        if left == 0 {
            break;
        }
        let ids: Vec<String> = pick
            .query_map(params![before.0, state.as_str(), left as i64], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(internal)?;
        for id in ids {
            del_log.execute([&id]).map_err(internal)?;
            gone += del.execute([&id]).map_err(internal)?;
        }
    }
    Ok(gone)
}
