//! The job state machine as a pure function over [`Job`]: the reference model.
//!
//! Stores implement these transitions as set-based SQL for speed; the conformance suite
//! checks them against this model, and the property tests below check the model's
//! invariants (terminal states stay put, a stale lease can never record an outcome,
//! attempts never exceed `max_attempts`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::retry::{after_failure, AfterFailure};
use crate::{ErrorInfo, Job, JobState, LeaseId, Timestamp};

/// What happened to a job, as recorded in its event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Inserted (as `available` or `scheduled`).
    Enqueued,
    /// `scheduled → available`: its `run_at` came.
    Promoted,
    /// `available → running`: a worker took a lease.
    Leased,
    /// `running → completed`.
    Completed,
    /// `running → scheduled`: the attempt failed and will be retried.
    Failed,
    /// `running → scheduled | dead`: the lease ran out before complete/fail.
    LeaseExpired,
    /// `running → dead`: failed with no attempts left, or not retryable.
    Dead,
    /// `non-terminal → cancelled`.
    Cancelled,
    /// `dead | cancelled → available` by an explicit retry; attempts reset.
    Retried,
}

impl EventKind {
    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enqueued => "enqueued",
            EventKind::Promoted => "promoted",
            EventKind::Leased => "leased",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::LeaseExpired => "lease_expired",
            EventKind::Dead => "dead",
            EventKind::Cancelled => "cancelled",
            EventKind::Retried => "retried",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        use EventKind::*;
        [
            Enqueued,
            Promoted,
            Leased,
            Completed,
            Failed,
            LeaseExpired,
            Dead,
            Cancelled,
            Retried,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An operation on one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Make a due scheduled job available.
    Promote,
    /// Start an attempt.
    Lease {
        /// Fresh fencing token.
        lease_id: LeaseId,
        /// Who leases.
        worker_id: String,
        /// Lease length; the job's `timeout_ms` when `None`.
        lease_ms: Option<u64>,
    },
    /// Extend the running lease.
    Heartbeat {
        /// Must match the current lease.
        lease_id: LeaseId,
        /// New deadline is now + this.
        extend_ms: u64,
        /// Progress to store, if any.
        progress: Option<Value>,
    },
    /// Record success.
    Complete {
        /// Must match the current lease.
        lease_id: LeaseId,
        /// Result to store.
        result: Option<Value>,
    },
    /// Record a failed attempt.
    Fail {
        /// Must match the current lease.
        lease_id: LeaseId,
        /// What went wrong.
        message: String,
        /// Worker's error code.
        code: Option<String>,
        /// `false` sends the job straight to `dead`.
        retryable: bool,
        /// Overrides the backoff delay.
        retry_after_ms: Option<u64>,
    },
    /// The lease deadline passed (the reaper).
    Expire,
    /// Cancel a non-terminal job.
    Cancel,
    /// Replay a dead or cancelled job.
    Retry,
}

/// Why an operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The lease is not (or no longer) the job's current one: `409 lease_lost`.
    LeaseLost,
    /// The operation does not apply in the job's state: `409 invalid_state`.
    InvalidState(JobState),
}

