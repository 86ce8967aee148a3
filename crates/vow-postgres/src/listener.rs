//! Cross-node signals: each node's [`Notifier`] sends `NOTIFY`s after its writing
//! transactions commit, and one `LISTEN` connection per node feeds what the others sent
//! into its [`Bus`].
//!
//! A transaction's effects (queues to wake, job events, "a job was scheduled") are
//! serialised into as few `NOTIFY vow` payloads as fit PostgreSQL's 8000-byte limit once
//! the transaction has committed, so a node never hears of a change that is not durable.
//! The notifier sends them on a connection of its own, in the order the commits were
//! answered here, many transactions' payloads to one statement when writes come faster
//! than one round trip (the crate's docs say why not inside the writing transaction).
//! An event too large for a payload (a failure's message may hold 16 KiB) travels as
//! its sequence number, and the listeners read it back from `job_events`. Each payload
//! carries the sender's node id; a node ignores its own (it already published them
//! locally, right after the commit).
//!
//! The listener reconnects on its own after an outage (with backoff up to 2 s). After
//! every (re)connect it wakes every waiter and nudges the chores: notifications sent
//! while it was away are lost, so everyone looks again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use vow_store::{Bus, StoreResult};

use crate::rows::{event_from_row, parsed, EVENT_COLS};
use crate::Effects;

/// The channel every node listens on.
pub(crate) const CHANNEL: &str = "vow";
/// Stay well below PostgreSQL's 8000-byte payload limit.
const MAX_PAYLOAD: usize = 7_000;

#[derive(Serialize, Deserialize)]
struct Signal<'a> {
    /// Sender's node id.
    n: std::borrow::Cow<'a, str>,
    #[serde(flatten)]
    fx: Effects,
    /// Events too large to ride in a payload, by sequence number: the listener reads
    /// them from `job_events` (committed before the notification is sent).
    #[serde(default, rename = "f", skip_serializing_if = "Vec::is_empty")]
    fetch: Vec<i64>,
    /// The sender lost notifications: wake everyone and nudge the chores, as after a
    /// listener's reconnect.
    #[serde(default, rename = "r", skip_serializing_if = "std::ops::Not::not")]
    resync: bool,
    /// "This node is here": sent at start and every third of the peers' time-to-live.
    #[serde(default, rename = "h", skip_serializing_if = "std::ops::Not::not")]
    hello: bool,
    /// "Who is there?": every other node answers with a hello. Sent by a listener that
    /// just (re)connected.
    #[serde(default, rename = "a", skip_serializing_if = "std::ops::Not::not")]
    ask: bool,
    /// The sender's `peer_ttl_ms`: it says hello at least every third of it, so the
    /// others count on it for that long after any payload (absent from nodes before it
    /// was sent: their own `ttl` then).
    #[serde(default, rename = "t", skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
}

/// Whether another node may be listening: this node's listener is not connected (it
/// cannot hear them, so it must assume them), or it heard one within that node's `ttl`
/// or its own, whichever is longer (any payload from another node counts; every node says
/// hello at start and every third of its `ttl`, and every payload carries that `ttl`), or
/// its listener (re)connected within [`GRACE`] (it asks who is there then, and every
/// other node answers with a hello at once). A node with no peers sends no
/// notifications: nobody would act on them.
#[derive(Debug)]
pub(crate) struct Peers {
    base: Instant,
    /// Until when (milliseconds after `base`) another node may be listening.
    until: AtomicU64,
    /// The listener is connected.
    listening: AtomicBool,
    ttl: Duration,
}

/// Longest `peer_ttl_ms` of another node that this one honours.
const MAX_PEER_TTL: Duration = Duration::from_secs(3_600);

/// How long a node whose listener just (re)connected counts on peers without having
/// heard one: the answers to its question take a round trip.
const GRACE: Duration = Duration::from_secs(2);

impl Peers {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            ttl,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Extends `until` to at least `d` from now; whether it had run out.
    fn at_least_for(&self, d: Duration) -> bool {
        let now = self.now_ms();
        let until = now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.until.fetch_max(until, Ordering::Relaxed) <= now
    }

