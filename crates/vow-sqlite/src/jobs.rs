//! Job operations of the SQLite store. Writes run on the writer thread inside the
//! group-commit transaction; single-job transitions load the job, apply the domain
//! state machine ([`vow_core::machine::apply`]) and save it, so the store cannot
//! disagree with the reference model.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::json;
use vow_core::api::{JobEventView, Page};
use vow_core::machine::{apply, EventKind, Op, Refusal};
use vow_core::notice::NoticeType;
use vow_core::retry::jitter;
use vow_core::{Job, JobId, JobState, LeaseId, QueueName, TenantId, Timestamp};
use vow_store::*;

use crate::rows::{
    event_from_row, event_insert, job_from_row, job_load, job_save, to_json, JOB_COLS,
};
use crate::{internal, Effects};

/// Changes to the queues' job counts (`queue_counts`) made by one command, gathered as
/// its jobs change state and written once at its end, in its transaction: a lease of 16
/// jobs writes two rows, not 32.
#[derive(Debug, Default)]
pub(crate) struct Counts(Vec<(TenantId, QueueName, JobState, i64)>);

impl Counts {
    /// `by` more (or fewer) jobs of `tenant`'s `queue` in `state`.
    pub(crate) fn add(&mut self, tenant: &TenantId, queue: &QueueName, state: JobState, by: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, q, s, _)| *s == state && q == queue && t == tenant)
        {
            Some(entry) => entry.3 += by,
            None => self.0.push((tenant.clone(), queue.clone(), state, by)),
        }
    }

    /// A job moved from `from` to the state it is in now.
    fn moved(&mut self, job: &Job, from: JobState) {
        if from != job.state {
            self.add(&job.tenant_id, &job.queue, from, -1);
            self.add(&job.tenant_id, &job.queue, job.state, 1);
        }
    }

    /// Writes the gathered changes and forgets them.
    pub(crate) fn write(&mut self, c: &Connection) -> StoreResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut upsert = c
            .prepare_cached(
                "INSERT INTO queue_counts (tenant_id, queue, state, n) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant_id, queue, state) DO UPDATE SET n = n + excluded.n",
            )
            .map_err(internal)?;
        for (tenant, queue, state, by) in self.0.drain(..) {
            if by != 0 {
                upsert
                    .execute(params![tenant.as_str(), queue.as_str(), state.as_str(), by])
                    .map_err(internal)?;
            }
        }
        Ok(())
    }
}

fn refusal(r: Refusal) -> StoreError {
    match r {
        Refusal::LeaseLost => StoreError::LeaseLost,
        Refusal::InvalidState(s) => StoreError::InvalidState(s),
    }
}

/// Loads, transitions, saves and logs one job; the event is queued for publication.
fn transition(
    c: &Connection,
    fx: &mut Effects,
    tenant: &TenantId,
    id: &JobId,
    op: Op,
    now: Timestamp,
) -> StoreResult<Job> {
    let job = job_load(c, tenant, id)
        .map_err(internal)?
        .ok_or(StoreError::NotFound)?;
    transition_loaded(c, fx, job, op, now)
}

/// [`transition`] for a job already read in this transaction.
fn transition_loaded(
    c: &Connection,
    fx: &mut Effects,
    mut job: Job,
    op: Op,
    now: Timestamp,
) -> StoreResult<Job> {
    let from = job.state;
    let is_heartbeat = matches!(op, Op::Heartbeat { .. });
    let kind = apply(&mut job, op, now, jitter()).map_err(refusal)?;
    job_save(c, &job).map_err(internal)?;
    fx.counts.moved(&job, from);
    if !is_heartbeat {
        record(c, fx, &job, kind, Some(from), now)?;
    }
    Ok(job)
}