/// Applies `op` to `job` at `now`; `jitter` in `[0, 1)` draws the backoff delay.
/// On refusal the job is unchanged.
pub fn apply(job: &mut Job, op: Op, now: Timestamp, jitter: f64) -> Result<EventKind, Refusal> {
    let fenced = |job: &Job, lease_id: &LeaseId| {
        job.state == JobState::Running && job.lease_id.as_ref() == Some(lease_id)
    };
    match op {
        Op::Promote => {
            if job.state != JobState::Scheduled || job.run_at > now {
                return Err(Refusal::InvalidState(job.state));
            }
            job.state = JobState::Available;
            Ok(EventKind::Promoted)
        }
        Op::Lease {
            lease_id,
            worker_id,
            lease_ms,
        } => {
            if job.state != JobState::Available {
                return Err(Refusal::InvalidState(job.state));
            }
            job.state = JobState::Running;
            job.attempt += 1;
            job.lease_id = Some(lease_id);
            job.worker_id = Some(worker_id);
            job.lease_expires_at = Some(now.plus_ms(lease_ms.unwrap_or(job.timeout_ms) as i64));
            job.started_at = Some(now);
            Ok(EventKind::Leased)
        }
        Op::Heartbeat {
            lease_id,
            extend_ms,
            progress,
        } => {
            if !fenced(job, &lease_id) {
                return Err(Refusal::LeaseLost);
            }
            job.lease_expires_at = Some(now.plus_ms(extend_ms as i64));
            if progress.is_some() {
                job.progress = progress;
            }
            // A heartbeat is not a transition; callers do not record it as an event.
            Ok(EventKind::Leased)
        }
        Op::Complete { lease_id, result } => {
            if !fenced(job, &lease_id) {
                return Err(Refusal::LeaseLost);
            }
            job.state = JobState::Completed;
            job.result = result;
            job.finished_at = Some(now);
            clear_lease(job);
            Ok(EventKind::Completed)
        }
        Op::Fail {
            lease_id,
            message,
            code,
            retryable,
            retry_after_ms,
        } => {
            if !fenced(job, &lease_id) {
                return Err(Refusal::LeaseLost);
            }
            job.last_error = Some(ErrorInfo {
                message,
                code,
                at: now,
            });
            Ok(fail_attempt(
                job,
                retryable,
                retry_after_ms,
                now,
                jitter,
                EventKind::Failed,
            ))
        }
        Op::Expire => {
            if job.state != JobState::Running || job.lease_expires_at.is_some_and(|t| t > now) {
                return Err(Refusal::InvalidState(job.state));
            }
            job.last_error = Some(ErrorInfo {
                message: "lease expired before the worker completed or failed the job".into(),
                code: Some("lease_expired".into()),
                at: now,
            });
            Ok(fail_attempt(
                job,
                true,
                None,
                now,
                jitter,
                EventKind::LeaseExpired,
            ))
        }
        Op::Cancel => {
            if job.state.is_terminal() {
                return Err(Refusal::InvalidState(job.state));
            }
            job.state = JobState::Cancelled;
            job.finished_at = Some(now);
            clear_lease(job);
            Ok(EventKind::Cancelled)
        }
        Op::Retry => {
            if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
                return Err(Refusal::InvalidState(job.state));
            }
            job.state = JobState::Available;
            job.attempt = 0;
            job.run_at = now;
            job.finished_at = None;
            Ok(EventKind::Retried)
        }
    }
}

fn clear_lease(job: &mut Job) {
    job.lease_id = None;
    job.lease_expires_at = None;
    job.worker_id = None;
}

