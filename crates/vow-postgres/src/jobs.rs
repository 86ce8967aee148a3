//! Job operations of the PostgreSQL store.
//!
//! Single-job transitions (ack, heartbeat, cancel, retry, promote, reap) lock their rows
//! (`FOR UPDATE`, in id order so concurrent batches cannot deadlock; the sweeps use
//! `SKIP LOCKED`), apply the domain state machine ([`vow_core::machine::apply`]) in
//! Rust, and write every changed row back with one `UNNEST` update and every event with
//! one `UNNEST` insert: a batch costs the same round trips as one job, and the store
//! cannot disagree with the reference model. The lease, the hot path, is one statement
//! that picks with `SKIP LOCKED`, updates and logs; its SQL mirrors `Op::Lease`.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;
use serde_json::json;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use vow_core::api::{JobEventView, Page};
use vow_core::job::NewJob;
use vow_core::machine::{apply, EventKind, Op, Refusal};
use vow_core::notice::NoticeType;
use vow_core::retry::jitter;
use vow_core::{Job, JobId, JobState, LeaseId, TenantId, Timestamp};
use vow_store::*;

use crate::notices::{outbox, subscriptions, Hook, Notice, OUTBOX_SQL};
use crate::rows::{
    event_from_row, job_cols, job_from_row, opt_json, to_json, EVENT_COLS, JOB_COLS, TENANT_CHECK,
};
use crate::{pg_err, Effects};

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Runs a query through the connection's statement cache.
pub(crate) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query(&st, params).await.map_err(pg_err)
}

/// Runs a write transaction's last statement and its `COMMIT` in one round trip, and
/// marks the transaction committed (`fx.committed`). Only for a body that decides
/// nothing after this statement: if it fails, the transaction is aborted, PostgreSQL
/// answers the `COMMIT` with a rollback, and the statement's error is returned. The
/// statement is prepared first, so its execution surely goes out before the `COMMIT`
/// (tokio-postgres sends a request when its future is first polled; an unprepared
/// statement would be sent only after its `Parse` round trip, behind the `COMMIT`).
pub(crate) async fn query_and_commit(
    tx: &impl GenericClient,
    fx: &mut Effects,
    sql: &str,
    params: &Params<'_>,
) -> StoreResult<Vec<Row>> {
    let st = tx.prepare_cached(sql).await.map_err(pg_err)?;
    let (rows, commit) = tokio::join!(tx.query(&st, params), tx.batch_execute("COMMIT"));
    let rows = rows.map_err(pg_err)?;
    commit.map_err(pg_err)?;
    fx.committed = true;
    Ok(rows)
}

/// Runs one statement outside any transaction block, so that PostgreSQL commits it on
/// its own, and returns its rows once that commit is done. PostgreSQL commits at the
/// `Sync` that follows the statement and only then sends `ReadyForQuery`, which is what
/// ends tokio-postgres's `query` (the rows may arrive before the commit: PostgreSQL
/// flushes a full output buffer early). `a_plain_enqueue_is_answered_after_its_commit`
/// holds both to that.
pub(crate) async fn query_alone(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> StoreResult<Vec<Row>> {
    // The same call as inside a transaction: what makes it commit alone is that the
    // caller has opened none.
    query(c, sql, params).await
}

/// Runs a statement through the connection's statement cache.
pub(crate) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> StoreResult<u64> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.execute(&st, params).await.map_err(pg_err)
}

fn refusal(r: Refusal) -> StoreError {
    match r {
        Refusal::LeaseLost => StoreError::LeaseLost,
        Refusal::InvalidState(s) => StoreError::InvalidState(s),
    }
}

/// An event about to be logged, with the job as it is after the transition.
struct Pending {
    job: Job,
    kind: EventKind,
    from: Option<JobState>,
}

fn detail(job: &Job, kind: EventKind) -> Option<serde_json::Value> {
    match kind {
        EventKind::Leased => job.worker_id.as_ref().map(|w| json!({ "worker_id": w })),
        EventKind::Failed | EventKind::LeaseExpired | EventKind::Dead => {
            job.last_error.as_ref().map(|e| json!({ "error": e }))
        }
        _ => None,
    }
}

