//! Completion notices, decided without I/O: which job transitions produce one, the body
//! it carries, when a failed delivery is tried again, and the circuit breaker that keeps
//! a dead receiver from being hammered.
//!
//! The stores write a delivery row (the outbox) in the same transaction as the job's
//! transition ([`NoticeType::of`] says whether one is due); the server's dispatcher sends
//! it, signed with [`crate::webhook::sign`], and records the outcome.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::WebhookEvent;
use crate::machine::EventKind;
use crate::{ErrorInfo, GroupKey, Job, JobId, JobState, QueueName, Timestamp};

/// The kind of a completion notice, as named in its body's `type` and in subscriptions.
pub type NoticeType = WebhookEvent;

impl WebhookEvent {
    /// Every notice type.
    pub const ALL: [WebhookEvent; 4] = [
        WebhookEvent::JobCompleted,
        WebhookEvent::JobDead,
        WebhookEvent::JobCancelled,
        WebhookEvent::JobRetrying,
    ];

    /// The wire name (`job.completed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobCompleted => "job.completed",
            WebhookEvent::JobDead => "job.dead",
            WebhookEvent::JobCancelled => "job.cancelled",
            WebhookEvent::JobRetrying => "job.retrying",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The notice a transition produces, if any: a job reaching `completed`, `dead` or
    /// `cancelled`, or a failed attempt that will be retried (`job.retrying`).
    pub fn of(kind: EventKind, to: JobState) -> Option<Self> {
        match (kind, to) {
            (_, JobState::Completed) => Some(Self::JobCompleted),
            (_, JobState::Dead) => Some(Self::JobDead),
            (_, JobState::Cancelled) => Some(Self::JobCancelled),
            (EventKind::Failed | EventKind::LeaseExpired, JobState::Scheduled) => {
                Some(Self::JobRetrying)
            }
            _ => None,
        }
    }

    /// Whether the job is finished: a per-job `callback_url` hears only of these.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::JobRetrying)
    }
}

/// The job as a notice describes it: everything but the payload (the producer has it,
/// and it may be large or sensitive), progress and the retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoticeJob {
    /// Job id.
    pub id: JobId,
    /// Queue name.
    pub queue: QueueName,
    /// State after the transition.
    pub state: JobState,
    /// Fairness group.
    pub group: Option<GroupKey>,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The worker's result (`job.completed`).
    pub result: Option<serde_json::Value>,
    /// The most recent failure (`job.dead`, `job.retrying`).
    pub last_error: Option<ErrorInfo>,
    /// Enqueue time.
    pub created_at: Timestamp,
    /// Start of the last attempt.
    pub started_at: Option<Timestamp>,
    /// When it became terminal.
    pub finished_at: Option<Timestamp>,
    /// Next attempt (`job.retrying`).
    pub run_at: Timestamp,
    /// Labels.
    pub tags: Vec<String>,
    /// Producer metadata (for correlating the notice with the caller's records).
    pub metadata: serde_json::Value,
}

/// A notice body: Standard Webhooks' `{type, timestamp, data}` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoticeBody {
    /// `job.completed`, `job.dead`, `job.cancelled` or `job.retrying`.
    #[serde(rename = "type")]
    pub kind: NoticeType,
    /// When the transition happened.
    pub timestamp: Timestamp,
    /// The job after the transition.
    pub data: NoticeJob,
}

impl NoticeBody {
    /// The body of the notice of type `kind` for `job`, as of `now`.
    pub fn new(kind: NoticeType, job: &Job, now: Timestamp) -> Self {
        Self {
            kind,
            timestamp: now,
            data: NoticeJob {
                id: job.id.clone(),
                queue: job.queue.clone(),
                state: job.state,
                group: job.group.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                result: job.result.clone(),
                last_error: job.last_error.clone(),
                created_at: job.created_at,
                started_at: job.started_at,
                finished_at: job.finished_at,
                run_at: job.run_at,
                tags: job.tags.clone(),
                metadata: job.metadata.clone(),
            },
        }
    }