fn fail_attempt(
    job: &mut Job,
    retryable: bool,
    retry_after_ms: Option<u64>,
    now: Timestamp,
    jitter: f64,
    retry_kind: EventKind,
) -> EventKind {
    clear_lease(job);
    match after_failure(
        job.attempt,
        job.max_attempts,
        retryable,
        retry_after_ms,
        &job.backoff,
        now,
        jitter,
    ) {
        AfterFailure::Retry { run_at } => {
            job.state = JobState::Scheduled;
            job.run_at = run_at;
            retry_kind
        }
        AfterFailure::Dead => {
            job.state = JobState::Dead;
            job.finished_at = Some(now);
            EventKind::Dead
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backoff, JobId, QueueName, TenantId};
    use proptest::prelude::*;

    fn job(max_attempts: u32) -> Job {
        Job {
            id: JobId::generate(),
            tenant_id: TenantId::generate(),
            queue: "q".parse::<QueueName>().unwrap(),
            state: JobState::Available,
            priority: 5,
            group: None,
            attempt: 0,
            max_attempts,
            payload: Value::Null,
            result: None,
            last_error: None,
            progress: None,
            run_at: Timestamp(0),
            created_at: Timestamp(0),
            started_at: None,
            finished_at: None,
            tags: vec![],
            metadata: Value::Null,
            timeout_ms: 1_000,
            backoff: Backoff::default(),
            callback_url: None,
            lease_id: None,
            lease_expires_at: None,
            worker_id: None,
            traceparent: None,
        }
    }

    /// Ops chosen by index so proptest can shrink sequences; lease ids come from a small
    /// pool so stale leases are exercised often.
    fn op_strategy() -> impl Strategy<Value = (u8, usize, bool, u16)> {
        (0u8..8, 0usize..3, any::<bool>(), 0u16..5_000)
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_sequence(
            max_attempts in 1u32..5,
            ops in proptest::collection::vec(op_strategy(), 0..60),
        ) {
            let leases: Vec<LeaseId> = (0..3).map(|_| LeaseId::generate()).collect();
            let mut j = job(max_attempts);
            let mut now = Timestamp(0);
            let mut outcomes = 0u32;
            for (kind, lease, flag, dt) in ops {
                now = now.plus_ms(dt as i64);
                let lease_id = leases[lease].clone();
                let op = match kind {
                    0 => Op::Promote,
                    1 => Op::Lease { lease_id, worker_id: "w".into(), lease_ms: None },
                    2 => Op::Heartbeat { lease_id, extend_ms: 1_000, progress: None },
                    3 => Op::Complete { lease_id, result: None },
                    4 => Op::Fail { lease_id, message: "x".into(), code: None, retryable: flag, retry_after_ms: None },
                    5 => Op::Expire,
                    6 => Op::Cancel,
                    _ => Op::Retry,
                };
                let before = j.clone();
                let is_retry = matches!(op, Op::Retry);
                let stale = match &op {
                    Op::Complete { lease_id, .. } | Op::Fail { lease_id, .. } | Op::Heartbeat { lease_id, .. } =>
                        !(before.state == JobState::Running && before.lease_id.as_ref() == Some(lease_id)),
                    _ => false,
                };
                match apply(&mut j, op, now, 0.5) {
                    Ok(kind) => {
                        prop_assert!(!stale, "a stale lease recorded {kind:?}");
                        if before.state.is_terminal() {
                            prop_assert!(is_retry, "terminal job changed by {kind:?}");
                        }
                        if matches!(kind, EventKind::Completed) { outcomes += 1; }
                        if is_retry { outcomes = 0; }
                    }
                    Err(_) => prop_assert_eq!(&j, &before, "a refused op changed the job"),
                }
                prop_assert!(j.attempt <= j.max_attempts);
                prop_assert!(outcomes <= 1, "completed twice without a retry");
                prop_assert_eq!(j.state == JobState::Running, j.lease_id.is_some());
                prop_assert_eq!(j.state.is_terminal(), j.finished_at.is_some());
                if j.state == JobState::Dead {
                    prop_assert!(j.attempt == j.max_attempts || j.last_error.is_some());
                }
            }
        }
    }

    #[test]
    fn lease_expiry_counts_as_an_attempt_and_ends_dead() {
        let mut j = job(2);
        for round in 1..=2 {
            let l = LeaseId::generate();
            apply(
                &mut j,
                Op::Lease {
                    lease_id: l.clone(),
                    worker_id: "w".into(),
                    lease_ms: Some(10),
                },
                Timestamp(0),
                0.0,
            )
            .unwrap();
            let kind = apply(&mut j, Op::Expire, Timestamp(100), 0.0).unwrap();
            // The old lease cannot complete after expiry.
            assert_eq!(
                apply(
                    &mut j,
                    Op::Complete {
                        lease_id: l,
                        result: None
                    },
                    Timestamp(101),
                    0.0
                ),
                Err(Refusal::LeaseLost)
            );
            if round == 1 {
                assert_eq!(kind, EventKind::LeaseExpired);
                assert_eq!(j.state, JobState::Scheduled);
                apply(&mut j, Op::Promote, Timestamp(100), 0.0).unwrap();
            } else {
                assert_eq!(kind, EventKind::Dead);
                assert_eq!(j.state, JobState::Dead);
            }
        }
        assert_eq!(j.attempt, 2);
        apply(&mut j, Op::Retry, Timestamp(200), 0.0).unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Available, 0));
    }
}