/// Logs events in one statement and queues their publication and the wake-ups they imply;
/// writes the deliveries they call for ([`outbox`], given `hooks` or reading them). With
/// `hooks` given, every statement is sent on the first poll once prepared.
async fn record(
    tx: &impl GenericClient,
    fx: &mut Effects,
    pending: Vec<Pending>,
    now: Timestamp,
    hooks: Option<&[Hook]>,
) -> StoreResult<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let details: Vec<Option<serde_json::Value>> =
        pending.iter().map(|p| detail(&p.job, p.kind)).collect();
    let tenants: Vec<&str> = pending.iter().map(|p| p.job.tenant_id.as_str()).collect();
    let ids: Vec<&str> = pending.iter().map(|p| p.job.id.as_str()).collect();
    let queues: Vec<&str> = pending.iter().map(|p| p.job.queue.as_str()).collect();
    let kinds: Vec<&str> = pending.iter().map(|p| p.kind.as_str()).collect();
    let froms: Vec<Option<&str>> = pending.iter().map(|p| p.from.map(|s| s.as_str())).collect();
    let tos: Vec<&str> = pending.iter().map(|p| p.job.state.as_str()).collect();
    let attempts: Vec<i32> = pending.iter().map(|p| p.job.attempt as i32).collect();
    let texts: Vec<Option<String>> = details.iter().map(opt_json).collect();
    // The outbox: notices due from these transitions, written in the same transaction.
    // Its read of the subscriptions is pipelined with the events insert.
    let notices: Vec<Notice<'_>> = pending
        .iter()
        .filter_map(|p| {
            NoticeType::of(p.kind, p.job.state).map(|kind| Notice { kind, job: &p.job })
        })
        .collect();
    let events = async {
        query(
            tx,
            EVENTS_SQL,
            &[
                &tenants, &ids, &queues, &kinds, &froms, &tos, &attempts, &now.0, &texts,
            ],
        )
        .await
    };
    let (rows, ()) = futures::try_join!(events, outbox(tx, &notices, now, hooks))?;
    // One sequence, consumed in row order within the statement: sorted seqs match rows.
    let mut seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    seqs.sort_unstable();
    for ((p, detail), seq) in pending.into_iter().zip(details).zip(seqs) {
        match p.job.state {
            JobState::Available => fx.wake.push((p.job.tenant_id.clone(), p.job.queue.clone())),
            JobState::Scheduled => fx.nudge_chores = true,
            _ => {}
        }
        fx.events.push((
            p.job.tenant_id.clone(),
            JobEventView {
                seq,
                job_id: p.job.id,
                queue: p.job.queue,
                kind: p.kind,
                from_state: p.from,
                to_state: p.job.state,
                attempt: p.job.attempt,
                at: now,
                detail,
            },
        ));
    }
    Ok(())
}

/// [`record`]'s events insert.
const EVENTS_SQL: &str = "INSERT INTO job_events (tenant_id, job_id, queue, kind, from_state, to_state, attempt, at, detail) \
     SELECT t, j, q, k, f, s, a, $8::int8, d \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::int4[], $9::text[]) AS u(t, j, q, k, f, s, a, d) \
     RETURNING seq";

/// [`save_many`]'s update.
const SAVE_SQL: &str =
    "UPDATE jobs j SET state = u.state, attempt = u.attempt, result = u.result, \
     last_error = u.last_error, progress = u.progress, run_at = u.run_at, \
     started_at = u.started_at, finished_at = u.finished_at, lease_id = u.lease_id, \
     lease_expires_at = u.lease_expires_at, worker_id = u.worker_id \
     FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], \
                 $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::text[]) \
          AS u(id, state, attempt, result, last_error, progress, run_at, started_at, \
               finished_at, lease_id, lease_expires_at, worker_id) \
     WHERE j.id = u.id";

/// Writes back every column a transition may change, for all `jobs`, in one statement
/// (sent on the first poll once [`SAVE_SQL`] is prepared).
async fn save_many(tx: &impl GenericClient, jobs: &[&Job]) -> StoreResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let states: Vec<&str> = jobs.iter().map(|j| j.state.as_str()).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt as i32).collect();
    let results: Vec<Option<String>> = jobs.iter().map(|j| opt_json(&j.result)).collect();
    let errors: Vec<Option<String>> = jobs.iter().map(|j| opt_json(&j.last_error)).collect();
    let progress: Vec<Option<String>> = jobs.iter().map(|j| opt_json(&j.progress)).collect();
    let run_at: Vec<i64> = jobs.iter().map(|j| j.run_at.0).collect();
    let started: Vec<Option<i64>> = jobs.iter().map(|j| j.started_at.map(|t| t.0)).collect();
    let finished: Vec<Option<i64>> = jobs.iter().map(|j| j.finished_at.map(|t| t.0)).collect();
    let leases: Vec<Option<&str>> = jobs
        .iter()
        .map(|j| j.lease_id.as_ref().map(|l| l.as_str()))
        .collect();
    let expires: Vec<Option<i64>> = jobs
        .iter()
        .map(|j| j.lease_expires_at.map(|t| t.0))
        .collect();
    let workers: Vec<Option<&str>> = jobs.iter().map(|j| j.worker_id.as_deref()).collect();
    execute(
        tx,
        SAVE_SQL,
        &[
            &ids, &states, &attempts, &results, &errors, &progress, &run_at, &started, &finished,
            &leases, &expires, &workers,
        ],
    )
    .await?;
    Ok(())
}

/// How [`apply_steps`] ends.
enum Ending<'a> {
    /// More statements follow in the transaction.
    Open,
    /// Its writes are the transaction's last statements: they go out with the `COMMIT`,
    /// in one round trip; the subscriptions the outbox needs were read beforehand.
    Commit(&'a [Hook]),
}

