//! Mapping between `jobs`/`job_events` rows and domain values.

use serde_json::Value;
use tokio_postgres::Row;
use vow_core::api::JobEventView;
use vow_core::machine::EventKind;
use vow_core::{Job, Timestamp};
use vow_store::{StoreError, StoreResult};

use crate::internal;

/// The tenant condition of a lookup by unique id: `tenant_id IS NOT DISTINCT FROM $n`,
/// which on a `NOT NULL` column means `tenant_id = $n` but is never an index condition.
/// With `tenant_id = $n` the planner may find the row through an index that starts with
/// `tenant_id` (`jobs_queue_state`, `deliveries_job`) and filter that tenant's rows for
/// the id, whenever the statistics predate the tenant and estimate it at one row: a
/// tenant created since the last `ANALYZE`, and soon the busiest. That walk cost 17 ms a
/// job lock at 20,000 jobs. Written this way, the unique index on the id is the only way
/// in, and the tenant is checked on the row found.
pub(crate) const TENANT_CHECK: &str = "tenant_id IS NOT DISTINCT FROM";

/// Columns of `jobs` in the order [`job_from_row`] reads them.
pub(crate) const JOB_COLS: &str = "id, tenant_id, queue, state, priority, grp, attempt, \
    max_attempts, payload, result, last_error, progress, run_at, created_at, started_at, \
    finished_at, tags, metadata, timeout_ms, backoff, callback_url, lease_id, \
    lease_expires_at, worker_id, traceparent";

/// [`JOB_COLS`] qualified with a table alias.
pub(crate) fn job_cols(alias: &str) -> String {
    JOB_COLS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn parsed<T: std::str::FromStr>(row: &Row, i: usize) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    let s: &str = row.try_get(i).map_err(internal)?;
    s.parse().map_err(internal)
}

pub(crate) fn parsed_opt<T: std::str::FromStr>(row: &Row, i: usize) -> StoreResult<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let s: Option<&str> = row.try_get(i).map_err(internal)?;
    s.map(|s| s.parse().map_err(internal)).transpose()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> StoreResult<T> {
    let s: &str = row.try_get(i).map_err(internal)?;
    serde_json::from_str(s).map_err(internal)
}

fn json_opt<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> StoreResult<Option<T>> {
    let s: Option<&str> = row.try_get(i).map_err(internal)?;
    s.map(|s| serde_json::from_str(s).map_err(internal))
        .transpose()
}

pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> StoreResult<T> {
    row.try_get(i).map_err(internal)
}

pub(crate) fn ts_opt(row: &Row, i: usize) -> StoreResult<Option<Timestamp>> {
    Ok(get::<Option<i64>>(row, i)?.map(Timestamp))
}

pub(crate) fn nonneg<T: TryFrom<i64>>(v: i64) -> StoreResult<T> {
    T::try_from(v).map_err(|_| StoreError::internal(format!("{v} is out of range")))
}

pub(crate) fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(crate) fn opt_json(v: &Option<impl serde::Serialize>) -> Option<String> {
    v.as_ref().map(to_json)
}

/// Reads a job from a row selected with [`JOB_COLS`] (starting at column 0).
pub(crate) fn job_from_row(row: &Row) -> StoreResult<Job> {
    Ok(Job {
        id: parsed(row, 0)?,
        tenant_id: parsed(row, 1)?,
        queue: parsed(row, 2)?,
        state: parsed(row, 3)?,
        priority: nonneg(i64::from(get::<i16>(row, 4)?))?,
        group: parsed_opt(row, 5)?,
        attempt: nonneg(i64::from(get::<i32>(row, 6)?))?,
        max_attempts: nonneg(i64::from(get::<i32>(row, 7)?))?,
        payload: json(row, 8)?,
        result: json_opt(row, 9)?,
        last_error: json_opt(row, 10)?,
        progress: json_opt(row, 11)?,
        run_at: Timestamp(get(row, 12)?),
        created_at: Timestamp(get(row, 13)?),
        started_at: ts_opt(row, 14)?,
        finished_at: ts_opt(row, 15)?,
        tags: json(row, 16)?,
        metadata: json(row, 17)?,
        timeout_ms: nonneg(get::<i64>(row, 18)?)?,
        backoff: json(row, 19)?,
        callback_url: get(row, 20)?,
        lease_id: parsed_opt(row, 21)?,
        lease_expires_at: ts_opt(row, 22)?,
        worker_id: get(row, 23)?,
        traceparent: get(row, 24)?,
    })
}

/// Columns of `job_events` in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLS: &str =
    "seq, job_id, queue, kind, from_state, to_state, attempt, at, detail";

/// Reads an event row selected with [`EVENT_COLS`].
pub(crate) fn event_from_row(row: &Row) -> StoreResult<JobEventView> {
    let kind: &str = get(row, 3)?;
    Ok(JobEventView {
        seq: get(row, 0)?,
        job_id: parsed(row, 1)?,
        queue: parsed(row, 2)?,
        kind: EventKind::parse(kind)
            .ok_or_else(|| StoreError::internal(format!("unknown event kind {kind}")))?,
        from_state: parsed_opt(row, 4)?,
        to_state: parsed(row, 5)?,
        attempt: nonneg(i64::from(get::<i32>(row, 6)?))?,
        at: Timestamp(get(row, 7)?),
        detail: json_opt::<Value>(row, 8)?,
    })
}
