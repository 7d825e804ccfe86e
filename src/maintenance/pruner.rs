//! The pruner: deletes finished jobs older than the retention period, in small batches, so the
//! job table does not grow without bound.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::jittered;
use crate::metrics::Metrics;
use crate::store::Store;
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

    /// One pass: delete, batch by batch, every finished job past retention. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Database`]; batches deleted before the error stay deleted.
    pub async fn run_once(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self
                .store
                .prune_finished(self.config.retention, self.config.batch_size)
                .await?;
            total += deleted;
            if deleted < u64::from(self.config.batch_size) {
                return Ok(total);
            }
        }
    }

    /// Run passes every `interval` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(jittered(self.config.interval)) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.run_once().await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "pruner deleted finished jobs past retention")
                }
                Err(e) => self.metrics.db_error("prune", &e),
            }
        }
    }
}