/// Applies `steps` (in order) to the locked `jobs`, saves the changed ones and logs
/// their events. One outcome per step; a missing job is `NotFound`.
async fn apply_steps(
    tx: &impl GenericClient,
    fx: &mut Effects,
    mut jobs: HashMap<JobId, Job>,
    steps: Vec<(JobId, Op)>,
    now: Timestamp,
    ending: Ending<'_>,
) -> StoreResult<Vec<StoreResult<Job>>> {
    let mut out = Vec::with_capacity(steps.len());
    let mut dirty = HashSet::new();
    let mut pending = Vec::new();
    for (id, op) in steps {
        let Some(job) = jobs.get_mut(&id) else {
            out.push(Err(StoreError::NotFound));
            continue;
        };
        let from = job.state;
        let is_heartbeat = matches!(op, Op::Heartbeat { .. });
        match apply(job, op, now, jitter()) {
            Ok(kind) => {
                dirty.insert(id);
                if !is_heartbeat {
                    pending.push(Pending {
                        job: job.clone(),
                        kind,
                        from: Some(from),
                    });
                }
                out.push(Ok(job.clone()));
            }
            Err(r) => out.push(Err(refusal(r))),
        }
    }
    let changed: Vec<&Job> = dirty.iter().filter_map(|id| jobs.get(id)).collect();
    // Independent statements: pipelined, one round trip.
    match ending {
        Ending::Open => {
            futures::try_join!(save_many(tx, &changed), record(tx, fx, pending, now, None))?;
        }
        Ending::Commit(hooks) => {
            // Prepared first, so that each statement goes out on its future's first poll,
            // ahead of the `COMMIT` polled after them (see [`query_and_commit`]).
            futures::try_join!(
                tx.prepare_cached(SAVE_SQL),
                tx.prepare_cached(EVENTS_SQL),
                tx.prepare_cached(OUTBOX_SQL)
            )
            .map_err(pg_err)?;
            let writes = async {
                futures::try_join!(
                    save_many(tx, &changed),
                    record(tx, fx, pending, now, Some(hooks))
                )
            };
            // If a statement fails, the transaction is aborted and the `COMMIT` rolls it
            // back; the statement's error is returned.
            let (written, committed) = tokio::join!(writes, tx.batch_execute("COMMIT"));
            written?;
            committed.map_err(pg_err)?;
            fx.committed = true;
        }
    }
    Ok(out)
}

/// Reads a tenant's jobs by id (`$1`, an array; `$2` the tenant), in id order, and with
/// `lock` locks them (`FOR UPDATE`). Found by the primary key (see [`TENANT_CHECK`]).
pub(crate) fn jobs_by_id_sql(lock: bool) -> String {
    let lock = if lock { " FOR UPDATE" } else { "" };
    format!(
        "SELECT {JOB_COLS} FROM jobs WHERE id = ANY($1::text[]) AND {TENANT_CHECK} $2 \
         ORDER BY id{lock}"
    )
}

/// A tenant's job (`$1` its id, `$2` the tenant).
pub(crate) fn job_sql() -> String {
    format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND {TENANT_CHECK} $2")
}

/// A job's events in order (`$1` its id, `$2` the tenant).
pub(crate) fn job_events_sql() -> String {
    format!(
        "SELECT {EVENT_COLS} FROM job_events WHERE job_id = $1 AND {TENANT_CHECK} $2 ORDER BY seq"
    )
}

/// Locks a tenant's jobs by id (in id order) and applies one op to each.
async fn transition_many(
    tx: &impl GenericClient,
    fx: &mut Effects,
    tenant: &TenantId,
    steps: Vec<(JobId, Op)>,
    now: Timestamp,
) -> StoreResult<Vec<StoreResult<Job>>> {
    let mut ids: Vec<&str> = steps.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // The tenant's subscriptions are read with the lock (one round trip), so that the
    // writes can go out with the `COMMIT`; not for heartbeats, which notify nobody.
    let may_notify = steps
        .iter()
        .any(|(_, op)| !matches!(op, Op::Heartbeat { .. }));
    let hooks = async {
        if may_notify {
            subscriptions(tx, &[tenant.as_str()]).await
        } else {
            Ok(Vec::new())
        }
    };
    let (sql, tenant_id) = (jobs_by_id_sql(true), tenant.as_str());
    let params: [&(dyn ToSql + Sync); 2] = [&ids, &tenant_id];
    let (rows, hooks) = futures::try_join!(query(tx, &sql, &params), hooks)?;
    let jobs = rows
        .iter()
        .map(|r| job_from_row(r).map(|j| (j.id.clone(), j)))
        .collect::<StoreResult<HashMap<_, _>>>()?;
    apply_steps(tx, fx, jobs, steps, now, Ending::Commit(&hooks)).await
}