    /// A sign of a peer whose `ttl` is `theirs` (when it said). True if this node thought
    /// itself alone until now: writes it committed a moment ago went unannounced, so the
    /// caller sends a resync.
    fn heard(&self, theirs: Option<Duration>) -> bool {
        // A peer's claim is believed up to an hour (a typo must not pin this node to
        // notifying for days).
        let ttl = theirs.map_or(self.ttl, |t| t.min(MAX_PEER_TTL).max(self.ttl));
        self.at_least_for(ttl) && self.listening.load(Ordering::Relaxed)
    }

    /// This node's `ttl` in milliseconds, as its payloads carry it.
    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The listener (re)connected: peers may exist unheard.
    fn listening(&self) {
        self.at_least_for(GRACE.min(self.ttl));
        self.listening.store(true, Ordering::Relaxed);
    }

    /// The listener lost its connection.
    fn deaf(&self) {
        self.listening.store(false, Ordering::Relaxed);
    }

    /// Another node may be listening.
    fn any(&self) -> bool {
        !self.listening.load(Ordering::Relaxed)
            || self.now_ms() < self.until.load(Ordering::Relaxed)
    }
}

/// Splits effects into payloads of at most [`MAX_PAYLOAD`] bytes (wake-ups and the
/// nudge ride in the first; events are packed greedily after, in order; an event that
/// cannot fit even alone goes as its sequence number, in a payload of its own).
pub(crate) fn payloads(node: &str, ttl_ms: u64, fx: &Effects) -> Vec<String> {
    let mut wake = fx.wake.clone();
    wake.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
    wake.dedup();
    let encode = |fx: Effects, fetch: Vec<i64>| {
        serde_json::to_string(&Signal {
            n: node.into(),
            fx,
            fetch,
            resync: false,
            hello: false,
            ask: false,
            ttl_ms: Some(ttl_ms),
        })
        .unwrap_or_default()
    };
    let empty = encode(Effects::default(), Vec::new()).len();
    let mut out = Vec::new();
    let mut current = Effects {
        wake,
        events: Vec::new(),
        nudge_chores: fx.nudge_chores,
        committed: false,
    };
    let mut size = encode(current.clone(), Vec::new()).len();
    for ev in &fx.events {
        let ev_size = serde_json::to_string(ev).map(|s| s.len() + 1).unwrap_or(0);
        if size + ev_size > MAX_PAYLOAD && !current.is_empty() {
            out.push(encode(std::mem::take(&mut current), Vec::new()));
            size = empty;
        }
        if empty + ev_size > MAX_PAYLOAD {
            out.push(encode(Effects::default(), vec![ev.1.seq]));
            continue;
        }
        current.events.push(ev.clone());
        size += ev_size;
    }
    if !current.is_empty() {
        out.push(encode(current, Vec::new()));
    }
    out
}

const NOTIFY_SQL: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

