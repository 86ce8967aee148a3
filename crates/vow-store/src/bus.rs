//! In-process signals from the store to the server: "work is available in this queue"
//! (wakes long-polling leases) and "this job changed" (feeds `/wait` and event streams).
//!
//! A store publishes only after its transaction is durable. A multi-node backend also
//! feeds the bus from its cross-node channel (PostgreSQL `LISTEN`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, Notify};
use vow_core::api::JobEventView;
use vow_core::{JobId, QueueName, TenantId};

/// A job event with its tenant, as published on the bus.
#[derive(Debug, Clone)]
pub struct BusEvent {
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The event.
    pub event: JobEventView,
}

/// Awaited jobs: a notifier and how many waiters share it.
type JobWaiters = Arc<Mutex<HashMap<JobId, (Arc<Notify>, usize)>>>;

/// Wake-ups per queue, wake-ups per awaited job, and a broadcast of job events.
#[derive(Debug)]
pub struct Bus {
    queues: Mutex<HashMap<(TenantId, QueueName), Arc<Notify>>>,
    jobs: JobWaiters,
    events: broadcast::Sender<Arc<BusEvent>>,
    chores: Notify,
}

/// Registration of interest in one job's end; see [`Bus::job_waiter`]. Dropping it
/// unregisters.
#[derive(Debug)]
pub struct JobWaiter {
    id: JobId,
    notify: Arc<Notify>,
    jobs: JobWaiters,
}

impl JobWaiter {
    /// Resolves when the job reaches a terminal state (or on [`Bus::wake_all`]). Call
    /// it (and `enable` the future) before reading the job, so an end between the read
    /// and the wait is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for JobWaiter {
    fn drop(&mut self) {
        let mut map = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = map.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.id);
            }
        }
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus whose event broadcast buffers 16384 events per slow subscriber.
    pub fn new() -> Self {
        Self {
            queues: Mutex::default(),
            jobs: Arc::default(),
            events: broadcast::channel(16_384).0,
            chores: Notify::new(),
        }
    }

    /// The notifier that long-polling leases of a queue wait on.
    pub fn queue_waiter(&self, tenant_id: &TenantId, queue: &QueueName) -> Arc<Notify> {
        let mut map = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((tenant_id.clone(), queue.clone()))
            .or_default()
            .clone()
    }

    /// Wakes every lease waiting on a queue.
    pub fn wake_queue(&self, tenant_id: &TenantId, queue: &QueueName) {
        let map = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(&(tenant_id.clone(), queue.clone())) {
            n.notify_waiters();
        }
    }

    /// Wakes every lease and every job waiter (shutdown, or a multi-node resync after
    /// notifications may have been missed).
    pub fn wake_all(&self) {
        let map = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
        drop(map);
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for (n, _) in jobs.values() {
            n.notify_waiters();
        }
    }

    /// Registers interest in the end of job `id` (`GET /v1/jobs/{id}/wait`). Only a
    /// terminal event of that job wakes it, so waiters cost nothing per unrelated event.
    pub fn job_waiter(&self, id: &JobId) -> JobWaiter {
        let mut map = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(id.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        JobWaiter {
            id: id.clone(),
            notify: entry.0.clone(),
            jobs: self.jobs.clone(),
        }
    }

    /// Publishes job events (after commit): wakes waiters of jobs that ended and feeds
    /// the event broadcast.
    pub fn publish(&self, tenant_id: &TenantId, events: impl IntoIterator<Item = JobEventView>) {
        let broadcast = self.events.receiver_count() > 0;
        for event in events {
            if event.to_state.is_terminal() {
                let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((n, _)) = jobs.get(&event.job_id) {
                    n.notify_waiters();
                }
            }
            if broadcast {
                let _ = self.events.send(Arc::new(BusEvent {
                    tenant_id: tenant_id.clone(),
                    event,
                }));
            }
        }
    }

    /// Subscribes to job events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusEvent>> {
        self.events.subscribe()
    }

    /// Tells the chores (promoter, reaper) that a deadline may have moved earlier.
    pub fn nudge_chores(&self) {
        self.chores.notify_waiters();
    }

    /// Resolves at the next [`Bus::nudge_chores`].
    pub fn chores_nudged(&self) -> tokio::sync::futures::Notified<'_> {
        self.chores.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vow_core::machine::EventKind;
    use vow_core::{JobState, Timestamp};

    fn event(job_id: &JobId, to: JobState) -> JobEventView {
        JobEventView {
            seq: 1,
            job_id: job_id.clone(),
            queue: "q".parse().unwrap(),
            kind: EventKind::Completed,
            from_state: Some(JobState::Running),
            to_state: to,
            attempt: 1,
            at: Timestamp(0),
            detail: None,
        }
    }

    #[tokio::test]
    async fn job_waiters_wake_on_their_job_ending_only_and_unregister() {
        let bus = Bus::new();
        let tenant = TenantId::generate();
        let (a, b) = (JobId::generate(), JobId::generate());
        let waiter = bus.job_waiter(&a);
        let second = bus.job_waiter(&a);
        let woken = waiter.notified();
        let mut woken = Box::pin(woken);
        woken.as_mut().enable();
        // Another job's end, and a non-terminal event of this job, do not wake it.
        bus.publish(
            &tenant,
            [
                event(&b, JobState::Completed),
                event(&a, JobState::Scheduled),
            ],
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), woken.as_mut())
                .await
                .is_err()
        );
        bus.publish(&tenant, [event(&a, JobState::Dead)]);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("woken by the end");
        drop(waiter);
        assert_eq!(
            bus.jobs.lock().unwrap().len(),
            1,
            "still awaited by the second waiter"
        );
        drop(second);
        assert!(
            bus.jobs.lock().unwrap().is_empty(),
            "unregistered when the last waiter leaves"
        );
    }
}