async fn transition_one(
    tx: &impl GenericClient,
    fx: &mut Effects,
    tenant: &TenantId,
    id: &JobId,
    op: Op,
    now: Timestamp,
) -> StoreResult<Job> {
    transition_many(tx, fx, tenant, vec![(id.clone(), op)], now)
        .await?
        .pop()
        .unwrap_or(Err(StoreError::NotFound))
}

pub(crate) async fn insert_many(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobInsertMany,
) -> StoreResult<Vec<Inserted>> {
    let (tenant, queue) = (p.tenant_id.as_str(), p.queue.as_str());
    // The queue's row and the jobs go out together (pipelined, one round trip), the
    // insert of the jobs maybe with the `COMMIT`: the queue's statement is prepared
    // first, so that it goes out on the first poll, surely ahead of that `COMMIT`.
    let upsert = tx.prepare_cached(QUEUE_SQL).await.map_err(pg_err)?;
    let queue_params: [&(dyn ToSql + Sync); 3] = [&tenant, &queue, &p.now.0];
    let (upserted, inserted) =
        tokio::join!(tx.execute(&upsert, &queue_params), insert_jobs(tx, fx, p));
    let upserted = upserted.map_err(pg_err);
    upserted?;
    inserted
}

/// [`insert_many`]'s queue row.
const QUEUE_SQL: &str = "INSERT INTO queues (tenant_id, name, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT DO NOTHING";

/// [`insert_many`] after the queue's row: idempotency checks, then the jobs and their
/// `enqueued` events in one statement.
async fn insert_jobs(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobInsertMany,
) -> StoreResult<Vec<Inserted>> {
    let (tenant, queue) = (p.tenant_id.as_str(), p.queue.as_str());
    // Idempotency keys already used in this queue (a concurrent insert of the same key
    // on another node makes this transaction fail on the unique index and be retried).
    let keys: Vec<&str> = p
        .jobs
        .iter()
        .filter_map(|j| j.idempotency.as_ref().map(|i| i.key.as_str()))
        .collect();
    let mut known: HashMap<String, (JobId, Option<String>)> = HashMap::new();
    if !keys.is_empty() {
        for r in query(
            tx,
            // KEY SHARE: the pruner cannot delete a job whose key this enqueue relies
            // on before it commits (it skips it); one it deleted first is not seen.
            "SELECT idempotency_key, id, request_hash FROM jobs \
             WHERE tenant_id = $1 AND queue = $2 AND idempotency_key = ANY($3::text[]) \
             FOR KEY SHARE",
            &[&tenant, &queue, &keys],
        )
        .await?
        {
            let id: &str = r.get(1);
            known.insert(r.get(0), (id.parse().map_err(crate::internal)?, r.get(2)));
        }
    }
    enum Slot {
        New(usize),
        Old(JobId),
    }
    let mut slots = Vec::with_capacity(p.jobs.len());
    let mut fresh = Vec::new();
    for (i, new) in p.jobs.iter().enumerate() {
        if let Some(idem) = &new.idempotency {
            if let Some((id, hash)) = known.get(&idem.key) {
                if hash.as_deref() != Some(idem.request_hash.as_str()) {
                    return Err(StoreError::IdempotencyConflict(id.clone()));
                }
                slots.push(Slot::Old(id.clone()));
                continue;
            }
            known.insert(
                idem.key.clone(),
                (new.id.clone(), Some(idem.request_hash.clone())),
            );
        }
        slots.push(Slot::New(i));
        fresh.push(new);
    }
    if !fresh.is_empty() {
        // With the `COMMIT` when nothing is left to read after it (no repeated keys).
        let how = if slots.iter().any(|s| matches!(s, Slot::Old(_))) {
            InsertEnd::Open
        } else {
            InsertEnd::Commit
        };
        insert_rows(tx, fx, p, &fresh, how).await?;
    }
    // Existing jobs named by a repeated key, read back (those created above included).
    let old: Vec<&str> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Old(id) => Some(id.as_str()),
            Slot::New(_) => None,
        })
        .collect();
    let mut existing: HashMap<JobId, Job> = HashMap::new();
    if !old.is_empty() {
        for r in query(tx, &jobs_by_id_sql(false), &[&old, &tenant]).await? {
            let j = job_from_row(&r)?;
            existing.insert(j.id.clone(), j);
        }
    }
    slots
        .into_iter()
        .map(|s| match s {
            Slot::New(i) => Ok(Inserted {
                job: p.jobs[i].to_job(&p.tenant_id, &p.queue, p.now),
                created: true,
            }),
            Slot::Old(id) => existing
                .get(&id)
                .cloned()
                .map(|job| Inserted {
                    job,
                    created: false,
                })
                .ok_or(StoreError::NotFound),
        })
        .collect()
}

