//! The dispatcher: sends completion notices from the outbox and records each attempt,
//! until the receiver acknowledges (2xx) or the retry schedule is spent. Runs only while
//! it holds the `dispatcher` leader lease, so the per-endpoint concurrency cap holds
//! across nodes.
//!
//! A claimed delivery is held in the store for the request timeout plus a margin; if
//! this node dies mid-send, the delivery is claimed again after the hold and re-sent
//! under the same `webhook-id` (at-least-once; receivers drop duplicates by id).
//! The breaker state lives in the store, so a new leader honours it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use vow_core::notice::NoticeType;
use vow_core::retry::jitter;
use vow_core::TenantId;
use vow_store::{DeliveryClaim, DeliveryNext, DeliveryOutcome, DeliveryTask};

use super::leader::Leadership;
use crate::outbound::Attempt;
use crate::App;

/// Added to twice the request timeout to make the hold on a claimed delivery (time to
/// send, record, and retry a failed record).
const HOLD_MARGIN_MS: u64 = 5_000;
/// Shortest gap between two claims prompted by job events (events come in bursts).
const NUDGE_GAP: Duration = Duration::from_millis(20);
/// How long a freed slot waits for others before the next claim.
const GATHER: Duration = Duration::from_millis(2);
/// How long shutdown waits for sends in flight before leaving them to the next claim.
const DRAIN: Duration = Duration::from_secs(5);

type Endpoint = (TenantId, String);

/// Sends due deliveries, up to the configured concurrency, and records their outcomes.
#[derive(Debug)]
pub struct Dispatcher;

impl Dispatcher {
    /// Runs until shutdown.
    pub async fn run(app: App) {
        let mut lead = Leadership::new("dispatcher");
        let mut events = app.store.bus().subscribe();
        let mut sends: JoinSet<()> = JoinSet::new();
        // The endpoint of each send in flight, to free its slot however the send ends
        // (a panicking send must not hold a slot forever).
        let mut sending: HashMap<tokio::task::Id, Endpoint> = HashMap::new();
        let mut busy: HashMap<Endpoint, usize> = HashMap::new();
        let settings = app.webhooks.clone();
        let mut bus_open = true;
        'run: loop {
            let mut pause = lead.until_claim().min(super::IDLE);
            if lead.check(&app).await && sends.len() < settings.max_in_flight {
                let limit = settings.max_in_flight - sends.len();
                let claim = DeliveryClaim {
                    now: app.clock.now(),
                    limit,
                    hold_ms: 2 * settings.timeout_ms + HOLD_MARGIN_MS,
                    breaker: settings.breaker,
                    per_endpoint: settings.max_in_flight_per_endpoint,
                    in_flight: busy.clone(),
                };
                match app.store.delivery_claim(&claim).await {
                    Ok(tasks) => {
                        if tasks.len() == limit {
                            pause = Duration::ZERO;
                        }
                        for task in tasks {
                            let key = (task.tenant_id.clone(), task.endpoint.clone());
                            *busy.entry(key.clone()).or_default() += 1;
                            let handle = sends.spawn(deliver(app.clone(), task));
                            sending.insert(handle.id(), key);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim deliveries"),
                }
            }
            let deadline = tokio::time::Instant::now() + pause;
            loop {
                tokio::select! {
                    done = sends.join_next_with_id(), if !sends.is_empty() => {
                        if let Some(done) = done {
                            release(&mut busy, &mut sending, done);
                        }
                        // Sends to one receiver tend to finish together: gather them
                        // into one claim rather than claim once per freed slot.
                        tokio::time::sleep(GATHER).await;
                        while let Some(done) = sends.try_join_next_with_id() {
                            release(&mut busy, &mut sending, done);
                        }
                        break; // slots freed: claim again
                    }
                    ev = events.recv(), if bus_open => {
                        let worthy = match &ev {
                            Ok(e) => NoticeType::of(e.event.kind, e.event.to_state).is_some(),
                            // Lagged: some missed events may have been notices.
                            Err(RecvError::Lagged(_)) => true,
                            Err(RecvError::Closed) => {
                                bus_open = false; // polling alone from now on
                                false
                            }
                        };
                        if worthy {
                            // Events come in bursts: gather them into one claim.
                            tokio::time::sleep(NUDGE_GAP).await;
                            while events.try_recv().is_ok() {}
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = app.shutdown.cancelled() => break 'run,
                }
            }
        }
        // Give sends in flight a moment to finish and record; the rest are re-sent by
        // whoever claims them after their hold.
        let _ =
            tokio::time::timeout(DRAIN, async { while sends.join_next().await.is_some() {} }).await;
        sends.abort_all();
        lead.resign(&app).await;
    }
}

/// Frees the slot of a finished send (done or panicked: a panic is logged; its delivery
/// is sent again once its hold runs out).
fn release(
    busy: &mut HashMap<Endpoint, usize>,
    sending: &mut HashMap<tokio::task::Id, Endpoint>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let id = match done {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "a notice send failed unexpectedly");
            e.id()
        }
    };
    let Some(key) = sending.remove(&id) else {
        return;
    };
    if let Some(n) = busy.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            busy.remove(&key);
        }
    }
}

/// Sends one delivery and records the outcome.
async fn deliver(app: App, task: DeliveryTask) {
    let at = app.clock.now();
    let attempt: Attempt = app.outbound.send(&task, at.0.div_euclid(1000)).await;
    let finished = app.clock.now();
    let next = if attempt.delivered() {
        DeliveryNext::Delivered
    } else if attempt.refused {
        DeliveryNext::Dead
    } else {
        match app
            .webhooks
            .retry_schedule_ms
            .delay_ms(task.round_attempts + 1, jitter())
        {
            Some(delay) => DeliveryNext::RetryAt(finished.plus_ms(delay as i64)),
            None => DeliveryNext::Dead,
        }
    };
    match next {
        DeliveryNext::Delivered => tracing::debug!(delivery = %task.id, url = %task.url,
            status = attempt.status, latency_ms = attempt.latency_ms, "notice delivered"),
        DeliveryNext::RetryAt(t) => tracing::info!(delivery = %task.id, url = %task.url,
            error = attempt.error.as_deref().unwrap_or(""), retry_at = %t.to_rfc3339(),
            "notice not acknowledged; will retry"),
        DeliveryNext::Dead => tracing::warn!(delivery = %task.id, url = %task.url,
            error = attempt.error.as_deref().unwrap_or(""),
            "notice dead (schedule spent or target refused); replay it with POST /v1/deliveries/{{id}}/retry"),
    }
    let outcome = DeliveryOutcome {
        id: task.id.clone(),
        attempts_before: task.attempts,
        at,
        status: attempt.status,
        latency_ms: attempt.latency_ms,
        error: attempt.error,
        response: attempt.response,
        next,
        breaker: app.webhooks.breaker,
    };
    // The store may blip: a few quick tries, then leave it to the hold (re-sent later).
    for pause_ms in [0u64, 100, 500, 2_000] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        match app.store.delivery_record(&outcome).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(delivery = %task.id, error = %e, "cannot record a delivery attempt")
            }
        }
    }
}