/// Most payloads queued for sending; past it, payloads are dropped and the next
/// statement tells the other nodes to look again (a resync).
const BACKLOG: usize = 10_000;
/// Longest wait for the events a notification names.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a resync follows a failed `NOTIFY` when nothing else is sent.
const RESYNC_RETRY: Duration = Duration::from_millis(500);
/// Most payloads one `NOTIFY` statement carries.
const MAX_BATCH: usize = 256;
/// Longest wait at shutdown for the notifications still queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one `NOTIFY` statement (or a connect) before it counts as failed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends this node's notifications to the others, in the order they were queued, on a
/// connection of its own (outside the pool), and says hello every third of the peers'
/// time-to-live. Queuing never waits and never fails: a write is answered once
/// committed, whatever becomes of its notification.
#[derive(Debug)]
pub(crate) struct Notifier {
    queue: mpsc::Sender<String>,
    lost: Arc<AtomicBool>,
    peers: Arc<Peers>,
    /// Asks the task to send what is queued and stop; it answers on the sender given.
    close: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl Notifier {
    /// Starts the sending task, which first says hello (the receiver returned fires once
    /// that has been sent, or has failed); the task ends once the notifier and the
    /// listener are gone and the queue is sent.
    pub(crate) fn start(
        config: tokio_postgres::Config,
        node: Arc<str>,
        peers: Arc<Peers>,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (queue, rx) = mpsc::channel(BACKLOG);
        let (close, close_rx) = mpsc::channel(1);
        let lost = Arc::new(AtomicBool::new(false));
        let (hello_sent, hello) = tokio::sync::oneshot::channel();
        tokio::spawn(send_loop(
            config,
            node,
            (rx, close_rx),
            lost.clone(),
            peers.ttl,
            hello_sent,
        ));
        let notifier = Self {
            queue,
            lost,
            peers,
            close,
        };
        (notifier, hello)
    }

    /// Sends what is queued and stops the task, waiting at most [`CLOSE_TIMEOUT`]: at
    /// shutdown, so that a write answered just before is not left unannounced (the
    /// runtime would drop the queue with the process).
    pub(crate) async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        let closing = async {
            if self.close.send(done).await.is_ok() {
                let _ = closed.await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::warn!("notifications still queued at shutdown were not all sent in time");
        }
    }

    /// The sending queue, for the listener's questions and answers.
    pub(crate) fn queue(&self) -> mpsc::Sender<String> {
        self.queue.clone()
    }

    /// Queues a committed transaction's effects (unless no other node is listening).
    pub(crate) fn send(&self, node: &str, fx: &Effects) {
        if fx.is_empty() || !self.peers.any() {
            return;
        }
        for p in payloads(node, self.peers.ttl_ms(), fx) {
            if self.queue.try_send(p).is_err() {
                self.lost.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// The notifier's task: takes what is queued (up to [`MAX_BATCH`] payloads), sends it
/// in one statement, and again. A failed statement is tried once more on a new
/// connection; if that fails too, its payloads are dropped (with a warning) and the
/// next statement carries a resync.
async fn send_loop(
    config: tokio_postgres::Config,
    node: Arc<str>,
    (mut rx, mut close): (
        mpsc::Receiver<String>,
        mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    ),
    lost: Arc<AtomicBool>,
    ttl: Duration,
    hello_sent: tokio::sync::oneshot::Sender<()>,
) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let hello_every = (ttl / 3).max(Duration::from_millis(100));
    let mut conn: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    let mut hello = tokio::time::interval(hello_every);
    hello.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hello_sent = Some(hello_sent);
    // Set by `Notifier::close`: send what is queued without waiting for more, then stop.
    let mut closing: Option<tokio::sync::oneshot::Sender<()>> = None;
    let mut resynced_at_close = false;
    loop {
        let retry = lost.load(Ordering::Relaxed);
        if closing.is_some() {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            // Done once the queue is sent, with an owed resync tried once more at most.
            if batch.is_empty() && (!retry || resynced_at_close) {
                if let Some(done) = closing.take() {
                    let _ = done.send(());
                }
                return;
            }
            resynced_at_close |= batch.is_empty();
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 {
                    return;
                },
                Some(done) = close.recv() => closing = Some(done),
                _ = hello.tick() => batch.push(control_payload(&node, ttl_ms, Control::Hello)),
                // After a failed send, the resync goes out soon even if no write comes.
                _ = tokio::time::sleep(RESYNC_RETRY), if retry => {}
            }
        }
        if lost.swap(false, Ordering::Relaxed) {
            batch.push(control_payload(&node, ttl_ms, Control::Resync));
        }
        if batch.is_empty() {
            continue;
        }
        let mut sent = false;
        for _ in 0..2 {
            if conn.is_none() {
                conn = match tokio::time::timeout(NOTIFY_TIMEOUT, connect(&config)).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "the notifier cannot connect");
                        None
                    }
                    Err(_) => None,
                };
            }
            let Some((client, st)) = &conn else {
                continue;
            };
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&CHANNEL, &batch];
            match tokio::time::timeout(NOTIFY_TIMEOUT, client.execute(st, &params)).await {
                Ok(Ok(_)) => {
                    sent = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "NOTIFY failed"),
                Err(_) => tracing::debug!("NOTIFY timed out"),
            }
            conn = None;
        }
        if sent {
            if failing {
                tracing::info!("notifications to the other nodes are sent again");
            }
            failing = false;
        } else {
            if !failing {
                tracing::warn!(
                    dropped = batch.len(),
                    "could not notify the other nodes of committed changes; they will \
                     find them when they next look"
                );
            }
            failing = true;
            lost.store(true, Ordering::Relaxed);
            // Not a hot loop while PostgreSQL is away.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        batch.clear();
        if let Some(tx) = hello_sent.take() {
            let _ = tx.send(());
        }
    }
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio_postgres::Statement), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    let st = client.prepare(NOTIFY_SQL).await?;
    Ok((client, st))
}