    /// The exact bytes sent (and signed).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a notice body always serializes")
    }
}

/// The endpoint a URL belongs to, for the circuit breaker and the concurrency cap: its
/// origin (`scheme://host:port`), so every path on one receiver shares one breaker.
/// `Err` says what is wrong with the URL.
pub fn endpoint_of(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials; receivers check the signature".into());
    }
    Ok(parsed.origin().ascii_serialization())
}

/// When a failed delivery is tried again: the delays after the 1st, 2nd, … failed
/// attempt of a round; past the last one the delivery is dead (until replayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetrySchedule(pub Vec<u64>);

impl Default for RetrySchedule {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 27.5 hours,
    /// roughly exponential, long enough to ride out a receiver's day-long outage.
    fn default() -> Self {
        Self(vec![
            5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
        ])
    }
}

impl RetrySchedule {
    /// The delay after failed attempt `failed` (1-based, counted within the round), with
    /// `jitter` in `[0, 1)` spreading it over ±20 %; `None` once the schedule is spent.
    pub fn delay_ms(&self, failed: u32, jitter: f64) -> Option<u64> {
        let base = *self.0.get((failed as usize).checked_sub(1)?)?;
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        Some((base as f64 * factor) as u64)
    }

    /// Attempts a round makes before the delivery is dead.
    pub fn attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// Total span of the schedule, without jitter.
    pub fn span_ms(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Health of one endpoint, shared by every node through the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointHealth {
    /// Consecutive failed deliveries.
    pub failures: u32,
    /// While in the future, nothing is sent to the endpoint.
    pub open_until: Option<Timestamp>,
}

/// What the breaker allows for an endpoint right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: send as much as the concurrency cap allows.
    Closed,
    /// Tripped, cool-down over: send one delivery as a probe, hold the rest.
    Probe,
    /// Tripped: send nothing until the given time.
    Open(Timestamp),
}

/// The circuit breaker: after `threshold` consecutive failures an endpoint is left
/// alone for a cool-down that doubles with every further failure (up to `max_open_ms`);
/// then a single probe decides whether it is closed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Breaker {
    /// Consecutive failures that trip the breaker. High enough that a receiver failing
    /// a fair share of requests at random (30 % fails 20 in a row once in ~3·10¹⁰) is
    /// never taken for dead; a dead one reaches it within a few rounds of sends.
    pub threshold: u32,
    /// First cool-down.
    pub open_ms: u64,
    /// Longest cool-down.
    pub max_open_ms: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            threshold: 20,
            open_ms: 30_000,
            max_open_ms: 600_000,
        }
    }
}

impl Breaker {
    /// What may be sent to an endpoint in state `h` at `now`.
    pub fn admit(&self, h: EndpointHealth, now: Timestamp) -> Admission {
        match h.open_until {
            Some(until) if until > now => Admission::Open(until),
            _ if h.failures >= self.threshold => Admission::Probe,
            _ => Admission::Closed,
        }
    }

    /// The state after a delivery succeeded: closed.
    pub fn on_success(&self) -> EndpointHealth {
        EndpointHealth::default()
    }