/// Plain enqueue (no idempotency key): the queue's row, the jobs and their `enqueued`
/// events in one statement, committed on its own, with no `BEGIN` and no `COMMIT` to
/// send and answer.
pub(crate) async fn insert_alone(
    c: &impl GenericClient,
    fx: &mut Effects,
    p: JobInsertMany,
) -> StoreResult<Vec<Inserted>> {
    let fresh: Vec<&NewJob> = p.jobs.iter().collect();
    insert_rows(c, fx, &p, &fresh, InsertEnd::Alone).await?;
    let (tenant, queue, now) = (&p.tenant_id, &p.queue, p.now);
    Ok(p.jobs
        .into_iter()
        .map(|new| Inserted {
            job: new.into_job(tenant, queue, now),
            created: true,
        })
        .collect())
}

/// How [`insert_rows`]'s statement ends its transaction.
enum InsertEnd {
    /// It does not: more statements follow in the open transaction.
    Open,
    /// The open transaction's `COMMIT` goes out with it.
    Commit,
    /// There is no open transaction: the statement (which then writes the queue's row
    /// too) is a transaction of its own.
    Alone,
}

/// The jobs and their `enqueued` events: what [`INSERT_SQL`] and [`INSERT_ALONE_SQL`] share.
macro_rules! jobs_and_events {
    () => {
        "j AS ( \
           INSERT INTO jobs (id, tenant_id, queue, state, priority, grp, max_attempts, payload, \
             run_at, created_at, tags, metadata, timeout_ms, backoff, callback_url, traceparent, \
             idempotency_key, request_hash) \
           SELECT u.id, $1::text, $2::text, u.state, u.priority, u.grp, u.max_attempts, u.payload, \
             u.run_at, $3::int8, u.tags, u.metadata, u.timeout_ms, u.backoff, u.callback_url, \
             u.traceparent, u.idempotency_key, u.request_hash \
           FROM unnest($4::text[], $5::text[], $6::int2[], $7::text[], $8::int4[], $9::text[], \
             $10::int8[], $11::text[], $12::text[], $13::int8[], $14::text[], $15::text[], \
             $16::text[], $17::text[], $18::text[]) \
             AS u(id, state, priority, grp, max_attempts, payload, run_at, tags, metadata, \
                  timeout_ms, backoff, callback_url, traceparent, idempotency_key, request_hash) \
           RETURNING id, state) \
         INSERT INTO job_events (tenant_id, job_id, queue, kind, from_state, to_state, attempt, at) \
         SELECT $1::text, j.id, $2::text, 'enqueued', NULL, j.state, 0, $3::int8 FROM j \
         RETURNING seq, job_id"
    };
}

/// [`insert_rows`] inside a transaction.
const INSERT_SQL: &str = concat!("WITH ", jobs_and_events!());

/// [`insert_rows`] alone: the queue's row ([`QUEUE_SQL`]) in the same statement.
const INSERT_ALONE_SQL: &str = concat!(
    "WITH q AS (INSERT INTO queues (tenant_id, name, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT DO NOTHING), ",
    jobs_and_events!()
);

/// Inserts `fresh` (jobs of `p`) and their `enqueued` events in one statement and queues
/// the events' publication and wake-ups in `fx`.
async fn insert_rows(
    c: &impl GenericClient,
    fx: &mut Effects,
    p: &JobInsertMany,
    fresh: &[&NewJob],
    how: InsertEnd,
) -> StoreResult<()> {
    let (tenant, queue) = (p.tenant_id.as_str(), p.queue.as_str());
    let ids: Vec<&str> = fresh.iter().map(|j| j.id.as_str()).collect();
    let states: Vec<&str> = fresh.iter().map(|j| j.state.as_str()).collect();
    let prios: Vec<i16> = fresh.iter().map(|j| i16::from(j.priority)).collect();
    let groups: Vec<Option<&str>> = fresh
        .iter()
        .map(|j| j.group.as_ref().map(|g| g.as_str()))
        .collect();
    let max_attempts: Vec<i32> = fresh.iter().map(|j| j.max_attempts as i32).collect();
    let payloads: Vec<&str> = fresh.iter().map(|j| j.payload.as_str()).collect();
    let run_at: Vec<i64> = fresh.iter().map(|j| j.run_at.0).collect();
    let tags: Vec<String> = fresh.iter().map(|j| to_json(&j.tags)).collect();
    let metadata: Vec<String> = fresh.iter().map(|j| to_json(&j.metadata)).collect();
    let timeouts: Vec<i64> = fresh.iter().map(|j| j.timeout_ms as i64).collect();
    let backoffs: Vec<String> = fresh.iter().map(|j| to_json(&j.backoff)).collect();
    let callbacks: Vec<Option<&str>> = fresh.iter().map(|j| j.callback_url.as_deref()).collect();
    let traces: Vec<Option<&str>> = fresh.iter().map(|j| j.traceparent.as_deref()).collect();
    let idem_keys: Vec<Option<&str>> = fresh
        .iter()
        .map(|j| j.idempotency.as_ref().map(|i| i.key.as_str()))
        .collect();
    let hashes: Vec<Option<&str>> = fresh
        .iter()
        .map(|j| j.idempotency.as_ref().map(|i| i.request_hash.as_str()))
        .collect();
    let params: [&(dyn ToSql + Sync); 18] = [
        &tenant,
        &queue,
        &p.now.0,
        &ids,
        &states,
        &prios,
        &groups,
        &max_attempts,
        &payloads,
        &run_at,
        &tags,
        &metadata,
        &timeouts,
        &backoffs,
        &callbacks,
        &traces,
        &idem_keys,
        &hashes,
    ];
    let rows = match how {
        InsertEnd::Open => query(c, INSERT_SQL, &params).await?,
        InsertEnd::Commit => query_and_commit(c, fx, INSERT_SQL, &params).await?,
        InsertEnd::Alone => query_alone(c, INSERT_ALONE_SQL, &params).await?,
    };
    let seqs: HashMap<String, i64> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
    for new in fresh {
        match new.state {
            JobState::Available => fx.wake.push((p.tenant_id.clone(), p.queue.clone())),
            JobState::Scheduled => fx.nudge_chores = true,
            _ => {}
        }
        fx.events.push((
            p.tenant_id.clone(),
            JobEventView {
                seq: seqs.get(new.id.as_str()).copied().unwrap_or_default(),
                job_id: new.id.clone(),
                queue: p.queue.clone(),
                kind: EventKind::Enqueued,
                from_state: None,
                to_state: new.state,
                attempt: 0,
                at: p.now,
                detail: None,
            },
        ));
    }
    Ok(())
}

