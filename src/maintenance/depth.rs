//! The depth sampler: reads per-queue counts from the database on an interval and sets
//! `faultline_queue_depth{queue,state}` and `faultline_queue_oldest_age_seconds{queue}`, so a
//! scrape never runs a query (and many scrapers cost the database nothing).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::{drive, Pass, Service};
use crate::job::{JobState, QueueStats};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::StoreError;

/// Depth sampler settings.
#[derive(Clone, Debug)]
pub struct DepthSamplerConfig {
    /// Time between samples.
    pub interval: Duration,
}

impl Default for DepthSamplerConfig {
    fn default() -> Self {
        DepthSamplerConfig {
            interval: Duration::from_secs(5),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct DepthSampler {
    store: Store,
    config: DepthSamplerConfig,
    metrics: Arc<Metrics>,
    /// Queues set last time, so that a queue that emptied out entirely drops its series.
    known: Mutex<HashSet<String>>,
}

impl DepthSampler {
    /// A sampler over `store` setting gauges on `metrics`.
    pub fn new(store: Store, config: DepthSamplerConfig, metrics: Arc<Metrics>) -> Self {
        DepthSampler {
            store,
            config,
            metrics,
            known: Mutex::default(),
        }
    }

    /// One sample. Returns the statistics it set.
    ///
    /// # Errors
    /// [`StoreError::Database`]; the gauges keep their last values.
    pub async fn run_once(&self) -> Result<Vec<QueueStats>, StoreError> {
        // The dashboard's per-minute throughput, counted here because this pass runs on the
        // elected maintainer only, every few seconds (a minute is counted once; see the store).
        self.store.sample_throughput().await?;
        let stats = self.store.queue_stats().await?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashSet<String> = stats.iter().map(|s| s.queue.clone()).collect();
        for gone in known.difference(&current) {
            self.remove_series(gone);
        }
        for s in &stats {
            for (state, count) in [
                (JobState::Queued, s.queued),
                (JobState::Running, s.running),
                (JobState::Waiting, s.waiting),
                (JobState::Succeeded, s.succeeded),
                (JobState::Failed, s.failed),
                (JobState::Cancelled, s.cancelled),
            ] {
                self.metrics
                    .queue_depth
                    .with_label_values(&[&s.queue, state.as_str()])
                    .set(count);
            }
            self.metrics
                .queue_oldest_age_seconds
                .with_label_values(&[&s.queue])
                .set(s.oldest_eligible_age_seconds);
            self.metrics
                .queue_paused
                .with_label_values(&[&s.queue])
                .set(i64::from(s.paused));
        }
        *known = current;
        Ok(stats)
    }

    /// Drop every depth series this sampler set (when this process stops being the one that
    /// samples, so two processes never export the same queue's depth).
    pub fn clear(&self) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.drain() {
            self.remove_series(&gone);
        }
    }

    fn remove_series(&self, queue: &str) {
        for state in JobState::ALL {
            let _ = self
                .metrics
                .queue_depth
                .remove_label_values(&[queue, state.as_str()]);
        }
        let _ = self
            .metrics
            .queue_oldest_age_seconds
            .remove_label_values(&[queue]);
        let _ = self.metrics.queue_paused.remove_label_values(&[queue]);
    }

    /// Sample every `interval` until `shutdown` (the first sample at once).
    pub async fn run(&self, shutdown: CancellationToken) {
        drive(self, &self.metrics, &shutdown, || true).await
    }
}

/// A depth sample changes only gauges: nothing to log.
#[derive(Debug)]
pub struct Sampled;

impl Pass for Sampled {
    fn is_empty(&self) -> bool {
        true
    }

    fn log(&self) {}
}

impl Service for DepthSampler {
    type Outcome = Sampled;
    const OP: &'static str = "sample";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<Sampled, StoreError> {
        DepthSampler::run_once(self).await.map(|_| Sampled)
    }
}