/// A payload with no effects.
#[derive(Clone, Copy)]
enum Control {
    Resync,
    Hello,
    Ask,
}

fn control_payload(node: &str, ttl_ms: u64, c: Control) -> String {
    serde_json::to_string(&Signal {
        n: node.into(),
        fx: Effects::default(),
        fetch: Vec::new(),
        resync: matches!(c, Control::Resync),
        hello: matches!(c, Control::Hello),
        ask: matches!(c, Control::Ask),
        ttl_ms: Some(ttl_ms),
    })
    .unwrap_or_default()
}

/// Feeds one payload into the bus (unless this node sent it), reading the events it
/// names by sequence number through the listener's connection.
async fn deliver(
    client: &tokio_postgres::Client,
    bus: &Bus,
    peers: &Peers,
    answer: &mpsc::Sender<String>,
    node: &str,
    payload: &str,
) {
    let sig = match serde_json::from_str::<Signal<'_>>(payload) {
        Ok(sig) if sig.n == node => return,
        Ok(sig) => {
            if peers.heard(sig.ttl_ms.map(Duration::from_millis)) {
                let _ = answer.try_send(control_payload(node, peers.ttl_ms(), Control::Resync));
            }
            if sig.ask {
                let _ = answer.try_send(control_payload(node, peers.ttl_ms(), Control::Hello));
            }
            sig
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed notification");
            return;
        }
    };
    if sig.resync {
        bus.wake_all();
        bus.nudge_chores();
    }
    let mut fx = sig.fx;
    if !sig.fetch.is_empty() {
        // Bounded: a half-open connection must not hold up the listener (its ping
        // notices that and reconnects); the events stay readable in `job_events`.
        match tokio::time::timeout(FETCH_TIMEOUT, fetch_events(client, &sig.fetch)).await {
            Ok(Ok(events)) => fx.events.extend(events),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the events a notification names")
            }
            Err(_) => tracing::warn!("reading the events a notification names timed out"),
        }
    }
    fx.apply(bus);
}

async fn fetch_events(
    client: &tokio_postgres::Client,
    seqs: &[i64],
) -> StoreResult<Vec<(vow_core::TenantId, vow_core::api::JobEventView)>> {
    let sql =
        format!("SELECT {EVENT_COLS}, tenant_id FROM job_events WHERE seq = ANY($1) ORDER BY seq");
    client
        .query(&sql, &[&seqs])
        .await
        .map_err(crate::pg_err)?
        .iter()
        .map(|r| Ok((parsed(r, 9)?, event_from_row(r)?)))
        .collect()
}

