//! Mapping between `jobs`/`job_events` rows and domain values.

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;
use vow_core::api::JobEventView;
use vow_core::machine::EventKind;
use vow_core::{Job, JobId, JobState, TenantId, Timestamp};

/// Columns of `jobs` in the order [`job_from_row`] reads them.
pub(crate) const JOB_COLS: &str = "id, tenant_id, queue, state, priority, grp, attempt, \
    max_attempts, payload, result, last_error, progress, run_at, created_at, started_at, \
    finished_at, tags, metadata, timeout_ms, backoff, callback_url, lease_id, \
    lease_expires_at, worker_id, traceparent";

fn conv<E: std::error::Error + Send + Sync + 'static>(i: usize, e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))
}

pub(crate) fn parsed<T: std::str::FromStr>(row: &Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.get(i)?;
    s.parse().map_err(|e| conv(i, e))
}

pub(crate) fn parsed_opt<T: std::str::FromStr>(
    row: &Row<'_>,
    i: usize,
) -> rusqlite::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: Option<String> = row.get(i)?;
    s.map(|s| s.parse().map_err(|e| conv(i, e))).transpose()
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = row.get(i)?;
    serde_json::from_str(&s).map_err(|e| conv(i, e))
}

pub(crate) fn json_opt<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    i: usize,
) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| conv(i, e)))
        .transpose()
}

pub(crate) fn ts_opt(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp))
}

pub(crate) fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(crate) fn opt_json(v: &Option<impl serde::Serialize>) -> Option<String> {
    v.as_ref().map(to_json)
}

/// Reads a job from a row selected with [`JOB_COLS`].
pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        queue: parsed(row, 2)?,
        state: parsed(row, 3)?,
        priority: row.get(4)?,
        group: parsed_opt(row, 5)?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        payload: json(row, 8)?,
        result: json_opt(row, 9)?,
        last_error: json_opt(row, 10)?,
        progress: json_opt(row, 11)?,
        run_at: Timestamp(row.get(12)?),
        created_at: Timestamp(row.get(13)?),
        started_at: ts_opt(row, 14)?,
        finished_at: ts_opt(row, 15)?,
        tags: json(row, 16)?,
        metadata: json(row, 17)?,
        timeout_ms: row.get(18)?,
        backoff: json(row, 19)?,
        callback_url: row.get(20)?,
        lease_id: parsed_opt(row, 21)?,
        lease_expires_at: ts_opt(row, 22)?,
        worker_id: row.get(23)?,
        traceparent: row.get(24)?,
    })
}

fn job_load_sql() -> String {
    format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1 AND tenant_id = ?2")
}

/// [`job_save`]'s statement.
const JOB_SAVE: &str = "UPDATE jobs SET state = ?2, attempt = ?3, result = ?4, last_error = ?5, \
     progress = ?6, run_at = ?7, started_at = ?8, finished_at = ?9, lease_id = ?10, \
     lease_expires_at = ?11, worker_id = ?12 WHERE tenant_id = ?13 AND id = ?1";

/// One job of a tenant.
pub(crate) fn job_load(
    c: &Connection,
    tenant: &TenantId,
    id: &JobId,
) -> rusqlite::Result<Option<Job>> {
    c.prepare_cached(&job_load_sql())?
        .query_row(params![id.as_str(), tenant.as_str()], job_from_row)
        .optional()
}

/// Writes back every column a transition may change.
pub(crate) fn job_save(c: &Connection, j: &Job) -> rusqlite::Result<()> {
    c.prepare_cached(JOB_SAVE)?.execute(params![
        j.id.as_str(),
        j.state.as_str(),
        j.attempt,
        opt_json(&j.result),
        opt_json(&j.last_error),
        opt_json(&j.progress),
        j.run_at.0,
        j.started_at.map(|t| t.0),
        j.finished_at.map(|t| t.0),
        j.lease_id.as_ref().map(|l| l.as_str()),
        j.lease_expires_at.map(|t| t.0),
        j.worker_id,
        j.tenant_id.as_str(),
    ])?;
    Ok(())
}

/// Appends an event to a job's log and returns it as published.
pub(crate) fn event_insert(
    c: &Connection,
    job: &Job,
    kind: EventKind,
    from: Option<JobState>,
    detail: Option<Value>,
    at: Timestamp,
) -> rusqlite::Result<JobEventView> {
    let detail_text = opt_json(&detail);
    c.prepare_cached(
        "INSERT INTO job_events (tenant_id, job_id, queue, kind, from_state, to_state, attempt, at, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        job.tenant_id.as_str(),
        job.id.as_str(),
        job.queue.as_str(),
        kind.as_str(),
        from.map(|s| s.as_str()),
        job.state.as_str(),
        job.attempt,
        at.0,
        detail_text,
    ])?;
    Ok(JobEventView {
        seq: c.last_insert_rowid(),
        job_id: job.id.clone(),
        queue: job.queue.clone(),
        kind,
        from_state: from,
        to_state: job.state,
        attempt: job.attempt,
        at,
        detail,
    })
}

/// Reads an event row: `seq, job_id, queue, kind, from_state, to_state, attempt, at, detail`.
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<JobEventView> {
    let kind: String = row.get(3)?;
    Ok(JobEventView {
        seq: row.get(0)?,
        job_id: parsed(row, 1)?,
        queue: parsed(row, 2)?,
        kind: EventKind::parse(&kind).ok_or_else(|| {
            conv(
                3,
                std::io::Error::other(format!("unknown event kind {kind}")),
            )
        })?,
        from_state: parsed_opt(row, 4)?,
        to_state: parsed(row, 5)?,
        attempt: row.get(6)?,
        at: Timestamp(row.get(7)?),
        detail: json_opt(row, 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading and saving a job by id walk the one unique index on `(tenant_id, id)`:
    /// with the tenant left out, either would scan every job.
    #[test]
    fn lookups_by_id_use_the_tenant_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        for sql in [job_load_sql(), JOB_SAVE.to_owned()] {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = explain.raw_query();
            let mut plan: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get(3).unwrap());
            }
            assert_eq!(
                plan,
                ["SEARCH jobs USING INDEX jobs_tenant (tenant_id=? AND id=?)"],
                "{sql}"
            );
        }
    }
}
