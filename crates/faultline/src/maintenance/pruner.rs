//! The pruner: retires history past the retention period a partition at a time (and makes the
//! partitions the next finished jobs go to), so history does not grow without bound and leaves
//! no dead tuples behind. See `Store::maintain_history`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::{drive, Pass, Service};
use crate::metrics::Metrics;
use crate::store::{HistoryOutcome, Store};
use crate::StoreError;

/// Pruner settings.
#[derive(Clone, Debug)]
pub struct PrunerConfig {
    /// Time between passes.
    pub interval: Duration,
    /// Finished jobs older than this are deleted (7 days by default).
    pub retention: Duration,
    /// Most jobs deleted per statement.
    pub batch_size: u32,
}

impl Default for PrunerConfig {
    fn default() -> Self {
        PrunerConfig {
            interval: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            batch_size: 1000,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Pruner {
    store: Store,
    config: PrunerConfig,
    metrics: Arc<Metrics>,
}

impl Pruner {
    /// A pruner over `store`.
    pub fn new(store: Store, config: PrunerConfig, metrics: Arc<Metrics>) -> Self {
        let config = PrunerConfig {
            batch_size: config.batch_size.max(1),
            interval: config.interval.max(Duration::from_millis(10)),
            ..config
        };
        Pruner {
            store,
            config,
            metrics,
        }
    }

    /// One pass: make the coming partitions, drop those past retention. Returns what it did.
    ///
    /// # Errors
    /// [`StoreError::Database`]; what was done before the error stays done.
    pub async fn run_once(&self) -> Result<HistoryOutcome, StoreError> {
        let outcome = self
            .store
            .maintain_history(self.config.retention, self.config.batch_size)
            .await?;
        // The durable steps and signals of the jobs just pruned (docs/durable.md).
        let orphans = self.store.forget_orphan_steps().await?;
        if orphans > 0 {
            tracing::debug!(rows = orphans, "steps and signals of pruned jobs deleted");
        }
        Ok(outcome)
    }

    /// Run a pass at once (so that partitions exist before the first job finishes), then every
    /// `interval` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        drive(self, &self.metrics, &shutdown, || true).await
    }
}

impl Service for Pruner {
    type Outcome = HistoryOutcome;
    const OP: &'static str = "prune";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<HistoryOutcome, StoreError> {
        Pruner::run_once(self).await
    }
}

impl Pass for HistoryOutcome {
    fn is_empty(&self) -> bool {
        HistoryOutcome::is_empty(self)
    }

    fn log(&self) {
        tracing::info!(
            created = self.created,
            dropped = self.dropped,
            dropped_jobs = self.dropped_jobs,
            deleted = self.deleted,
            unique_periods = self.unique_periods,
            "history retention pass"
        );
    }
}