/// The listener of one node: runs until the store is dropped.
pub(crate) async fn run(
    config: tokio_postgres::Config,
    bus: Weak<Bus>,
    peers: Arc<Peers>,
    notifier: mpsc::Sender<String>,
    node: Arc<str>,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let session = async {
            let (client, mut conn) = config.connect(NoTls).await?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            let driver = tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(msg) = stream.next().await {
                    match msg {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n.payload().to_owned()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok::<_, tokio_postgres::Error>((client, driver, rx))
        };
        let stopped = stop.changed();
        tokio::pin!(stopped);
        let connected = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), session) => r,
            _ = &mut stopped => return,
        };
        match connected {
            Ok(Ok((client, mut driver, mut rx))) => {
                backoff = Duration::from_millis(100);
                let Some(b) = bus.upgrade() else { return };
                if failing {
                    tracing::info!("notification listener reconnected");
                }
                failing = false;
                // Anything may have happened while we were not listening, and other
                // nodes may have said hello: ask who is there.
                peers.listening();
                let _ = notifier.try_send(control_payload(&node, peers.ttl_ms(), Control::Ask));
                b.wake_all();
                b.nudge_chores();
                drop(b);
                loop {
                    tokio::select! {
                        msg = rx.recv() => match msg {
                            Some(payload) => {
                                let Some(b) = bus.upgrade() else { return };
                                deliver(&client, &b, &peers, &notifier, &node, &payload).await;
                            }
                            None => break,
                        },
                        r = &mut driver => {
                            match r {
                                Ok(Err(e)) => tracing::warn!(error = %e, "notification listener lost its connection"),
                                _ => tracing::warn!("notification listener connection ended"),
                            }
                            break;
                        }
                        // A keepalive query notices a half-open connection quickly.
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {
                            let ping = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1")).await;
                            if !matches!(ping, Ok(Ok(_))) {
                                tracing::warn!("notification listener connection does not answer");
                                break;
                            }
                        }
                        _ = &mut stopped => return,
                    }
                }
                peers.deaf();
                // Drain whatever arrived before the connection ended.
                while let Ok(payload) = rx.try_recv() {
                    let Some(b) = bus.upgrade() else { return };
                    deliver(&client, &b, &peers, &notifier, &node, &payload).await;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "notification listener cannot connect; retrying");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("notification listener connect timed out; retrying");
                }
                failing = true;
            }
        }
        if bus.strong_count() == 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stopped => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::{control_payload, payloads, Control, Peers, Signal};
    use crate::Effects;
    use std::time::Duration;

    /// Nodes need not share one `peer_ttl_ms`: every payload carries its sender's, and a
    /// node counts on a peer for the longer of the two after hearing it (the peer says
    /// hello every third of its own).
    #[test]
    fn a_peer_is_counted_on_for_its_own_ttl_when_longer() {
        let ttl = Duration::from_millis(100);
        let peers = Peers::new(ttl);
        peers.listening();
        std::thread::sleep(ttl * 2);
        assert!(!peers.any(), "alone once the grace is over");
        peers.heard(Some(ttl * 10));
        std::thread::sleep(ttl * 3);
        assert!(peers.any(), "past this node's ttl, within the peer's");
        std::thread::sleep(ttl * 9);
        assert!(!peers.any(), "past the peer's ttl too");
        // A shorter claim counts as this node's own ttl, a huge one as an hour.
        let peers = Peers::new(Duration::from_secs(1));
        peers.listening();
        peers.heard(Some(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            peers.any(),
            "a shorter ttl than this node's counts as its own"
        );
        peers.heard(Some(Duration::from_secs(1_000_000)));
        let until = peers.until.load(std::sync::atomic::Ordering::Relaxed);
        assert!(until <= peers.now_ms() + 3_600_000, "{until}");

        let fx = Effects {
            wake: vec![(vow_core::TenantId::generate(), "q".parse().unwrap())],
            ..Effects::default()
        };
        for p in payloads("n1", 30_000, &fx)
            .into_iter()
            .chain([control_payload("n1", 30_000, Control::Hello)])
        {
            let sig: Signal<'_> = serde_json::from_str(&p).unwrap();
            assert_eq!(sig.ttl_ms, Some(30_000), "{p}");
        }
    }

    #[test]
    fn peers_are_assumed_while_deaf_and_for_a_ttl_after_a_sign() {
        let ttl = Duration::from_millis(60);
        let peers = Peers::new(ttl);
        // The listener has not connected yet: it cannot hear them, so it assumes them.
        assert!(peers.any());
        peers.listening();
        assert!(peers.any(), "a grace after (re)connecting");
        std::thread::sleep(ttl * 2);
        assert!(!peers.any(), "alone once the grace is over");
        assert!(
            peers.heard(None),
            "the first sign after being alone asks for a resync"
        );
        assert!(peers.any());
        assert!(!peers.heard(None), "later signs do not");
        std::thread::sleep(ttl * 2);
        assert!(!peers.any());
        peers.deaf();
        assert!(
            peers.any(),
            "a listener that lost its connection assumes peers"
        );
        assert!(
            !peers.heard(None),
            "no resync while deaf (the reconnect wakes everyone)"
        );
    }
}
