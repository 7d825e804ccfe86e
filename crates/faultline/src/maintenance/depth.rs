//! The depth sampler: reads per-queue counts from the database on an interval and sets
//! `faultline_queue_depth{queue,state}` and `faultline_queue_oldest_age_seconds{queue}`, so a
//! scrape never runs a query (and many scrapers cost the database nothing).
//!
//! A sample reads the live counts (`Store::queue_stats`): O(queues) since the migration
//! `live_counts`. Before it, live jobs were counted row by row, about a second and a half with a
//! 10,000,000-job backlog on a 2-core machine; sampled every 5 s, that was a third of a core
//! taken from the very workers draining the backlog (their drain fell to 73 % of its rate at a
//! small backlog; BENCHMARKS.md, issue 12). The guard stays for any slow sample: the sampler
//! waits at least [`DUTY_FACTOR`] times as long as its last sample took: it never spends more
//! than a twentieth of its time sampling, and the gauges are as fresh as that allows. Before
//! its first sample it knows no duration, so it estimates one from the planner's row count of
//! the live table ([`ROW_COST`] a row): a maintainer elected over a large backlog does not
//! open its term with a second of full-table counting, but spaces even its first sample.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The sampler waits at least this many times as long as its last sample took (module docs).
pub const DUTY_FACTOR: u32 = 20;

/// What counting one live row costs, for the estimate before the first sample (measured here:
/// 1.8–2.0 s for 10,000,000 rows on one core).
pub const ROW_COST: Duration = Duration::from_nanos(200);

/// The longest that a slow sample spaces out the next one: the gauges are never older than
/// this (plus a sample) because of it.
pub const MAX_SPACING: Duration = Duration::from_secs(300);

/// The wait before the next sample: the configured interval, or [`DUTY_FACTOR`] times the
/// last sample's duration (at most [`MAX_SPACING`]) when that is longer.
pub fn next_interval(configured: Duration, last_sample: Duration) -> Duration {
    configured.max(last_sample.saturating_mul(DUTY_FACTOR).min(MAX_SPACING))
}

/// Before the first sample: the estimated duration of counting `live_rows` live jobs, when
/// that count is too long to take at once (the wait it calls for is longer than `configured`);
/// `None`: sample now.
pub fn first_sample_deferral(configured: Duration, live_rows: u64) -> Option<Duration> {
    let estimate = ROW_COST.saturating_mul(u32::try_from(live_rows).unwrap_or(u32::MAX));
    (next_interval(configured, estimate) > configured).then_some(estimate)
}

/// See the module docs.
#[derive(Debug)]
pub struct DepthSampler {
    store: Store,
    config: DepthSamplerConfig,
    metrics: Arc<Metrics>,
    /// Queues set last time, so that a queue that emptied out entirely drops its series.
    known: Mutex<HashSet<String>>,
    /// How long the last sample took (see [`next_interval`]).
    last_took: Mutex<Duration>,
}

impl DepthSampler {
    /// A sampler over `store` setting gauges on `metrics`.
    pub fn new(store: Store, config: DepthSamplerConfig, metrics: Arc<Metrics>) -> Self {
        DepthSampler {
            store,
            config,
            metrics,
            known: Mutex::default(),
            last_took: Mutex::default(),
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

    /// How long the last sample took (its estimate before the first one; zero before that).
    fn last_took(&self) -> Duration {
        *self.last_took.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_last_took(&self, took: Duration) {
        *self.last_took.lock().unwrap_or_else(|p| p.into_inner()) = took;
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
        next_interval(self.config.interval, self.last_took())
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<Sampled, StoreError> {
        if self.last_took().is_zero() {
            let rows = self.store.live_rows_estimate().await?;
            if let Some(estimate) = first_sample_deferral(self.config.interval, rows) {
                // Too large to count at once: wait as long as that count's share allows.
                self.set_last_took(estimate);
                return Ok(Sampled);
            }
        }
        let started = Instant::now();
        let result = DepthSampler::run_once(self).await.map(|_| Sampled);
        // Never zero once sampled, so the estimate above is made once.
        self.set_last_took(started.elapsed().max(Duration::from_nanos(1)));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_spaces_the_next_one_out() {
        let five = Duration::from_secs(5);
        // Quick samples keep the configured interval.
        assert_eq!(next_interval(five, Duration::from_millis(3)), five);
        assert_eq!(next_interval(five, Duration::from_millis(250)), five);
        // A 1.5 s sample (a 10M backlog) waits 30 s: a twentieth of the time spent sampling.
        assert_eq!(
            next_interval(five, Duration::from_millis(1500)),
            Duration::from_secs(30)
        );
        // Bounded, and never shorter than what was configured.
        assert_eq!(next_interval(five, Duration::MAX), MAX_SPACING);
        let hour = Duration::from_secs(3600);
        assert_eq!(next_interval(hour, Duration::from_secs(60)), hour);
    }

    #[test]
    fn a_large_live_table_defers_even_the_first_sample() {
        let five = Duration::from_secs(5);
        // Up to 1.25M live rows (an estimated 250 ms): sampled at once.
        assert_eq!(first_sample_deferral(five, 0), None);
        assert_eq!(first_sample_deferral(five, 1_000_000), None);
        assert_eq!(first_sample_deferral(five, 1_250_000), None);
        // 10M rows: an estimated 2 s, so the first sample waits 40 s.
        let estimate = first_sample_deferral(five, 10_000_000).expect("deferred");
        assert_eq!(estimate, Duration::from_secs(2));
        assert_eq!(next_interval(five, estimate), Duration::from_secs(40));
        // Beyond u32 rows it saturates, bounded by MAX_SPACING.
        let huge = first_sample_deferral(five, u64::MAX).expect("deferred");
        assert_eq!(next_interval(five, huge), MAX_SPACING);
    }
}
