//! Completion notices of the PostgreSQL store: the outbox written with job transitions,
//! claiming and recording deliveries (with the per-endpoint circuit breaker),
//! subscriptions and signing secrets.
//!
//! - **Outbox.** [`outbox`] runs inside the transition's transaction, only when some
//!   transition of the batch is notice-worthy: one `SELECT` of the tenants'
//!   subscriptions (pipelined with the events insert, so it costs no extra round trip)
//!   and, if anything matched, one `UNNEST` insert. Ids are ULIDs made here.
//! - **Claim.** Due rows are picked with `FOR UPDATE SKIP LOCKED` (concurrent
//!   dispatchers on any node never wait for each other nor take the same row), skipping
//!   open endpoints already in SQL so a dead receiver's backlog cannot fill the page. A
//!   claimed row is *held* by moving `next_attempt_at` to `now + hold`: if its sender
//!   dies, the row is due again then, under the same id. A half-open endpoint's probe is
//!   taken with a compare-and-set on its `endpoints` row (`open_until = now + hold`), so
//!   two nodes cannot probe it at once.
//! - **Record.** One statement logs the attempt, counts it and, if the fence
//!   (`attempts_before`) still matches, moves the delivery on; the endpoint's health is
//!   then updated under a row lock (`FOR UPDATE`), so concurrent failures all count.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use vow_core::api::{
    CallbackSecretView, DeliveryAttemptView, DeliveryState, DeliveryView, Page, WebhookEvent,
    WebhookView,
};
use vow_core::notice::{endpoint_of, Admission, EndpointHealth, NoticeBody, NoticeType};
use vow_core::{DeliveryId, Job, TenantId, Timestamp, WebhookId};
use vow_store::*;

use crate::internal;
use crate::jobs::{execute, query};
use crate::rows::{get, nonneg, parsed, parsed_opt, ts_opt, TENANT_CHECK};

/// A notice due from one transition: its type and the job as it is after it.
pub(crate) struct Notice<'a> {
    pub kind: NoticeType,
    pub job: &'a Job,
}

/// A subscription as the outbox matches it.
pub(crate) struct Hook {
    id: String,
    tenant: String,
    url: String,
    endpoint: String,
    events: Vec<NoticeType>,
    queues: Option<Vec<String>>,
}

impl Hook {
    fn wants(&self, n: &Notice<'_>) -> bool {
        self.tenant == n.job.tenant_id.as_str()
            && self.events.contains(&n.kind)
            && self
                .queues
                .as_ref()
                .is_none_or(|qs| qs.iter().any(|q| q == n.job.queue.as_str()))
    }
}

fn endpoint_or_url(url: &str) -> String {
    // Validation keeps bad URLs out; should one slip through, it is its own endpoint.
    endpoint_of(url).unwrap_or_else(|_| url.to_owned())
}

fn event_names(events: Vec<String>) -> Vec<NoticeType> {
    // Names this version does not know (written by a newer node) are left out.
    events.iter().filter_map(|e| NoticeType::parse(e)).collect()
}

