//! How results are printed: raw JSON with `--json`, else tables for people.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;
use vow_core::api::{
    CallbackSecretView, DeliveryAttemptView, DeliveryView, JobEventView, JobView, KeyCreated,
    KeyView, QueueView, TenantView, WebhookEvent, WebhookView,
};
use vow_core::Timestamp;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

fn print(t: Table) {
    // Trailing spaces of the last column are noise when the output is piped.
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `2026-01-01 09:00:00` (UTC), short enough for a column.
pub fn time(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    s.get(..19).map(|s| s.replace('T', " ")).unwrap_or(s)
}

fn opt_time(t: Option<Timestamp>) -> String {
    t.map(time).unwrap_or_default()
}

fn short(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A list of jobs, one line each.
pub fn jobs(items: &[JobView], next_cursor: Option<&str>) {
    let mut t = table(&[
        "ID",
        "QUEUE",
        "STATE",
        "ATTEMPT",
        "PRI",
        "GROUP",
        "CREATED",
        "LAST ERROR",
    ]);
    for j in items {
        t.add_row(vec![
            j.id.to_string(),
            j.queue.to_string(),
            j.state.to_string(),
            format!("{}/{}", j.attempt, j.max_attempts),
            j.priority.to_string(),
            j.group.as_ref().map(|g| g.to_string()).unwrap_or_default(),
            time(j.created_at),
            j.last_error
                .as_ref()
                .map(|e| short(&e.message, 50))
                .unwrap_or_default(),
        ]);
    }
    print(t);
    if let Some(c) = next_cursor {
        eprintln!("more: --cursor {c}");
    }
}

/// One job, field by field.
pub fn job(j: &JobView) {
    let mut t = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    row("id", j.id.to_string());
    row("queue", j.queue.to_string());
    row("state", j.state.to_string());
    row("attempt", format!("{}/{}", j.attempt, j.max_attempts));
    row("priority", j.priority.to_string());
    row(
        "group",
        j.group.as_ref().map(|g| g.to_string()).unwrap_or_default(),
    );
    row("tags", j.tags.join(", "));
    row("created_at", time(j.created_at));
    row("run_at", time(j.run_at));
    row("started_at", opt_time(j.started_at));
    row("finished_at", opt_time(j.finished_at));
    if let Some(w) = &j.worker_id {
        row("worker", w.clone());
        row("lease_expires_at", opt_time(j.lease_expires_at));
    }
    row("payload", short(&compact(&j.payload), 200));
    if let Some(r) = &j.result {
        row("result", short(&compact(r), 200));
    }
    if let Some(p) = &j.progress {
        row("progress", short(&compact(p), 200));
    }
    if let Some(e) = &j.last_error {
        let code = e
            .code
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        row(
            "last_error",
            format!("{code}{} (at {})", short(&e.message, 200), time(e.at)),
        );
    }
    print(t);
}

/// A job's event log.
pub fn events(items: &[JobEventView]) {
    let mut t = table(&["SEQ", "AT", "EVENT", "STATE", "ATTEMPT", "DETAIL"]);
    for e in items {
        let from = e.from_state.map(|s| format!("{s} → ")).unwrap_or_default();
        t.add_row(vec![
            e.seq.to_string(),
            time(e.at),
            e.kind.as_str().to_owned(),
            format!("{from}{}", e.to_state),
            e.attempt.to_string(),
            e.detail
                .as_ref()
                .map(|d| short(&compact(d), 80))
                .unwrap_or_default(),
        ]);
    }
    print(t);
}

/// Queues with their counts.
pub fn queues(items: &[QueueView]) {
    let mut t = table(&[
        "QUEUE",
        "PAUSED",
        "SCHEDULED",
        "AVAILABLE",
        "RUNNING",
        "COMPLETED",
        "DEAD",
        "CANCELLED",
        "OLDEST AVAILABLE",
    ]);
    for q in items {
        let c = &q.counts;
        t.add_row(vec![
            q.name.to_string(),
            if q.paused { "yes" } else { "no" }.to_owned(),
            c.scheduled.to_string(),
            c.available.to_string(),
            c.running.to_string(),
            c.completed.to_string(),
            c.dead.to_string(),
            c.cancelled.to_string(),
            q.oldest_available_age_ms.map(age).unwrap_or_default(),
        ]);
    }
    print(t);
}

/// One queue with its limits.
pub fn queue(q: &QueueView) {
    queues(std::slice::from_ref(q));
    let none = || "none".to_owned();
    println!();
    let mut t = table(&["LIMIT", "VALUE"]);
    t.add_row(vec![
        "concurrency_limit".to_owned(),
        q.concurrency_limit
            .map(|v| v.to_string())
            .unwrap_or_else(none),
    ]);
    t.add_row(vec![
        "group_concurrency_limit".to_owned(),
        q.group_concurrency_limit
            .map(|v| v.to_string())
            .unwrap_or_else(none),
    ]);
    t.add_row(vec![
        "rate_limit".to_owned(),
        q.rate_limit
            .map(|r| format!("{}/s, burst {}", r.per_second, r.burst))
            .unwrap_or_else(none),
    ]);
    t.add_row(vec![
        "max_pending".to_owned(),
        q.max_pending.map(|v| v.to_string()).unwrap_or_else(none),
    ]);
    print(t);
}

fn age(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 60 => format!("{}.{}s", s, (ms % 1000) / 100),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Tenants.
pub fn tenants(items: &[TenantView]) {
    let mut t = table(&["ID", "NAME", "MAX PENDING", "CREATED"]);
    for x in items {
        t.add_row(vec![
            x.id.to_string(),
            x.name.to_string(),
            x.max_pending.map(|v| v.to_string()).unwrap_or_default(),
            time(x.created_at),
        ]);
    }
    print(t);
}

/// API keys (never their secrets).
pub fn keys(items: &[KeyView]) {
    let mut t = table(&["ID", "ROLE", "TENANT", "CREATED", "REVOKED"]);
    for k in items {
        t.add_row(vec![
            k.id.to_string(),
            k.role.to_string(),
            k.tenant_id
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            time(k.created_at),
            opt_time(k.revoked_at),
        ]);
    }
    print(t);
}

/// A new key: its record, and the plaintext on stdout alone on the last line.
pub fn key_created(k: &KeyCreated) {
    keys(std::slice::from_ref(&k.record));
    eprintln!("\nThe key is shown this once; store it now:");
    println!("{}", k.key);
}

/// The wire name of a notice event (`job.completed`, …).
pub fn event_name(e: WebhookEvent) -> &'static str {
    match e {
        WebhookEvent::JobCompleted => "job.completed",
        WebhookEvent::JobDead => "job.dead",
        WebhookEvent::JobCancelled => "job.cancelled",
        WebhookEvent::JobRetrying => "job.retrying",
    }
}

fn events_list(events: &[WebhookEvent]) -> String {
    events
        .iter()
        .map(|e| event_name(*e))
        .collect::<Vec<_>>()
        .join(", ")
}

fn queues_filter(w: &WebhookView) -> String {
    match &w.queues {
        Some(q) => q.iter().map(|q| q.as_str()).collect::<Vec<_>>().join(", "),
        None => "(every queue)".to_owned(),
    }
}

/// Webhook subscriptions, one line each (never their secrets).
pub fn webhooks(items: &[WebhookView]) {
    let mut t = table(&["ID", "URL", "EVENTS", "QUEUES", "CREATED"]);
    for w in items {
        t.add_row(vec![
            w.id.to_string(),
            short(&w.url, 60),
            events_list(&w.events),
            short(&queues_filter(w), 40),
            time(w.created_at),
        ]);
    }
    print(t);
}

/// One subscription, field by field (never its secret).
pub fn webhook(w: &WebhookView) {
    let mut t = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    row("id", w.id.to_string());
    row("url", w.url.clone());
    row("events", events_list(&w.events));
    row("queues", queues_filter(w));
    row("created_at", time(w.created_at));
    if let Some(until) = w.previous_secret_valid_until {
        row("previous_secret_valid_until", time(until));
    }
    print(t);
}

/// A created or rotated subscription: its record, then the secret alone on the last
/// line of stdout, with the note that it is not shown again.
pub fn webhook_with_secret(w: &WebhookView) {
    webhook(w);
    secret_once(w.secret.as_deref().unwrap_or_default(), "signing secret");
}

fn secret_once(secret: &str, what: &str) {
    eprintln!(
        "
The {what} is shown this once and cannot be shown again; store it now:"
    );
    println!("{secret}");
}

/// A new callback secret, and until when the previous one still signs.
pub fn callback_secret(v: &CallbackSecretView) {
    match v.previous_secret_valid_until {
        Some(until) => println!(
            "The previous callback secret keeps signing (as a second signature) until {} UTC.",
            time(until)
        ),
        None => println!("There was no previous callback secret."),
    }
    secret_once(&v.secret, "callback secret");
}

fn delivery_target(d: &DeliveryView) -> String {
    d.webhook_id
        .as_ref()
        .map(|w| w.to_string())
        .unwrap_or_else(|| "callback_url".to_owned())
}

fn opt_status(s: Option<u16>) -> String {
    s.map(|s| s.to_string()).unwrap_or_else(|| "-".to_owned())
}

/// Deliveries, one line each.
pub fn deliveries(items: &[DeliveryView], next_cursor: Option<&str>) {
    let mut t = table(&[
        "ID",
        "JOB",
        "EVENT",
        "FOR",
        "STATE",
        "ATTEMPTS",
        "STATUS",
        "CREATED",
        "LAST ERROR",
    ]);
    for d in items {
        t.add_row(vec![
            d.id.to_string(),
            d.job_id.to_string(),
            event_name(d.event).to_owned(),
            delivery_target(d),
            d.state.as_str().to_owned(),
            d.attempts.to_string(),
            opt_status(d.last_status),
            time(d.created_at),
            d.last_error
                .as_deref()
                .map(|e| short(e, 50))
                .unwrap_or_default(),
        ]);
    }
    print(t);
    if let Some(c) = next_cursor {
        eprintln!("more: --cursor {c}");
    }
}

/// One delivery, field by field, then its attempt log.
pub fn delivery(d: &DeliveryView) {
    let mut t = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    row("id", d.id.to_string());
    row("job", d.job_id.to_string());
    row("for", delivery_target(d));
    row("event", event_name(d.event).to_owned());
    row("url", d.url.clone());
    row("state", d.state.as_str().to_owned());
    row("attempts", d.attempts.to_string());
    row("created_at", time(d.created_at));
    if let Some(next) = d.next_attempt_at {
        row("next_attempt_at", time(next));
    }
    if let Some(at) = d.delivered_at {
        row("delivered_at", time(at));
    }
    row("last_status", opt_status(d.last_status));
    if let Some(e) = &d.last_error {
        row("last_error", short(e, 200));
    }
    print(t);
    // Only `GET /v1/deliveries/{id}` carries the log; a retry's answer does not.
    match d.log.as_deref() {
        Some([]) => println!("\nNo attempts yet."),
        Some(log) => {
            println!();
            attempts(log);
        }
        None => {}
    }
}

/// A delivery's attempt log, oldest first.
fn attempts(log: &[DeliveryAttemptView]) {
    let mut t = table(&["ATTEMPT", "AT", "STATUS", "LATENCY", "ERROR", "RESPONSE"]);
    for a in log {
        t.add_row(vec![
            a.attempt.to_string(),
            time(a.at),
            opt_status(a.status),
            format!("{} ms", a.latency_ms),
            a.error.as_deref().map(|e| short(e, 60)).unwrap_or_default(),
            a.response
                .as_deref()
                .map(|r| short(r, 40))
                .unwrap_or_default(),
        ]);
    }
    print(t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_shorten_for_columns() {
        assert_eq!(time(Timestamp(1_767_225_600_123)), "2026-01-01 00:00:00");
        assert_eq!(short("a\nb", 10), "a b");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(age(1_500), "1.5s");
        assert_eq!(age(61_000), "1m1s");
        assert_eq!(age(90_000_000), "1d1h");
    }

    #[test]
    fn event_names_are_the_wire_names() {
        for e in [
            WebhookEvent::JobCompleted,
            WebhookEvent::JobDead,
            WebhookEvent::JobCancelled,
            WebhookEvent::JobRetrying,
        ] {
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                Value::String(event_name(e).to_owned())
            );
        }
    }
}
