//! `GET /v1/events`: Server-Sent Events of the caller's tenant's job transitions.
//!
//! With `Last-Event-ID` (or `?after=`), the stream first replays the stored events after
//! that sequence number, then follows live events from the bus. When the live feed lags
//! (a slow client), it falls back to replaying from the store, so nothing is skipped.
//! Without a cursor it starts with live events. Every event carries `id: <seq>`, so a
//! client that reconnects with `Last-Event-ID` resumes exactly where it stopped.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use vow_core::api::JobEventView;
use vow_core::auth::Action;
use vow_core::{JobId, QueueName, TenantId};
use vow_store::{BusEvent, JobEventListSince};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::service::queue_name;
use crate::App;

/// Events fetched per replay query.
const PAGE: usize = 500;

/// `GET /v1/events` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events of this queue.
    pub queue: Option<String>,
    /// Only events of this job.
    pub job: Option<String>,
    /// Replay events after this sequence number (like `Last-Event-ID`).
    pub after: Option<i64>,
}

/// How many sent sequence numbers a stream remembers to drop duplicates.
const REMEMBERED: usize = 4_096;

struct Feed {
    app: App,
    tenant_id: TenantId,
    queue: Option<QueueName>,
    job: Option<JobId>,
    /// The client's resume point (`Last-Event-ID`): events up to it were seen.
    from: Option<i64>,
    /// Highest sequence number sent (or the resume point): where a replay resumes.
    last: Option<i64>,
    /// Recently sent sequence numbers. Live events are not dropped for arriving out of
    /// sequence order (on PostgreSQL, transactions commit in any order), only for
    /// having been sent already (a replay and the live feed overlap).
    sent: HashSet<i64>,
    sent_order: VecDeque<i64>,
    replaying: bool,
    buffer: VecDeque<JobEventView>,
    live: Receiver<Arc<BusEvent>>,
}

impl Feed {
    fn wants(&self, tenant_id: &TenantId, ev: &JobEventView) -> bool {
        *tenant_id == self.tenant_id
            && self.queue.as_ref().is_none_or(|q| *q == ev.queue)
            && self.job.as_ref().is_none_or(|j| *j == ev.job_id)
            && self.from.is_none_or(|f| ev.seq > f)
            && !self.sent.contains(&ev.seq)
    }

    fn remember(&mut self, seq: i64) {
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
        if self.sent.insert(seq) {
            self.sent_order.push_back(seq);
            if self.sent_order.len() > REMEMBERED {
                if let Some(old) = self.sent_order.pop_front() {
                    self.sent.remove(&old);
                }
            }
        }
    }

    /// The next event to send; `None` ends the stream (shutdown, or the store failed:
    /// the client reconnects with `Last-Event-ID`).
    async fn next(&mut self) -> Option<JobEventView> {
        loop {
            if let Some(ev) = self.buffer.pop_front() {
                if self.sent.contains(&ev.seq) {
                    continue;
                }
                self.remember(ev.seq);
                return Some(ev);
            }
            if self.replaying {
                let page = self
                    .app
                    .store
                    .job_event_list_since(&JobEventListSince {
                        tenant_id: self.tenant_id.clone(),
                        after: self.last.unwrap_or(0),
                        queue: self.queue.clone(),
                        job_id: self.job.clone(),
                        limit: PAGE,
                    })
                    .await;
                match page {
                    Ok(page) if page.is_empty() => self.replaying = false,
                    Ok(page) => self.buffer.extend(page),
                    Err(e) => {
                        tracing::warn!(error = %e, "event replay failed; closing the stream");
                        return None;
                    }
                }
                continue;
            }
            tokio::select! {
                ev = self.live.recv() => match ev {
                    Ok(ev) if self.wants(&ev.tenant_id, &ev.event) => self.buffer.push_back(ev.event.clone()),
                    Ok(_) => {}
                    // Dropped live events are still in the store: replay from the last sent.
                    Err(RecvError::Lagged(_)) if self.last.is_some() => self.replaying = true,
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                _ = self.app.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Stream job events as Server-Sent Events.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "text/event-stream of job events (`id` = seq, `event` = kind, `data` = JobEventView)", content_type = "text/event-stream")),
    security(("api_key" = [])))]
pub async fn stream(
    State(app): State<App>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant_id = principal.tenant_for(Action::Read)?;
    let queue = q.queue.as_deref().map(queue_name).transpose()?;
    let job = q
        .job
        .as_deref()
        .map(|j| {
            j.parse::<JobId>()
                .map_err(|_| ApiError::Validation(format!("job: `{j}` is not a job id")))
        })
        .transpose()?;
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let last = match header {
        Some(h) => Some(h.trim().parse::<i64>().map_err(|_| {
            ApiError::Validation("Last-Event-ID: not an event id from this API".into())
        })?),
        None => q.after,
    };
    // Subscribe before replaying, so nothing committed meanwhile is missed.
    let live = app.store.bus().subscribe();
    let feed = Feed {
        app,
        tenant_id,
        queue,
        job,
        replaying: last.is_some(),
        from: last,
        last,
        sent: HashSet::new(),
        sent_order: VecDeque::new(),
        buffer: VecDeque::new(),
        live,
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let ev = feed.next().await?;
        let event = Event::default()
            .id(ev.seq.to_string())
            .event(ev.kind.as_str())
            .json_data(&ev)
            .unwrap_or_else(|_| Event::default().comment("unserializable event"));
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