/// Writes the deliveries `notices` call for (one per job `callback_url` of a terminal
/// notice, one per matching subscription) in the caller's transaction: one `INSERT`,
/// none when `notices` is empty, after reading the tenants' subscriptions unless
/// `hooks` brings them. With `hooks` given, the `INSERT` is sent on the first poll
/// once [`OUTBOX_SQL`] is prepared (nothing is awaited before it).
pub(crate) async fn outbox(
    tx: &impl GenericClient,
    notices: &[Notice<'_>],
    now: Timestamp,
    hooks: Option<&[Hook]>,
) -> StoreResult<()> {
    if notices.is_empty() {
        return Ok(());
    }
    let loaded;
    let hooks = match hooks {
        Some(h) => h,
        None => {
            let mut tenants: Vec<&str> = notices.iter().map(|n| n.job.tenant_id.as_str()).collect();
            tenants.sort_unstable();
            tenants.dedup();
            loaded = subscriptions(tx, &tenants).await?;
            &loaded
        }
    };

    // Column arrays of the rows to insert; each body is sent once and indexed.
    let mut ids = Vec::new();
    let mut row_tenants = Vec::new();
    let mut jobs = Vec::new();
    let mut hook_ids: Vec<Option<&str>> = Vec::new();
    let mut events = Vec::new();
    let mut urls: Vec<&str> = Vec::new();
    let mut endpoints: Vec<String> = Vec::new();
    let mut body_of: Vec<i32> = Vec::new();
    let mut traces: Vec<Option<&str>> = Vec::new();
    let mut bodies: Vec<String> = Vec::new();
    for n in notices {
        let callback = n
            .job
            .callback_url
            .as_deref()
            .filter(|_| n.kind.is_terminal());
        let targets: Vec<(Option<&str>, &str, String)> = callback
            .map(|url| (None, url, endpoint_or_url(url)))
            .into_iter()
            .chain(
                hooks
                    .iter()
                    .filter(|h| h.wants(n))
                    .map(|h| (Some(h.id.as_str()), h.url.as_str(), h.endpoint.clone())),
            )
            .collect();
        if targets.is_empty() {
            continue;
        }
        bodies.push(NoticeBody::new(n.kind, n.job, now).to_json());
        for (hook, url, endpoint) in targets {
            ids.push(DeliveryId::generate().as_str().to_owned());
            row_tenants.push(n.job.tenant_id.as_str());
            jobs.push(n.job.id.as_str());
            hook_ids.push(hook);
            events.push(n.kind.as_str());
            urls.push(url);
            endpoints.push(endpoint);
            body_of.push(bodies.len() as i32); // 1-based, as SQL arrays are
            traces.push(n.job.traceparent.as_deref());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    execute(
        tx,
        OUTBOX_SQL,
        &[
            &ids,
            &row_tenants,
            &jobs,
            &hook_ids,
            &events,
            &urls,
            &endpoints,
            &body_of,
            &bodies,
            &now.0,
            &traces,
        ],
    )
    .await?;
    Ok(())
}

/// A tenant's delivery (`$1` its id, `$2` the tenant), found by the primary key (see
/// [`TENANT_CHECK`]).
pub(crate) fn delivery_sql() -> String {
    format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE id = $1 AND {TENANT_CHECK} $2")
}

/// Whether a tenant's delivery (`$1`, `$2` the tenant) lost its subscription.
pub(crate) fn delivery_orphaned_sql() -> String {
    format!(
        "SELECT d.webhook_id IS NOT NULL AND w.id IS NULL FROM deliveries d \
         LEFT JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = $1 AND d.{TENANT_CHECK} $2"
    )
}

/// A tenant's subscription (`$1` its id, `$2` the tenant), by the primary key.
pub(crate) fn webhook_sql() -> String {
    format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1 AND {TENANT_CHECK} $2")
}

/// The claim's pick: up to `fetch` due deliveries, in due order, of endpoints neither
/// open (their breaker) nor full (`$2`, `$3`: tenants and endpoints at their cap).
/// `$1` is now.
pub(crate) fn claim_sql(fetch: usize) -> String {
    format!(
        "SELECT d.id, d.tenant_id, d.job_id, d.webhook_id, d.event, d.url, d.endpoint, d.body, \
           d.attempts, d.round_start, d.traceparent \
         FROM deliveries d \
         WHERE d.state = 'pending' AND d.next_attempt_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.tenant_id = d.tenant_id \
                           AND e.endpoint = d.endpoint AND e.open_until > $1) \
           AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS f(t, ep) \
                           WHERE f.t = d.tenant_id AND f.ep = d.endpoint) \
         ORDER BY d.next_attempt_at, d.id \
         LIMIT {fetch} \
         FOR UPDATE OF d SKIP LOCKED"
    )
}

/// The outbox's insert (one statement for all the deliveries of a transaction).
pub(crate) const OUTBOX_SQL: &str =
    "INSERT INTO deliveries (id, tenant_id, job_id, webhook_id, event, url, endpoint, body, \
       traceparent, state, attempts, round_start, next_attempt_at, created_at) \
     SELECT u.id, u.t, u.j, u.w, u.e, u.url, u.ep, ($9::text[])[u.b], u.tp, 'pending', 0, 0, \
       $10::int8, $10::int8 \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::int4[], $11::text[]) AS u(id, t, j, w, e, url, ep, b, tp)";

/// The subscriptions of some tenants, for [`outbox`].
pub(crate) async fn subscriptions(
    tx: &impl GenericClient,
    tenants: &[&str],
) -> StoreResult<Vec<Hook>> {
    query(
        tx,
        "SELECT id, tenant_id, url, events, queues FROM webhooks \
         WHERE tenant_id = ANY($1::text[]) ORDER BY created_at, id",
        &[&tenants],
    )
    .await?
    .into_iter()
    .map(|r| {
        let url: String = get(&r, 2)?;
        Ok(Hook {
            id: get(&r, 0)?,
            tenant: get(&r, 1)?,
            endpoint: endpoint_or_url(&url),
            url,
            events: event_names(get(&r, 3)?),
            queues: get(&r, 4)?,
        })
    })
    .collect()
}

/// The secrets to sign with: the current one, and the previous one while still valid.
fn secrets(r: &Row, from: usize, now: Timestamp) -> StoreResult<Vec<String>> {
    let mut out = vec![get::<String>(r, from)?];
    let previous: Option<String> = get(r, from + 1)?;
    let until = ts_opt(r, from + 2)?;
    if let (Some(previous), Some(until)) = (previous, until) {
        if until > now {
            out.push(previous);
        }
    }
    Ok(out)
}

/// A due delivery, as the claim picked it.
struct Due {
    id: String,
    tenant: String,
    job: String,
    hook: Option<String>,
    event: String,
    url: String,
    endpoint: String,
    body: String,
    attempts: i32,
    round_start: i32,
    traceparent: Option<String>,
}

fn due_from_row(r: &Row) -> StoreResult<Due> {
    Ok(Due {
        id: get(r, 0)?,
        tenant: get(r, 1)?,
        job: get(r, 2)?,
        hook: get(r, 3)?,
        event: get(r, 4)?,
        url: get(r, 5)?,
        endpoint: get(r, 6)?,
        body: get(r, 7)?,
        attempts: get(r, 8)?,
        round_start: get(r, 9)?,
        traceparent: get(r, 10)?,
    })
}

/// Reads callback secrets by tenant.
async fn callback_secrets(
    tx: &impl GenericClient,
    tenants: &[&str],
    now: Timestamp,
) -> StoreResult<HashMap<String, Vec<String>>> {
    if tenants.is_empty() {
        return Ok(HashMap::new());
    }
    query(
        tx,
        "SELECT tenant_id, secret, previous_secret, previous_expires_at FROM callback_secrets \
         WHERE tenant_id = ANY($1::text[])",
        &[&tenants],
    )
    .await?
    .iter()
    .map(|r| Ok((get::<String>(r, 0)?, secrets(r, 1, now)?)))
    .collect()
}

/// Claims due deliveries; see the module docs.
pub(crate) async fn claim(
    tx: &impl GenericClient,
    p: &DeliveryClaim,
) -> StoreResult<Vec<DeliveryTask>> {
    if p.limit == 0 {
        return Ok(Vec::new());
    }
    let now = p.now;
    // The claimer's own deliveries in flight, per endpoint, against the concurrency cap;
    // endpoints already at the cap are left out in SQL, like open ones, so neither can
    // fill the page and hold back the others.
    let in_flight: HashMap<(&str, &str), usize> = p
        .in_flight
        .iter()
        .map(|((t, ep), n)| ((t.as_str(), ep.as_str()), *n))
        .collect();
    let (full_tenants, full_endpoints): (Vec<&str>, Vec<&str>) = in_flight
        .iter()
        .filter(|(_, n)| **n >= p.per_endpoint)
        .map(|(k, _)| *k)
        .unzip();
    // Over-fetch: rows past an endpoint's cap, extra rows of a probed endpoint and rows
    // of deleted subscriptions are not sent. A power of two, written into the SQL: the
    // generic plan knows how many rows it is for, and the statement cache holds at most
    // a few shapes of the claim.
    let fetch = p
        .limit
        .saturating_mul(2)
        .clamp(1, 65_536)
        .next_power_of_two();
    // With the lease's settings (sent in the same round trip): the due rows must come
    // from a walk of `deliveries_due` that stops at `fetch`, not from a sort of every
    // pending delivery (13 ms a claim at a few thousand pending, a dispatch rate that
    // fell as the backlog grew; 0.9 ms with the walk).
    let sql = claim_sql(fetch);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&now.0, &full_tenants, &full_endpoints];
    let (set, due) = tokio::join!(
        tx.batch_execute(crate::jobs::LEASE_SETTINGS),
        query(tx, &sql, &params)
    );
    set.map_err(crate::pg_err)?;
    let due = due?
        .iter()
        .map(due_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    if due.is_empty() {
        return Ok(Vec::new());
    }

    // Endpoint health, subscription secrets and callback secrets: one round trip.
    let mut pairs: Vec<(&str, &str)> = due
        .iter()
        .map(|d| (d.tenant.as_str(), d.endpoint.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (pair_tenants, pair_endpoints): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let mut hook_ids: Vec<&str> = due.iter().filter_map(|d| d.hook.as_deref()).collect();
    hook_ids.sort_unstable();
    hook_ids.dedup();
    let mut cb_tenants: Vec<&str> = due
        .iter()
        .filter(|d| d.hook.is_none())
        .map(|d| d.tenant.as_str())
        .collect();
    cb_tenants.sort_unstable();
    cb_tenants.dedup();
    let health_q = async {
        query(
            tx,
            "SELECT e.tenant_id, e.endpoint, e.failures, e.open_until FROM endpoints e \
             JOIN unnest($1::text[], $2::text[]) AS u(t, ep) \
               ON e.tenant_id = u.t AND e.endpoint = u.ep",
            &[&pair_tenants, &pair_endpoints],
        )
        .await
    };
    let hooks_q = async {
        if hook_ids.is_empty() {
            return Ok(Vec::new());
        }
        query(
            tx,
            "SELECT id, secret, previous_secret, previous_expires_at FROM webhooks \
             WHERE id = ANY($1::text[])",
            &[&hook_ids],
        )
        .await
    };
    let (health_rows, hook_rows, mut cb_secrets) =
        futures::try_join!(health_q, hooks_q, callback_secrets(tx, &cb_tenants, now))?;
    let mut health: HashMap<(String, String), EndpointHealth> = HashMap::new();
    for r in &health_rows {
        health.insert(
            (get(r, 0)?, get(r, 1)?),
            EndpointHealth {
                failures: nonneg(i64::from(get::<i32>(r, 2)?))?,
                open_until: ts_opt(r, 3)?,
            },
        );
    }
    let hook_secrets = hook_rows
        .iter()
        .map(|r| Ok((get::<String>(r, 0)?, secrets(r, 1, now)?)))
        .collect::<StoreResult<HashMap<_, _>>>()?;

    // The cap and the breaker decide, in due order.
    let mut taken: Vec<&Due> = Vec::new();
    let mut orphaned: Vec<&str> = Vec::new();
    let mut probed: HashSet<(&str, &str)> = HashSet::new();
    let mut slots = in_flight;
    for d in &due {
        if taken.len() >= p.limit {
            break;
        }
        if d.hook
            .as_ref()
            .is_some_and(|h| !hook_secrets.contains_key(h))
        {
            orphaned.push(&d.id);
            continue;
        }
        let busy = slots.entry((&d.tenant, &d.endpoint)).or_default();
        if *busy >= p.per_endpoint {
            continue;
        }
        let h = health
            .get(&(d.tenant.clone(), d.endpoint.clone()))
            .copied()
            .unwrap_or_default();
        let take = match p.breaker.admit(h, now) {
            Admission::Open(_) => false,
            Admission::Probe => probed.insert((&d.tenant, &d.endpoint)),
            Admission::Closed => true,
        };
        if take {
            *busy += 1;
            taken.push(d);
        }
    }

    // Probes: hold the endpoint shut while the probe runs. Compare-and-set, so of two
    // concurrent claims only one gets the probe.
    let hold_until = now.plus_ms(p.hold_ms.min(i64::MAX as u64) as i64);
    if !probed.is_empty() {
        // In key order, so two claims cannot deadlock on each other's endpoint rows.
        let mut keys: Vec<(&str, &str)> = probed.iter().copied().collect();
        keys.sort_unstable();
        let (t, ep): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
        let won: HashSet<(String, String)> = query(
            tx,
            "INSERT INTO endpoints AS e (tenant_id, endpoint, failures, open_until) \
             SELECT u.t, u.ep, 0, $3::int8 FROM unnest($1::text[], $2::text[]) AS u(t, ep) \
             ON CONFLICT (tenant_id, endpoint) DO UPDATE SET open_until = EXCLUDED.open_until \
             WHERE e.failures >= $5 AND (e.open_until IS NULL OR e.open_until <= $4) \
             RETURNING e.tenant_id, e.endpoint",
            &[
                &t,
                &ep,
                &hold_until.0,
                &now.0,
                &i32::try_from(p.breaker.threshold).unwrap_or(i32::MAX),
            ],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect::<StoreResult<_>>()?;
        taken.retain(|d| {
            !probed.contains(&(d.tenant.as_str(), d.endpoint.as_str()))
                || won.contains(&(d.tenant.clone(), d.endpoint.clone()))
        });
    }

    // Hold what is taken, bury what lost its subscription, and make the callback
    // secrets that are missing: one round trip.
    let taken_ids: Vec<&str> = taken.iter().map(|d| d.id.as_str()).collect();
    let hold = async {
        if !taken_ids.is_empty() {
            execute(
                tx,
                "UPDATE deliveries SET next_attempt_at = $2 WHERE id = ANY($1::text[])",
                &[&taken_ids, &hold_until.0],
            )
            .await?;
        }
        Ok::<_, StoreError>(())
    };
    let bury = async {
        if !orphaned.is_empty() {
            execute(
                tx,
                "UPDATE deliveries SET state = 'dead', last_error = 'webhook deleted', \
                 next_attempt_at = NULL WHERE id = ANY($1::text[])",
                &[&orphaned],
            )
            .await?;
        }
        Ok(())
    };
    let mut missing: Vec<&str> = taken
        .iter()
        .filter(|d| d.hook.is_none() && !cb_secrets.contains_key(&d.tenant))
        .map(|d| d.tenant.as_str())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let create = async {
        if missing.is_empty() {
            return Ok(HashMap::new());
        }
        let fresh: Vec<String> = missing
            .iter()
            .map(|_| vow_core::webhook::generate_secret())
            .collect();
        // A concurrent claim may create it first: keep whichever committed, read back.
        execute(
            tx,
            "INSERT INTO callback_secrets (tenant_id, secret, updated_at) \
             SELECT u.t, u.s, $3::int8 FROM unnest($1::text[], $2::text[]) AS u(t, s) \
             ON CONFLICT (tenant_id) DO NOTHING",
            &[&missing, &fresh, &now.0],
        )
        .await?;
        callback_secrets(tx, &missing, now).await
    };
    let ((), (), created) = futures::try_join!(hold, bury, create)?;
    cb_secrets.extend(created);

    taken
        .into_iter()
        .map(|d| {
            let secrets = match &d.hook {
                Some(h) => hook_secrets.get(h),
                None => cb_secrets.get(&d.tenant),
            }
            .cloned()
            .ok_or_else(|| internal(format!("no secret for delivery {}", d.id)))?;
            Ok(DeliveryTask {
                id: d.id.parse().map_err(internal)?,
                tenant_id: d.tenant.parse().map_err(internal)?,
                job_id: d.job.parse().map_err(internal)?,
                webhook_id: d
                    .hook
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(internal)?,
                event: WebhookEvent::parse(&d.event)
                    .ok_or_else(|| internal(format!("unknown notice type {}", d.event)))?,
                url: d.url.clone(),
                endpoint: d.endpoint.clone(),
                body: d.body.clone(),
                traceparent: d.traceparent.clone(),
                attempts: nonneg(i64::from(d.attempts))?,
                round_attempts: nonneg(i64::from((d.attempts - d.round_start).max(0)))?,
                secrets,
            })
        })
        .collect()
}

fn sql_int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Logs an attempt and, if its fence still holds, moves the delivery and its endpoint's
/// health on.
pub(crate) async fn record(tx: &impl GenericClient, p: &DeliveryOutcome) -> StoreResult<()> {
    let status = p.status.map(i32::from);
    let (state, next_at, delivered_at, last_error) = match p.next {
        DeliveryNext::Delivered => (DeliveryState::Delivered, None, Some(p.at.0), None),
        DeliveryNext::RetryAt(t) => (DeliveryState::Pending, Some(t.0), None, p.error.as_deref()),
        DeliveryNext::Dead => (DeliveryState::Dead, None, None, p.error.as_deref()),
    };
    let before = sql_int(p.attempts_before);
    // One statement: count and log the attempt; apply the outcome only if fenced (same
    // attempt count as when claimed, and still pending).
    let rows = query(
        tx,
        "WITH o AS ( \
           SELECT id, (attempts = $2::int4 AND state = 'pending') AS fenced FROM deliveries \
           WHERE id = $1::text FOR UPDATE), \
         d AS ( \
           UPDATE deliveries d SET \
             attempts = d.attempts + 1, \
             state = CASE WHEN o.fenced THEN $3::text ELSE d.state END, \
             next_attempt_at = CASE WHEN o.fenced THEN $4::int8 ELSE d.next_attempt_at END, \
             delivered_at = CASE WHEN o.fenced THEN $5::int8 ELSE d.delivered_at END, \
             last_status = CASE WHEN o.fenced THEN $6::int4 ELSE d.last_status END, \
             last_error = CASE WHEN o.fenced THEN $7::text ELSE d.last_error END \
           FROM o WHERE d.id = o.id \
           RETURNING d.id, d.tenant_id, d.endpoint, d.attempts, o.fenced), \
         a AS ( \
           INSERT INTO delivery_attempts (delivery_id, attempt, at, status, latency_ms, error, response) \
           SELECT d.id, d.attempts, $8::int8, $6::int4, $9::int8, $10::text, $11::text FROM d) \
         SELECT tenant_id, endpoint, attempts, fenced FROM d",
        &[
            &p.id.as_str(),
            &before,
            &state.as_str(),
            &next_at,
            &delivered_at,
            &status,
            &last_error,
            &p.at.0,
            &(p.latency_ms.min(i64::MAX as u64) as i64),
            &p.error,
            &p.response,
        ],
    )
    .await?;
    let row = rows.first().ok_or(StoreError::NotFound)?;
    let (tenant, endpoint): (String, String) = (get(row, 0)?, get(row, 1)?);
    let fenced: bool = get(row, 3)?;
    if !fenced {
        // Stale (claimed again since) or settled meanwhile (e.g. its subscription was
        // deleted): logged, nothing else moves.
        return Ok(());
    }
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant, &endpoint];
    if p.next == DeliveryNext::Delivered {
        // Closed again; no write at all when it already was (the common case).
        let h = p.breaker.on_success();
        let failures = sql_int(h.failures);
        let open_until = h.open_until.map(|t| t.0);
        execute(
            tx,
            "UPDATE endpoints SET failures = $3, open_until = $4 \
             WHERE tenant_id = $1 AND endpoint = $2 \
               AND (failures <> $3 OR open_until IS DISTINCT FROM $4)",
            &[key[0], key[1], &failures, &open_until],
        )
        .await?;
        return Ok(());
    }
    // A failure counts: lock the row (creating it the first time) so none is lost.
    const LOCK: &str = "SELECT failures, open_until FROM endpoints \
        WHERE tenant_id = $1 AND endpoint = $2 FOR UPDATE";
    let mut locked = query(tx, LOCK, &key).await?;
    if locked.is_empty() {
        execute(
            tx,
            "INSERT INTO endpoints (tenant_id, endpoint) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &key,
        )
        .await?;
        locked = query(tx, LOCK, &key).await?;
    }
    let current = match locked.first() {
        Some(r) => EndpointHealth {
            failures: nonneg(i64::from(get::<i32>(r, 0)?))?,
            open_until: ts_opt(r, 1)?,
        },
        None => EndpointHealth::default(),
    };
    let h = p.breaker.on_failure(current, p.at);
    execute(
        tx,
        "UPDATE endpoints SET failures = $3, open_until = $4 WHERE tenant_id = $1 AND endpoint = $2",
        &[
            key[0],
            key[1],
            &sql_int(h.failures),
            &h.open_until.map(|t| t.0),
        ],
    )
    .await?;
    Ok(())
}

/// Columns of `deliveries` in the order [`delivery_from_row`] reads them.
const DELIVERY_COLS: &str = "id, job_id, webhook_id, event, url, state, attempts, \
    next_attempt_at, last_status, last_error, created_at, delivered_at";

fn delivery_from_row(r: &Row) -> StoreResult<DeliveryView> {
    let event: &str = get(r, 3)?;
    let state: &str = get(r, 5)?;
    Ok(DeliveryView {
        id: parsed(r, 0)?,
        job_id: parsed(r, 1)?,
        webhook_id: parsed_opt(r, 2)?,
        event: WebhookEvent::parse(event)
            .ok_or_else(|| internal(format!("unknown notice type {event}")))?,
        url: get(r, 4)?,
        state: DeliveryState::parse(state)
            .ok_or_else(|| internal(format!("unknown delivery state {state}")))?,
        attempts: nonneg(i64::from(get::<i32>(r, 6)?))?,
        next_attempt_at: ts_opt(r, 7)?,
        last_status: get::<Option<i32>>(r, 8)?
            .map(|s| u16::try_from(s).map_err(internal))
            .transpose()?,
        last_error: get(r, 9)?,
        created_at: Timestamp(get(r, 10)?),
        delivered_at: ts_opt(r, 11)?,
        log: None,
    })
}

fn attempt_from_row(r: &Row) -> StoreResult<DeliveryAttemptView> {
    Ok(DeliveryAttemptView {
        attempt: nonneg(i64::from(get::<i32>(r, 0)?))?,
        at: Timestamp(get(r, 1)?),
        status: get::<Option<i32>>(r, 2)?
            .map(|s| u16::try_from(s).map_err(internal))
            .transpose()?,
        latency_ms: nonneg(get::<i64>(r, 3)?)?,
        error: get(r, 4)?,
        response: get(r, 5)?,
    })
}

/// One delivery of a tenant with its attempt log (both read in one round trip).
pub(crate) async fn get_one(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &DeliveryId,
) -> StoreResult<Option<DeliveryView>> {
    let delivery = async { query(c, &delivery_sql(), &[&id.as_str(), &tenant.as_str()]).await };
    let log = async {
        query(
            c,
            "SELECT attempt, at, status, latency_ms, error, response FROM delivery_attempts \
             WHERE delivery_id = $1 ORDER BY attempt",
            &[&id.as_str()],
        )
        .await
    };
    let (delivery, log) = futures::try_join!(delivery, log)?;
    let Some(row) = delivery.first() else {
        return Ok(None);
    };
    let mut view = delivery_from_row(row)?;
    view.log = Some(
        log.iter()
            .map(attempt_from_row)
            .collect::<StoreResult<_>>()?,
    );
    Ok(Some(view))
}

/// A tenant's deliveries, newest first, paged like `job_list`.
pub(crate) async fn list(
    c: &impl GenericClient,
    p: &DeliveryList,
) -> StoreResult<Page<DeliveryView>> {
    // Only the filters given, so each shape gets its own plan (and index).
    let mut sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE tenant_id = $1");
    let mut args: Vec<&str> = vec![p.tenant_id.as_str()];
    let filters = [
        ("webhook_id =", p.webhook_id.as_ref().map(|w| w.as_str())),
        ("job_id =", p.job_id.as_ref().map(|j| j.as_str())),
        ("id <", p.before.as_ref().map(|b| b.as_str())),
    ];
    for (cond, value) in filters {
        if let Some(v) = value {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY id DESC LIMIT {}",
        p.limit.saturating_add(1)
    ));
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let mut items = query(c, &sql, &params)
        .await?
        .iter()
        .map(delivery_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next_cursor = if items.len() > p.limit {
        items.truncate(p.limit);
        items.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Replays a delivery: pending, due now, a fresh round.
pub(crate) async fn retry(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &DeliveryId,
    now: Timestamp,
) -> StoreResult<DeliveryView> {
    let orphaned = query(
        c,
        &delivery_orphaned_sql(),
        &[&id.as_str(), &tenant.as_str()],
    )
    .await?;
    match orphaned.first().map(|r| get::<bool>(r, 0)).transpose()? {
        None => return Err(StoreError::NotFound),
        Some(true) => {
            return Err(StoreError::Conflict(
                "its webhook was deleted: there is nothing to send it to".into(),
            ))
        }
        Some(false) => {}
    }
    query(
        c,
        &format!(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = $3, round_start = attempts \
             WHERE id = $1 AND {TENANT_CHECK} $2 RETURNING {DELIVERY_COLS}"
        ),
        &[&id.as_str(), &tenant.as_str(), &now.0],
    )
    .await?
    .first()
    .map(delivery_from_row)
    .unwrap_or(Err(StoreError::NotFound))
}

/// Columns of `webhooks` in the order [`webhook_from_row`] reads them.
const WEBHOOK_COLS: &str = "id, url, events, queues, created_at, previous_expires_at, secret";

/// Reads a subscription; its secret only when `with_secret`.
fn webhook_from_row(r: &Row, with_secret: bool) -> StoreResult<WebhookView> {
    let queues: Option<Vec<String>> = get(r, 3)?;
    Ok(WebhookView {
        id: parsed(r, 0)?,
        url: get(r, 1)?,
        events: event_names(get(r, 2)?),
        queues: queues
            .map(|qs| {
                qs.iter()
                    .map(|q| q.parse().map_err(internal))
                    .collect::<StoreResult<Vec<_>>>()
            })
            .transpose()?,
        created_at: Timestamp(get(r, 4)?),
        previous_secret_valid_until: ts_opt(r, 5)?,
        secret: if with_secret { get(r, 6)? } else { None },
    })
}

pub(crate) async fn webhook_insert(
    c: &impl GenericClient,
    p: &WebhookInsert,
) -> StoreResult<WebhookView> {
    let events: Vec<&str> = p.events.iter().map(|e| e.as_str()).collect();
    let queues: Option<Vec<&str>> = p
        .queues
        .as_ref()
        .map(|qs| qs.iter().map(|q| q.as_str()).collect());
    query(
        c,
        &format!(
            "INSERT INTO webhooks (id, tenant_id, url, events, queues, secret, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {WEBHOOK_COLS}"
        ),
        &[
            &p.id.as_str(),
            &p.tenant_id.as_str(),
            &p.url,
            &events,
            &queues,
            &p.secret,
            &p.now.0,
        ],
    )
    .await?
    .first()
    .map(|r| webhook_from_row(r, true))
    .unwrap_or(Err(StoreError::NotFound))
}

pub(crate) async fn webhook_get(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &WebhookId,
) -> StoreResult<Option<WebhookView>> {
    query(c, &webhook_sql(), &[&id.as_str(), &tenant.as_str()])
        .await?
        .first()
        .map(|r| webhook_from_row(r, false))
        .transpose()
}

pub(crate) async fn webhook_list(
    c: &impl GenericClient,
    tenant: &TenantId,
) -> StoreResult<Vec<WebhookView>> {
    query(
        c,
        &format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id"
        ),
        &[&tenant.as_str()],
    )
    .await?
    .iter()
    .map(|r| webhook_from_row(r, false))
    .collect()
}

fn grace_end(p: &SecretRotate) -> i64 {
    p.now.plus_ms(p.grace_ms.min(i64::MAX as u64) as i64).0
}

/// Rotates a subscription's secret; the previous one signs until the grace period ends.
pub(crate) async fn webhook_secret_rotate(
    c: &impl GenericClient,
    p: &SecretRotate,
) -> StoreResult<WebhookView> {
    let id = p.webhook_id.as_ref().ok_or(StoreError::NotFound)?;
    query(
        c,
        &format!(
            "UPDATE webhooks SET previous_secret = secret, previous_expires_at = $3, secret = $4 \
             WHERE id = $1 AND {TENANT_CHECK} $2 RETURNING {WEBHOOK_COLS}"
        ),
        &[
            &id.as_str(),
            &p.tenant_id.as_str(),
            &grace_end(p),
            &p.secret,
        ],
    )
    .await?
    .first()
    .map(|r| webhook_from_row(r, true))
    .unwrap_or(Err(StoreError::NotFound))
}

/// Deletes a subscription and buries its pending deliveries, in one statement.
pub(crate) async fn webhook_delete(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &WebhookId,
) -> StoreResult<()> {
    let rows = query(
        c,
        &format!(
            "WITH w AS (DELETE FROM webhooks WHERE id = $1 AND {TENANT_CHECK} $2 RETURNING id), \
             d AS (UPDATE deliveries SET state = 'dead', last_error = 'webhook deleted', \
                     next_attempt_at = NULL \
                   WHERE webhook_id IN (SELECT id FROM w) AND state = 'pending') \
             SELECT id FROM w"
        ),
        &[&id.as_str(), &tenant.as_str()],
    )
    .await?;
    if rows.is_empty() {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Sets a tenant's callback secret, keeping the previous one valid for the grace period.
/// Whether the tenant has a callback secret.
pub(crate) async fn callback_secret_exists(
    c: &impl GenericClient,
    tenant: &TenantId,
) -> StoreResult<bool> {
    Ok(!query(
        c,
        "SELECT 1 FROM callback_secrets WHERE tenant_id = $1",
        &[&tenant.as_str()],
    )
    .await?
    .is_empty())
}

pub(crate) async fn callback_secret_rotate(
    c: &impl GenericClient,
    p: &SecretRotate,
) -> StoreResult<CallbackSecretView> {
    let rows = query(
        c,
        "INSERT INTO callback_secrets AS c (tenant_id, secret, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET previous_secret = c.secret, \
           previous_expires_at = $4, secret = EXCLUDED.secret, updated_at = EXCLUDED.updated_at \
         RETURNING secret, previous_expires_at",
        &[&p.tenant_id.as_str(), &p.secret, &p.now.0, &grace_end(p)],
    )
    .await?;
    let r = rows.first().ok_or(StoreError::NotFound)?;
    Ok(CallbackSecretView {
        secret: get(r, 0)?,
        previous_secret_valid_until: ts_opt(r, 1)?,
    })
}

/// Deletes up to `limit` settled deliveries past their retention, with their logs:
/// delivered ones created before `completed_before`, dead ones before `dead_before`.
pub(crate) async fn prune(
    tx: &impl GenericClient,
    p: &JobPrune,
    limit: usize,
) -> StoreResult<usize> {
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
        // The state and the batch size are written into the SQL so that the batch is
        // planned with them: a range scan of the partial index `deliveries_settled` (a
        // generic plan cannot prove `state = $n` implies it). Not through the statement
        // cache: `left` varies, and this runs once a minute.
        let sql = format!(
            "WITH doomed AS ( \
               SELECT id FROM deliveries WHERE state = '{state}' AND created_at < $1 \
               ORDER BY created_at LIMIT {left} FOR UPDATE SKIP LOCKED), \
             log AS (DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM doomed)) \
             DELETE FROM deliveries WHERE id IN (SELECT id FROM doomed) RETURNING 1",
            state = state.as_str()
        );
        let rows = tx.query(&sql, &[&before.0]).await.map_err(crate::pg_err)?;
        gone += rows.len();
    }
    Ok(gone)
}
