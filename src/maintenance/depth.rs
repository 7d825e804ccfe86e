//! The depth sampler: reads per-queue counts from the database on an interval and sets
//! `faultline_queue_depth{queue,state}` and `faultline_queue_oldest_age_seconds{queue}`, so a
//! scrape never runs a query (and many scrapers cost the database nothing).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::jittered;
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
        let stats = self.store.queue_stats().await?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashSet<String> = stats.iter().map(|s| s.queue.clone()).collect();
        for gone in known.difference(&current) {
            for state in JobState::ALL {
                let _ = self
                    .metrics
                    .queue_depth
                    .remove_label_values(&[gone, state.as_str()]);
            }
            let _ = self
                .metrics
                .queue_oldest_age_seconds
                .remove_label_values(&[gone]);
        }
        for s in &stats {
            for (state, count) in [
                (JobState::Queued, s.queued),
                (JobState::Running, s.running),
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
        }
        *known = current;
        Ok(stats)
    }

    /// Sample every `interval` until `shutdown` (the first sample at once).
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.run_once().await {
                self.metrics.db_error("sample", &e);
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(self.config.interval)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
