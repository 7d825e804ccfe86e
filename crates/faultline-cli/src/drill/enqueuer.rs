//! The drills' stream of jobs: POSTs through the API, each with its own idempotency key; a 503
//! or a dropped connection is retried with the same key (safe by construction, and what a
//! client should do), so every job is acknowledged (201 or 200) exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::JobId;
use faultline::Payload;
use serde_json::Value;

use super::env::Env;

/// How many of the latest acknowledged ids `next` is shown.
pub const RECENT: usize = 8;

/// What the stream saw.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    /// Acknowledged jobs, with when the answer came.
    pub acked: Vec<(JobId, Instant)>,
    /// The bodies sent for acknowledged jobs, by job.
    pub bodies: HashMap<JobId, Payload>,
    /// Every answer by status (0: no answer, the connection failed).
    pub by_status: HashMap<u16, u64>,
    /// POSTs sent, retries included.
    pub attempts: u64,
}

impl Flow {
    /// The acknowledged job ids, in order.
    pub fn ids(&self) -> Vec<JobId> {
        self.acked.iter().map(|(id, _)| *id).collect()
    }

    /// Answers with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Answers that were neither an acknowledgement nor "unavailable" (503, or no answer).
    pub fn unexpected(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| !matches!(**s, 0 | 200 | 201 | 503))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running stream; [`Enqueuer::stop`] ends it and returns what it saw.
pub struct Enqueuer {
    flow: Arc<Mutex<Flow>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Enqueuer {
    /// POST `next(n, recent)` (the key and the body of job `n`, given the ids of the last
    /// [`RECENT`] acknowledged jobs, for bodies that depend on them) one after another, `pause`
    /// apart, until stopped.
    pub fn start(
        env: &Env,
        pause: Duration,
        mut next: impl FnMut(u64, &[JobId]) -> (String, Payload) + Send + 'static,
    ) -> Enqueuer {
        let flow = Arc::new(Mutex::new(Flow::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = env.http.clone();
        let url = format!("{}/v1/jobs", env.api_url);
        let task = tokio::spawn({
            let (flow, stop) = (flow.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                let mut recent: Vec<JobId> = Vec::with_capacity(RECENT);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, body) = next(n, &recent);
                    loop {
                        let sent = http
                            .post(&url)
                            .header("idempotency-key", &key)
                            // The body's text as built: a payload's numbers and key order are
                            // part of what the drill checks comes back.
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body.get().to_owned())
                            .send()
                            .await;
                        let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                        {
                            let mut f = flow.lock().unwrap_or_else(|p| p.into_inner());
                            f.attempts += 1;
                            *f.by_status.entry(status).or_default() += 1;
                        }
                        if status == 200 || status == 201 {
                            let reply: Value =
                                sent.expect("answered").json().await.unwrap_or(Value::Null);
                            if let Some(id) = reply["id"].as_str().and_then(|s| s.parse().ok()) {
                                let mut f = flow.lock().unwrap_or_else(|p| p.into_inner());
                                f.acked.push((id, Instant::now()));
                                f.bodies.insert(id, body.clone());
                                if recent.len() == RECENT {
                                    recent.remove(0);
                                }
                                recent.push(id);
                            }
                            break;
                        }
                        if stop.load(Ordering::Relaxed) || !matches!(status, 0 | 503) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Enqueuer { flow, stop, task }
    }

    /// What it saw so far.
    pub fn flow(&self) -> Flow {
        self.flow.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stop (after the job in flight is answered or given up) and return what it saw.
    pub async fn stop(self) -> Flow {
        self.stop.store(true, Ordering::Relaxed);
        let Enqueuer { flow, task, .. } = self;
        let _ = task.await;
        let flow = flow.lock().unwrap_or_else(|p| p.into_inner()).clone();
        flow
    }
}
