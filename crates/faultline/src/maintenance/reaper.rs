//! The reaper: takes back jobs whose lease expired (their worker crashed, stalled or lost the
//! database), so they run again, or fail for good with the expiry recorded, without any human.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::{drive, Pass, Service};
use crate::metrics::Metrics;
use crate::store::{ReapOutcome, Store};
use crate::StoreError;

/// Reaper settings.
#[derive(Clone, Debug)]
pub struct ReaperConfig {
    /// Time between passes. Recovery of a crashed worker's job takes the lease TTL plus up to
    /// one interval.
    pub interval: Duration,
    /// Most jobs taken back per statement (a pass repeats until a statement takes fewer).
    pub batch_size: u32,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            interval: Duration::from_secs(1),
            batch_size: 1000,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Reaper {
    store: Store,
    config: ReaperConfig,
    metrics: Arc<Metrics>,
}

impl Reaper {
    /// A reaper over `store`, counting into `metrics`.
    pub fn new(store: Store, config: ReaperConfig, metrics: Arc<Metrics>) -> Self {
        let config = ReaperConfig {
            batch_size: config.batch_size.max(1),
            interval: config.interval.max(Duration::from_millis(10)),
        };
        Reaper {
            store,
            config,
            metrics,
        }
    }

    /// One pass: take back every expired lease (in batches). Counts
    /// `faultline_lease_expirations_total` per job and `faultline_jobs_failed_total` for those
    /// whose attempts were spent.
    ///
    /// # Errors
    /// [`StoreError::Database`]; what was taken back before the error stays taken back.
    pub async fn run_once(&self) -> Result<ReapOutcome, StoreError> {
        let mut total = ReapOutcome {
            woken: self.store.wake_timed_out_waits().await?,
            ..ReapOutcome::default()
        };
        loop {
            let outcome = self.store.reap_expired(self.config.batch_size).await?;
            for job in outcome.requeued.iter().chain(&outcome.failed) {
                self.metrics
                    .lease_expirations
                    .with_label_values(&[&job.queue])
                    .inc();
            }
            for job in &outcome.failed {
                self.metrics
                    .jobs_failed
                    .with_label_values(&[&job.queue, &job.kind])
                    .inc();
            }
            let done = outcome.total() < self.config.batch_size as usize;
            total.requeued.extend(outcome.requeued);
            total.failed.extend(outcome.failed);
            if done {
                return Ok(total);
            }
        }
    }

    /// Run passes every `interval` until `shutdown` (in every process: safe, see
    /// [`Store::reap_expired`]; the [`super::Maintainer`] runs it only on the leader).
    pub async fn run(&self, shutdown: CancellationToken) {
        drive(self, &self.metrics, &shutdown, || true).await
    }
}

impl Service for Reaper {
    type Outcome = ReapOutcome;
    const OP: &'static str = "reap";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn run_once(&self) -> Result<ReapOutcome, StoreError> {
        Reaper::run_once(self).await
    }
}

impl Pass for ReapOutcome {
    fn is_empty(&self) -> bool {
        self.total() == 0 && self.woken == 0
    }

    fn log(&self) {
        if self.total() > 0 {
            tracing::info!(
                requeued = self.requeued.len(),
                failed = self.failed.len(),
                "reaper took back expired leases"
            );
        }
        if self.woken > 0 {
            tracing::info!(
                woken = self.woken,
                "waits for signals timed out; jobs queued"
            );
        }
    }
}