/// Logs a transition and queues its publication and any wake-ups it implies.
fn record(
    c: &Connection,
    fx: &mut Effects,
    job: &Job,
    kind: EventKind,
    from: Option<JobState>,
    now: Timestamp,
) -> StoreResult<()> {
    let detail = match kind {
        EventKind::Leased => job.worker_id.as_ref().map(|w| json!({ "worker_id": w })),
        EventKind::Failed | EventKind::LeaseExpired | EventKind::Dead => {
            job.last_error.as_ref().map(|e| json!({ "error": e }))
        }
        _ => None,
    };
    let event = event_insert(c, job, kind, from, detail, now).map_err(internal)?;
    if let Some(notice) = NoticeType::of(kind, job.state) {
        crate::notices::outbox(c, job, notice, now)?;
    }
    match job.state {
        JobState::Available => fx.wake.push((job.tenant_id.clone(), job.queue.clone())),
        JobState::Scheduled => fx.nudge_chores = true,
        _ => {}
    }
    fx.events.push((job.tenant_id.clone(), event));
    Ok(())
}

pub(crate) fn insert_many(
    c: &Connection,
    fx: &mut Effects,
    p: JobInsertMany,
) -> StoreResult<Vec<Inserted>> {
    let tenant = p.tenant_id.as_str();
    let queue = p.queue.as_str();
    c.prepare_cached(
        "INSERT OR IGNORE INTO queues (tenant_id, name, created_at) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![tenant, queue, p.now.0]))
    .map_err(internal)?;
    let mut insert = c
        .prepare_cached(
            "INSERT INTO jobs (id, tenant_id, queue, state, priority, grp, max_attempts, payload, \
             run_at, created_at, tags, metadata, timeout_ms, backoff, callback_url, traceparent, \
             idempotency_key, request_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )
        .map_err(internal)?;
    let mut out = Vec::with_capacity(p.jobs.len());
    for new in p.jobs {
        if let Some(idem) = &new.idempotency {
            let existing: Option<(String, Option<String>)> = c
                .prepare_cached(
                    "SELECT id, request_hash FROM jobs \
                     WHERE tenant_id = ?1 AND queue = ?2 AND idempotency_key = ?3",
                )
                .and_then(|mut s| {
                    s.query_row(params![tenant, queue, idem.key], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .map_err(internal)?;
            if let Some((id, hash)) = existing {
                let id: JobId = id.parse().map_err(internal)?;
                if hash.as_deref() != Some(idem.request_hash.as_str()) {
                    return Err(StoreError::IdempotencyConflict(id));
                }
                let job = job_load(c, &p.tenant_id, &id)
                    .map_err(internal)?
                    .ok_or(StoreError::NotFound)?;
                out.push(Inserted {
                    job,
                    created: false,
                });
                continue;
            }
        }
        insert
            .execute(params![
                new.id.as_str(),
                tenant,
                queue,
                new.state.as_str(),
                new.priority,
                new.group.as_ref().map(|g| g.as_str()),
                new.max_attempts,
                new.payload,
                new.run_at.0,
                p.now.0,
                to_json(&new.tags),
                to_json(&new.metadata),
                new.timeout_ms,
                to_json(&new.backoff),
                new.callback_url,
                new.traceparent,
                new.idempotency.as_ref().map(|i| i.key.as_str()),
                new.idempotency.as_ref().map(|i| i.request_hash.as_str()),
            ])
            .map_err(internal)?;
        let job = new.into_job(&p.tenant_id, &p.queue, p.now);
        fx.counts.add(&job.tenant_id, &job.queue, job.state, 1);
        record(c, fx, &job, EventKind::Enqueued, None, p.now)?;
        out.push(Inserted { job, created: true });
    }
    Ok(out)
}

pub(crate) fn lease(c: &Connection, fx: &mut Effects, p: &JobLease) -> StoreResult<Vec<Job>> {
    let paused: Option<bool> = c
        .prepare_cached("SELECT paused FROM queues WHERE tenant_id = ?1 AND name = ?2")
        .and_then(|mut s| {
            s.query_row(params![p.tenant_id.as_str(), p.queue.as_str()], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(internal)?;
    if paused != Some(false) {
        // Unknown queue (nothing ever enqueued) or paused: nothing to lease.
        return Ok(Vec::new());
    }
    // The candidates, whole, in one indexed scan (the writer is the only writer, so
    // they are still available when updated below). No `LIMIT ?`: a bound limit makes
    // SQLite re-plan the statement on every execution; the index already yields rows in
    // order, so reading only the first `max_jobs` costs the same.
    let candidates: Vec<Job> = c
        .prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE tenant_id = ?1 AND queue = ?2 AND state = 'available' \
             ORDER BY priority, run_at, id"
        ))
        .and_then(|mut s| {
            s.query_map(params![p.tenant_id.as_str(), p.queue.as_str()], job_from_row)?
                .take(p.max_jobs as usize)
                .collect()
        })
        .map_err(internal)?;
    candidates
        .into_iter()
        .map(|job| {
            let op = Op::Lease {
                lease_id: LeaseId::generate(),
                worker_id: p.worker_id.clone(),
                lease_ms: p.lease_ms,
            };
            transition_loaded(c, fx, job, op, p.now)
        })
        .collect()
}

pub(crate) fn heartbeat(c: &Connection, p: JobHeartbeat) -> StoreResult<Timestamp> {
    let mut fx = Effects::default();
    let op = Op::Heartbeat {
        lease_id: p.lease_id,
        extend_ms: p.extend_ms,
        progress: p.progress,
    };
    let job = transition(c, &mut fx, &p.tenant_id, &p.id, op, p.now)?;
    job.lease_expires_at.ok_or(StoreError::LeaseLost)
}

pub(crate) fn ack_many(
    c: &Connection,
    fx: &mut Effects,
    p: JobAckMany,
) -> StoreResult<Vec<StoreResult<Job>>> {
    let mut out = Vec::with_capacity(p.items.len());
    for item in p.items {
        let (id, op) = item.into_op();
        let r = transition(c, fx, &p.tenant_id, &id, op, p.now);
        // A stale lease on one item must not fail the others; a storage error must.
        if let Err(StoreError::Internal(_) | StoreError::Unavailable(_)) = &r {
            return r.map(|_| Vec::new());
        }
        out.push(r);
    }
    Ok(out)
}

pub(crate) fn cancel(c: &Connection, fx: &mut Effects, p: &JobCancel) -> StoreResult<Job> {
    transition(c, fx, &p.tenant_id, &p.id, Op::Cancel, p.now)
}

pub(crate) fn retry(c: &Connection, fx: &mut Effects, p: &JobRetry) -> StoreResult<Job> {
    transition(c, fx, &p.tenant_id, &p.id, Op::Retry, p.now)
}

/// Ids (with tenants) of at most 1000 jobs matching a sweep query.
fn sweep_ids(c: &Connection, sql: &str, now: Timestamp) -> StoreResult<Vec<(TenantId, JobId)>> {
    let rows: Vec<(String, String)> = c
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map([now.0], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(internal)?;
    rows.into_iter()
        .map(|(t, id)| Ok((t.parse().map_err(internal)?, id.parse().map_err(internal)?)))
        .collect()
}

fn sweep(
    c: &Connection,
    fx: &mut Effects,
    now: Timestamp,
    select: &str,
    op: Op,
    next: fn(&Connection) -> StoreResult<Option<Timestamp>>,
) -> StoreResult<Sweep> {
    let ids = sweep_ids(c, select, now)?;
    let mut changed = 0;
    for (tenant, id) in ids {
        match transition(c, fx, &tenant, &id, op.clone(), now) {
            Ok(_) => changed += 1,
            Err(StoreError::InvalidState(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Sweep {
        changed,
        next_at: next(c)?,
    })
}

pub(crate) fn promote_due(c: &Connection, fx: &mut Effects, now: Timestamp) -> StoreResult<Sweep> {
    sweep(
        c,
        fx,
        now,
        "SELECT tenant_id, id FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 ORDER BY run_at LIMIT 1000",
        Op::Promote,
        next_due,
    )
}

pub(crate) fn reap_expired(c: &Connection, fx: &mut Effects, now: Timestamp) -> StoreResult<Sweep> {
    sweep(
        c,
        fx,
        now,
        "SELECT tenant_id, id FROM jobs WHERE state = 'running' AND lease_expires_at <= ?1 \
         ORDER BY lease_expires_at LIMIT 1000",
        Op::Expire,
        next_expiry,
    )
}

/// Deletes at most `p.limit` finished jobs past their state's cut-off, oldest first, and
/// their events. Runs on the writer inside the group commit, so the batch stays small;
/// the `jobs_finished` index makes finding them a range scan.
pub(crate) fn prune(c: &Connection, fx: &mut Effects, p: &JobPrune) -> StoreResult<Pruned> {
    let mut pick = c
        .prepare_cached(
            "SELECT seq, id, tenant_id, queue FROM jobs WHERE state = ?1 AND finished_at < ?2 \
             ORDER BY finished_at LIMIT ?3",
        )
        .map_err(internal)?;
    // The row holding the highest `seq` is never deleted: a new event's `seq` is
    // `MAX(seq) + 1`, which would hand a deleted one out again (to an SSE client
    // resuming after it, say). A pruned job's event there becomes a placeholder that no
    // tenant reads, deleted once a newer event exists (schema 4).
    let mut del_events = c
        .prepare_cached(
            "DELETE FROM job_events WHERE job_id = ?1 AND tenant_id = ?2 \
             AND seq < (SELECT MAX(seq) FROM job_events)",
        )
        .map_err(internal)?;
    let mut blank_last = c
        .prepare_cached(
            "UPDATE job_events SET tenant_id = '', job_id = '', queue = '', kind = 'placeholder', \
             from_state = NULL, to_state = '', attempt = 0, at = 0, detail = NULL \
             WHERE job_id = ?1 AND tenant_id = ?2",
        )
        .map_err(internal)?;
    let mut del_job = c
        .prepare_cached("DELETE FROM jobs WHERE seq = ?1")
        .map_err(internal)?;
    let mut out = Pruned::default();
    for (state, before) in p.cutoffs() {
        let left = p.limit.saturating_sub(out.jobs);
        if left == 0 {
            break;
        }
        let doomed: Vec<(i64, String, String, String)> = pick
            .query_map(params![state.as_str(), before.0, left as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(internal)?;
        for (seq, id, tenant, queue) in doomed {
            out.events += del_events.execute([&id, &tenant]).map_err(internal)?;
            out.events += blank_last.execute([&id, &tenant]).map_err(internal)?;
            let gone = del_job.execute([seq]).map_err(internal)?;
            out.jobs += gone;
            fx.counts.add(
                &tenant.parse().map_err(internal)?,
                &queue.parse().map_err(internal)?,
                state,
                -(gone as i64),
            );
        }
    }
    c.prepare_cached(
        "DELETE FROM job_events WHERE job_id = '' AND seq < (SELECT MAX(seq) FROM job_events)",
    )
    .and_then(|mut s| s.execute([]))
    .map_err(internal)?;
    out.deliveries = crate::notices::prune(c, p, p.limit.saturating_sub(out.jobs))?;
    Ok(out)
}

fn min_time(c: &Connection, sql: &str) -> StoreResult<Option<Timestamp>> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.query_row([], |r| r.get::<_, Option<i64>>(0)))
        .map(|t| t.map(Timestamp))
        .map_err(internal)
}

pub(crate) fn next_due(c: &Connection) -> StoreResult<Option<Timestamp>> {
    min_time(c, "SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")
}

pub(crate) fn next_expiry(c: &Connection) -> StoreResult<Option<Timestamp>> {
    min_time(
        c,
        "SELECT MIN(lease_expires_at) FROM jobs WHERE state = 'running'",
    )
}

pub(crate) fn event_list(
    c: &Connection,
    tenant: &TenantId,
    id: &JobId,
) -> StoreResult<Vec<JobEventView>> {
    c.prepare_cached(
        "SELECT seq, job_id, queue, kind, from_state, to_state, attempt, at, detail \
         FROM job_events WHERE job_id = ?1 AND tenant_id = ?2 ORDER BY seq",
    )
    .and_then(|mut s| {
        s.query_map(params![id.as_str(), tenant.as_str()], event_from_row)?
            .collect()
    })
    .map_err(internal)
}

pub(crate) fn event_list_since(
    c: &Connection,
    p: &JobEventListSince,
) -> StoreResult<Vec<JobEventView>> {
    c.prepare_cached(
        "SELECT seq, job_id, queue, kind, from_state, to_state, attempt, at, detail \
         FROM job_events WHERE seq > ?1 AND tenant_id = ?2 \
         AND (?3 IS NULL OR queue = ?3) AND (?4 IS NULL OR job_id = ?4) \
         ORDER BY seq LIMIT ?5",
    )
    .and_then(|mut s| {
        s.query_map(
            params![
                p.after,
                p.tenant_id.as_str(),
                p.queue.as_ref().map(|q| q.as_str()),
                p.job_id.as_ref().map(|j| j.as_str()),
                p.limit as i64
            ],
            event_from_row,
        )?
        .collect()
    })
    .map_err(internal)
}

/// Most available jobs that a listing sorts whole (from `jobs_lease`) rather than find
/// by walking the queue's jobs newest first.
pub(crate) const SORT_AVAILABLE_UP_TO: u64 = 10_000;

/// The index that lists a queue's jobs in `state` (or all of them), newest first,
/// without walking many jobs of other states (schema 5), and a term the query must
/// carry for SQLite to see that a partial index holds every row it asks for:
///
/// * scheduled, dead, cancelled: `jobs_parked`, exactly those;
/// * running: `jobs_expiry`, every running job (as many as there are workers' slots),
///   sorted;
/// * available: `jobs_lease` sorted when the queue has few, else `jobs_queue` (a
///   backlog is mostly its newest jobs);
/// * completed, or any state: `jobs_queue`, the queue's jobs newest first.
fn list_index(
    c: &Connection,
    tenant: &TenantId,
    queue: &QueueName,
    state: Option<JobState>,
) -> StoreResult<(&'static str, &'static str)> {
    Ok(match state {
        Some(JobState::Scheduled | JobState::Dead | JobState::Cancelled) => (
            "INDEXED BY jobs_parked",
            // The index's own condition, word for word.
            " AND state IN ('scheduled', 'dead', 'cancelled')",
        ),
        Some(JobState::Running) => ("INDEXED BY jobs_expiry", ""),
        Some(JobState::Available) => {
            let n: Option<i64> = c
                .prepare_cached(
                    "SELECT n FROM queue_counts \
                     WHERE tenant_id = ?1 AND queue = ?2 AND state = 'available'",
                )
                .and_then(|mut s| {
                    s.query_row(params![tenant.as_str(), queue.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(internal)?;
            if n.unwrap_or(0) as u64 <= SORT_AVAILABLE_UP_TO {
                ("INDEXED BY jobs_lease", "")
            } else {
                ("INDEXED BY jobs_queue", "")
            }
        }
        Some(JobState::Completed) | None => ("INDEXED BY jobs_queue", ""),
    })
}

pub(crate) fn list(c: &Connection, p: &JobList) -> StoreResult<Page<Job>> {
    let tenant = p
        .tenant_id
        .as_ref()
        .ok_or_else(|| internal("job_list needs a tenant"))?;
    let (index, term) = match &p.queue {
        Some(q) => list_index(c, tenant, q, p.state)?,
        None => ("", ""),
    };
    let mut sql = format!("SELECT {JOB_COLS} FROM jobs {index} WHERE tenant_id = ?{term}");
    let mut args: Vec<String> = vec![tenant.to_string()];
    if let Some(q) = &p.queue {
        sql.push_str(" AND queue = ?");
        args.push(q.to_string());
    }
    if let Some(s) = &p.state {
        // A literal (a state's name is one of six words), so that a partial index on
        // the state can serve the query.
        sql.push_str(&format!(" AND state = '{}'", s.as_str()));
    }
    if let Some(g) = &p.group {
        sql.push_str(" AND grp = ?");
        args.push(g.to_string());
    }
    if let Some(t) = &p.tag {
        sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE json_each.value = ?)");
        args.push(t.clone());
    }
    if let Some(b) = &p.before {
        sql.push_str(" AND id < ?");
        args.push(b.to_string());
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", p.limit + 1));
    let mut items: Vec<Job> = c
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params_from_iter(args.iter()), job_from_row)?
                .collect()
        })
        .map_err(internal)?;
    let next_cursor = if items.len() > p.limit {
        items.truncate(p.limit);
        items.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