    /// The state after a delivery failed at `now`.
    pub fn on_failure(&self, h: EndpointHealth, now: Timestamp) -> EndpointHealth {
        let failures = h.failures.saturating_add(1);
        let open_until = (failures >= self.threshold).then(|| {
            let doublings = (failures - self.threshold).min(20);
            let ms = self
                .open_ms
                .saturating_mul(1 << doublings)
                .min(self.max_open_ms);
            now.plus_ms(ms as i64)
        });
        EndpointHealth {
            failures,
            open_until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_map_to_notices() {
        use EventKind::*;
        assert_eq!(
            NoticeType::of(Completed, JobState::Completed),
            Some(NoticeType::JobCompleted)
        );
        assert_eq!(
            NoticeType::of(LeaseExpired, JobState::Dead),
            Some(NoticeType::JobDead)
        );
        assert_eq!(
            NoticeType::of(Cancelled, JobState::Cancelled),
            Some(NoticeType::JobCancelled)
        );
        assert_eq!(
            NoticeType::of(Failed, JobState::Scheduled),
            Some(NoticeType::JobRetrying)
        );
        assert_eq!(NoticeType::of(Leased, JobState::Running), None);
        assert_eq!(NoticeType::of(Retried, JobState::Available), None);
        assert_eq!(NoticeType::of(Enqueued, JobState::Scheduled), None);
        for t in NoticeType::ALL {
            assert_eq!(NoticeType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn endpoints_are_origins() {
        assert_eq!(
            endpoint_of("https://Example.com/hooks/a?x=1").unwrap(),
            "https://example.com"
        );
        assert_eq!(
            endpoint_of("http://127.0.0.1:8080/x").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(endpoint_of("ftp://example.com").is_err());
        assert!(endpoint_of("https://user:pw@example.com/").is_err());
        assert!(endpoint_of("not a url").is_err());
    }

    #[test]
    fn the_default_schedule_reaches_a_day_and_spends_out() {
        let s = RetrySchedule::default();
        assert!(s.span_ms() >= 24 * 3_600_000);
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.delay_ms(1, 0.5), Some(5_000));
        assert_eq!(s.delay_ms(1, 0.0), Some(4_000));
        assert_eq!(s.delay_ms(7, 0.5), Some(36_000_000));
        assert_eq!(s.delay_ms(8, 0.5), None);
        assert_eq!(s.delay_ms(0, 0.5), None);
    }

    #[test]
    fn the_breaker_trips_cools_down_probes_and_closes() {
        let b = Breaker::default();
        let t0 = Timestamp(1_000_000);
        let mut h = EndpointHealth::default();
        for _ in 0..b.threshold - 1 {
            h = b.on_failure(h, t0);
            assert_eq!(b.admit(h, t0), Admission::Closed);
        }
        h = b.on_failure(h, t0);
        assert_eq!(b.admit(h, t0), Admission::Open(t0.plus_ms(30_000)));
        // Cool-down over: one probe.
        assert_eq!(b.admit(h, t0.plus_ms(30_000)), Admission::Probe);
        // The probe fails: twice as long.
        h = b.on_failure(h, t0.plus_ms(30_000));
        assert_eq!(h.open_until, Some(t0.plus_ms(90_000)));
        // Capped.
        for _ in 0..30 {
            h = b.on_failure(h, t0);
        }
        assert_eq!(h.open_until, Some(t0.plus_ms(600_000)));
        // A success closes it.
        assert_eq!(b.admit(b.on_success(), t0), Admission::Closed);
    }

    #[test]
    fn bodies_leave_out_the_payload() {
        let job = Job {
            id: JobId::generate(),
            tenant_id: crate::TenantId::generate(),
            queue: "q".parse().unwrap(),
            state: JobState::Completed,
            priority: 5,
            group: None,
            attempt: 1,
            max_attempts: 3,
            payload: serde_json::json!({ "secret": "s3cr3t" }),
            result: Some(serde_json::json!({ "ok": true })),
            last_error: None,
            progress: None,
            run_at: Timestamp(0),
            created_at: Timestamp(0),
            started_at: Some(Timestamp(1)),
            finished_at: Some(Timestamp(2)),
            tags: vec![],
            metadata: serde_json::json!({ "order": 7 }),
            timeout_ms: 1_000,
            backoff: crate::Backoff::default(),
            callback_url: None,
            lease_id: None,
            lease_expires_at: None,
            worker_id: None,
            traceparent: None,
        };
        let body = NoticeBody::new(NoticeType::JobCompleted, &job, Timestamp(5)).to_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "job.completed");
        assert_eq!(v["data"]["id"], job.id.as_str());
        assert!(v["data"].get("payload").is_none());
        assert!(!body.contains("s3cr3t"));
        assert_eq!(v["data"]["result"]["ok"], true);
        assert_eq!(v["data"]["metadata"]["order"], 7);
    }
}