/// The lease statement: picks (`FOR UPDATE SKIP LOCKED`), leases and logs in one go.
/// Parameters: tenant, queue, max jobs, worker id, now, lease ms (or NULL), lease ids.
/// Built once per process.
pub(crate) fn lease_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH picked AS ( \
               SELECT id FROM jobs \
               WHERE tenant_id = $1 AND queue = $2 AND state = 'available' \
                 AND EXISTS (SELECT 1 FROM queues q WHERE q.tenant_id = $1 AND q.name = $2 AND NOT q.paused) \
               ORDER BY priority, run_at, id \
               LIMIT $3 \
               FOR UPDATE SKIP LOCKED), \
             numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM picked), \
             leased AS ( \
               UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, lease_id = l.lease_id, \
                 worker_id = $4::text, lease_expires_at = $5::int8 + COALESCE($6::int8, j.timeout_ms), \
                 started_at = $5::int8 \
               FROM numbered n JOIN unnest($7::text[]) WITH ORDINALITY AS l(lease_id, rn) USING (rn) \
               WHERE j.id = n.id \
               RETURNING {}), \
             ev AS ( \
               INSERT INTO job_events (tenant_id, job_id, queue, kind, from_state, to_state, attempt, at, detail) \
               SELECT tenant_id, id, queue, 'leased', 'available', 'running', attempt, $5::int8, \
                 json_build_object('worker_id', $4::text)::text \
               FROM leased \
               RETURNING seq, job_id) \
             SELECT {}, ev.seq FROM leased JOIN ev ON ev.job_id = leased.id \
             ORDER BY leased.priority, leased.run_at, leased.id",
            job_cols("j"),
            job_cols("leased"),
        )
    })
}

/// Session settings the lease (and the deliveries claim) run under (see [`lease`]): the
/// ordered index scan of `jobs_lease` (`deliveries_due`) whatever the statistics say.
pub(crate) const LEASE_SETTINGS: &str = "SET LOCAL enable_sort = off; SET LOCAL jit = off";

/// The lease's own transaction settings: [`LEASE_SETTINGS`], and a commit that does
/// not wait for the WAL flush (see [`lease`]).
pub(crate) const LEASE_TX_SETTINGS: &str =
    "SET LOCAL enable_sort = off; SET LOCAL jit = off; SET LOCAL synchronous_commit = off";

