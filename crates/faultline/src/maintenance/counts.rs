//! The count folder: folds the live-count deltas that every write to the live table appends
//! into the per-(queue, state) counts, about once a second, so that a read of the counts
//! (`GET /v1/queues`, the dashboard, the depth sampler) sums a few rows per queue rather than
//! every delta since the start (see `Store::fold_live_counts` and the migration `live_counts`).
//! Without it the counts stay exact; reading them only grows slower as deltas pile up.

use std::time::Duration;

use super::service::{Pass, Service};
use crate::store::Store;
use crate::StoreError;

/// Count folder settings.
#[derive(Clone, Debug)]
pub struct CountFolderConfig {
    /// Time between folds: a read of the counts sums the deltas of about this much work.
    pub interval: Duration,
}

impl Default for CountFolderConfig {
    fn default() -> Self {
        CountFolderConfig {
            interval: Duration::from_secs(1),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct CountFolder {
    store: Store,
    config: CountFolderConfig,
}

impl CountFolder {
    /// A count folder over `store`.
    pub fn new(store: Store, config: CountFolderConfig) -> Self {
        CountFolder { store, config }
    }

    /// One fold.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn run_once(&self) -> Result<Folded, StoreError> {
        Ok(Folded {
            deltas: self.store.fold_live_counts().await?,
        })
    }
}

/// What a fold did.
#[derive(Debug)]
pub struct Folded {
    /// Delta rows folded into the counts.
    pub deltas: u64,
}

impl Pass for Folded {
    // Every busy second has deltas to fold: not worth a line each.
    fn is_empty(&self) -> bool {
        true
    }

    fn log(&self) {}
}

impl Service for CountFolder {
    type Outcome = Folded;
    const OP: &'static str = "counts";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<Folded, StoreError> {
        CountFolder::run_once(self).await
    }
}
