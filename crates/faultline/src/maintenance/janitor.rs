//! The registry janitor: deletes the rows of worker processes that stopped refreshing them
//! (crashed, killed, partitioned away). Listing already ignores such rows; this keeps the table
//! from growing with every worker that ever ran.

use std::time::Duration;

use super::service::{Pass, Service};
use crate::store::Store;
use crate::StoreError;

/// Registry janitor settings.
#[derive(Clone, Debug)]
pub struct JanitorConfig {
    /// Time between passes.
    pub interval: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        JanitorConfig {
            interval: Duration::from_secs(5),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Janitor {
    store: Store,
    config: JanitorConfig,
}

impl Janitor {
    /// A janitor over `store`.
    pub fn new(store: Store, config: JanitorConfig) -> Self {
        Janitor { store, config }
    }
}

/// Rows of stale workers deleted by a pass.
#[derive(Debug)]
pub struct Forgotten(pub u64);

impl Pass for Forgotten {
    fn is_empty(&self) -> bool {
        self.0 == 0
    }

    fn log(&self) {
        tracing::info!(workers = self.0, "forgot workers that stopped heartbeating");
    }
}

impl Service for Janitor {
    type Outcome = Forgotten;
    const OP: &'static str = "workers";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn run_once(&self) -> Result<Forgotten, StoreError> {
        self.store.forget_stale_workers().await.map(Forgotten)
    }
}