/// One statement: pick up to `max_jobs` available jobs of an unpaused queue with
/// `FOR UPDATE SKIP LOCKED` (concurrent leases never wait for each other nor take the
/// same job), apply `Op::Lease` to them, log the `leased` events, return the jobs.
pub(crate) async fn lease(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobLease,
) -> StoreResult<Vec<Job>> {
    let lease_ids: Vec<String> = (0..p.max_jobs)
        .map(|_| LeaseId::generate().as_str().to_owned())
        .collect();
    let lease_ms = p.lease_ms.map(|ms| ms as i64);
    // The pick must walk `jobs_lease`, which yields the jobs in lease order. Without
    // statistics (a new or never-analyzed table: the first minute of a database, or
    // always with autovacuum off) the planner takes the table for nearly empty and
    // prefers `jobs_queue_state` plus a sort of every available job: 23 ms a lease at
    // 10,000 jobs, a drain quadratic in its backlog. Sorting is disabled for this
    // transaction (sent in the same round trip), which leaves the ordered index scan;
    // the few rows the statement itself sorts are still sorted. Their penalty cost
    // would make the plan look expensive enough to JIT-compile (0.4 s), so no JIT.
    //
    // The commit does not wait for the WAL flush: a lease promises a client nothing
    // durable. A crash of PostgreSQL's host before the flush takes the lease back;
    // the job is then available again and runs again, as after an expired lease, and
    // its first holder's outcome is refused (the lease id it holds is gone). Every
    // later synchronous commit (an ack, an enqueue) flushes the WAL past this one.
    let params: [&(dyn ToSql + Sync); 7] = [
        &p.tenant_id.as_str(),
        &p.queue.as_str(),
        &i64::from(p.max_jobs),
        &p.worker_id,
        &p.now.0,
        &lease_ms,
        &lease_ids,
    ];
    // Settings, lease and `COMMIT` in one round trip (with the `BEGIN` before them).
    let (set, rows) = tokio::join!(
        tx.batch_execute(LEASE_TX_SETTINGS),
        query_and_commit(tx, fx, lease_sql(), &params)
    );
    set.map_err(pg_err)?;
    let rows = rows?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        let job = job_from_row(r)?;
        let seq: i64 = r.get(25);
        fx.events.push((
            job.tenant_id.clone(),
            JobEventView {
                seq,
                job_id: job.id.clone(),
                queue: job.queue.clone(),
                kind: EventKind::Leased,
                from_state: Some(JobState::Available),
                to_state: JobState::Running,
                attempt: job.attempt,
                at: p.now,
                detail: detail(&job, EventKind::Leased),
            },
        ));
        jobs.push(job);
    }
    Ok(jobs)
}

pub(crate) async fn heartbeat(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobHeartbeat,
) -> StoreResult<Timestamp> {
    let op = Op::Heartbeat {
        lease_id: p.lease_id.clone(),
        extend_ms: p.extend_ms,
        progress: p.progress.clone(),
    };
    let job = transition_one(tx, fx, &p.tenant_id, &p.id, op, p.now).await?;
    job.lease_expires_at.ok_or(StoreError::LeaseLost)
}

pub(crate) async fn ack_many(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobAckMany,
) -> StoreResult<Vec<StoreResult<Job>>> {
    let steps = p.items.iter().cloned().map(|item| item.into_op()).collect();
    transition_many(tx, fx, &p.tenant_id, steps, p.now).await
}

pub(crate) async fn cancel(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobCancel,
) -> StoreResult<Job> {
    transition_one(tx, fx, &p.tenant_id, &p.id, Op::Cancel, p.now).await
}

pub(crate) async fn retry(
    tx: &impl GenericClient,
    fx: &mut Effects,
    p: &JobRetry,
) -> StoreResult<Job> {
    transition_one(tx, fx, &p.tenant_id, &p.id, Op::Retry, p.now).await
}

/// Locks up to 1000 rows matching a sweep (skipping rows another transaction holds)
/// and applies `op` to each.
async fn sweep(
    tx: &impl GenericClient,
    fx: &mut Effects,
    now: Timestamp,
    filter: &str,
    op: Op,
) -> StoreResult<usize> {
    let rows = query(
        tx,
        &format!("SELECT {JOB_COLS} FROM jobs WHERE {filter} LIMIT 1000 FOR UPDATE SKIP LOCKED"),
        &[&now.0],
    )
    .await?;
    let jobs = rows
        .iter()
        .map(|r| job_from_row(r).map(|j| (j.id.clone(), j)))
        .collect::<StoreResult<HashMap<_, _>>>()?;
    let mut steps: Vec<(JobId, Op)> = jobs.keys().map(|id| (id.clone(), op.clone())).collect();
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    let out = apply_steps(tx, fx, jobs, steps, now, Ending::Open).await?;
    Ok(out.iter().filter(|r| r.is_ok()).count())
}

pub(crate) async fn promote_due(
    tx: &impl GenericClient,
    fx: &mut Effects,
    now: Timestamp,
) -> StoreResult<Sweep> {
    let changed = sweep(
        tx,
        fx,
        now,
        "state = 'scheduled' AND run_at <= $1 ORDER BY run_at",
        Op::Promote,
    )
    .await?;
    Ok(Sweep {
        changed,
        next_at: next_due(tx).await?,
    })
}

pub(crate) async fn reap_expired(
    tx: &impl GenericClient,
    fx: &mut Effects,
    now: Timestamp,
) -> StoreResult<Sweep> {
    let changed = sweep(
        tx,
        fx,
        now,
        "state = 'running' AND lease_expires_at <= $1 ORDER BY lease_expires_at",
        Op::Expire,
    )
    .await?;
    Ok(Sweep {
        changed,
        next_at: next_expiry(tx).await?,
    })
}

