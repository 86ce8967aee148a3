//! The API steps the process-level notice tests share: learn the callback secret, finish
//! jobs whose notices go to a receiver, and wait until vow records them delivered.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::receiver::HangingReceiver;

/// A server's address and the admin key to call it with.
pub struct Api<'a> {
    /// HTTP client.
    pub http: &'a reqwest::Client,
    /// `http://127.0.0.1:port`.
    pub base: &'a str,
    /// Admin key.
    pub key: &'a str,
}

impl Api<'_> {
    /// Creates (or rotates) the tenant's callback secret and starts a hanging receiver
    /// that checks signatures with it.
    pub async fn receiver(&self) -> HangingReceiver {
        let secret: Value = self
            .http
            .post(format!("{}/v1/callback-secret", self.base))
            .bearer_auth(self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        HangingReceiver::start(secret["secret"].as_str().unwrap()).await
    }

    /// Enqueues `n` jobs in `queue` with `callback_url`, leases and completes them all
    /// in one ack; returns their ids.
    pub async fn complete_with_callbacks(&self, queue: &str, n: usize, url: &str) -> Vec<String> {
        let mut jobs = Vec::new();
        for i in 0..n {
            let job: Value = self
                .http
                .post(format!("{}/v1/queues/{queue}/jobs", self.base))
                .bearer_auth(self.key)
                .json(&json!({ "payload": i, "callback_url": url }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            jobs.push(job["id"].as_str().unwrap().to_owned());
        }
        let leased: Value = self
            .http
            .post(format!("{}/v1/queues/{queue}/lease", self.base))
            .bearer_auth(self.key)
            .json(&json!({ "worker_id": "w", "max_jobs": n, "wait_ms": 1000 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let complete: Vec<Value> = leased["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| json!({ "id": j["id"], "lease_id": j["lease_id"], "result": { "ok": true } }))
            .collect();
        assert_eq!(complete.len(), n);
        let r = self
            .http
            .post(format!("{}/v1/acks", self.base))
            .bearer_auth(self.key)
            .json(&json!({ "complete": complete }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        jobs
    }

    /// Waits (up to 60 s) until each job's one notice is `delivered` in vow's record.
    pub async fn wait_delivered(&self, jobs: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut delivered = 0;
            for job in jobs {
                let ds: Value = self
                    .http
                    .get(format!("{}/v1/jobs/{job}/deliveries", self.base))
                    .bearer_auth(self.key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let items = ds["items"].as_array().unwrap();
                assert_eq!(items.len(), 1, "{ds}");
                delivered += usize::from(items[0]["state"] == "delivered");
            }
            if delivered == jobs.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {delivered} of {} notices delivered",
                jobs.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits (up to 20 s) until `rx` has seen `n` distinct notices.
pub async fn wait_in_flight(rx: &HangingReceiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.distinct() < n {
        assert!(Instant::now() < deadline, "the notices were never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