/// Deletes at most `p.limit` finished jobs past their state's cut-off, oldest first, with
/// their events: per state one statement that locks the batch with `SKIP LOCKED` (so it
/// never waits for, nor makes wait, anything but its own rows) and deletes it. The
/// state and the batch size are literals, so every batch is planned with them: a range
/// scan of the `jobs_finished` index, and index lookups of the events.
pub(crate) async fn prune(tx: &impl GenericClient, p: &JobPrune) -> StoreResult<Pruned> {
    let mut out = Pruned::default();
    for (state, before) in p.cutoffs() {
        let left = p.limit.saturating_sub(out.jobs);
        if left == 0 {
            break;
        }
        let sql = format!(
            "WITH doomed AS ( \
               SELECT id FROM jobs WHERE state = '{state}' AND finished_at < $1 \
               ORDER BY finished_at LIMIT {left} FOR UPDATE SKIP LOCKED), \
             ev AS (DELETE FROM job_events WHERE job_id IN (SELECT id FROM doomed) RETURNING 1), \
             gone AS (DELETE FROM jobs WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM ev)",
            state = state.as_str(),
        );
        // Not through the statement cache: `left` varies, and this runs once a minute.
        let row = tx.query_one(&sql, &[&before.0]).await.map_err(pg_err)?;
        out.jobs += row.get::<_, i64>(0) as usize;
        out.events += row.get::<_, i64>(1) as usize;
    }
    out.deliveries = crate::notices::prune(tx, p, p.limit.saturating_sub(out.jobs)).await?;
    Ok(out)
}

async fn min_time(c: &impl GenericClient, sql: &str) -> StoreResult<Option<Timestamp>> {
    let rows = query(c, sql, &[]).await?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(Timestamp))
}

pub(crate) async fn next_due(c: &impl GenericClient) -> StoreResult<Option<Timestamp>> {
    min_time(c, "SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'").await
}

pub(crate) async fn next_expiry(c: &impl GenericClient) -> StoreResult<Option<Timestamp>> {
    min_time(
        c,
        "SELECT MIN(lease_expires_at) FROM jobs WHERE state = 'running'",
    )
    .await
}

pub(crate) async fn get(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &JobId,
) -> StoreResult<Option<Job>> {
    let rows = query(c, &job_sql(), &[&id.as_str(), &tenant.as_str()]).await?;
    rows.first().map(job_from_row).transpose()
}

pub(crate) async fn event_list(
    c: &impl GenericClient,
    tenant: &TenantId,
    id: &JobId,
) -> StoreResult<Vec<JobEventView>> {
    query(c, &job_events_sql(), &[&id.as_str(), &tenant.as_str()])
        .await?
        .iter()
        .map(event_from_row)
        .collect()
}

/// A tenant's events after a sequence number. Note: sequence numbers are handed out at
/// insert time, so a transaction that commits later may hold a lower one than an event
/// already returned; see docs/postgres.md ("Event sequence"). Only the filters given are
/// written into the SQL, and the page size as a literal, so the generic plan of each
/// shape walks the index that fits it (`job_events_job` for one job).
pub(crate) async fn event_list_since(
    c: &impl GenericClient,
    p: &JobEventListSince,
) -> StoreResult<Vec<JobEventView>> {
    let mut sql = format!("SELECT {EVENT_COLS} FROM job_events WHERE tenant_id = $1 AND seq > $2");
    let tenant = p.tenant_id.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &p.after];
    let (queue, job) = (
        p.queue.as_ref().map(|q| q.as_str()),
        p.job_id.as_ref().map(|j| j.as_str()),
    );
    if let Some(q) = &queue {
        params.push(q);
        sql.push_str(&format!(" AND queue = ${}", params.len()));
    }
    if let Some(j) = &job {
        params.push(j);
        sql.push_str(&format!(" AND job_id = ${}", params.len()));
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {}", p.limit));
    query(c, &sql, &params)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
}

pub(crate) async fn list(c: &impl GenericClient, p: &JobList) -> StoreResult<Page<Job>> {
    let tenant = p
        .tenant_id
        .as_ref()
        .ok_or_else(|| crate::internal("job_list needs a tenant"))?;
    let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE tenant_id = $1");
    let mut args: Vec<String> = vec![tenant.to_string()];
    let mut filter = |sql: &mut String, cond: &str, v: String| {
        args.push(v);
        sql.push_str(&format!(" AND {cond}${}", args.len()));
    };
    if let Some(q) = &p.queue {
        filter(&mut sql, "queue = ", q.to_string());
    }
    if let Some(s) = &p.state {
        filter(&mut sql, "state = ", s.as_str().to_owned());
    }
    if let Some(g) = &p.group {
        filter(&mut sql, "grp = ", g.to_string());
    }
    if let Some(t) = &p.tag {
        filter(&mut sql, "tags::jsonb ? ", t.clone());
    }
    if let Some(b) = &p.before {
        filter(&mut sql, "id < ", b.to_string());
    }
    // One row past the page tells whether there is a next one. The limit is rounded up
    // to a power of two, so that a connection's statement cache holds few shapes of
    // this statement whatever limits callers ask for; the extra rows are dropped.
    sql.push_str(&format!(
        " ORDER BY id DESC LIMIT {}",
        (p.limit + 1).next_power_of_two()
    ));
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    let mut items = query(c, &sql, &params)
        .await?
        .iter()
        .map(job_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next_cursor = if items.len() > p.limit {
        items.truncate(p.limit);
        items.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
