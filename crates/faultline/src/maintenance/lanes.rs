//! The lane marker: moves each lane's low-water mark up to its first queued job, a few times a
//! second, so that claims start there instead of at the head of an index whose first entries,
//! while something holds the MVCC horizon, are every job finished since (see
//! `Store::mark_lanes` and `docs/design/mvcc-horizon.md`). Now and then it deletes old marks.
//! Without it claims stay correct, and start at the head as before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::service::{Pass, Service};
use crate::store::Store;
use crate::StoreError;

/// Lane marker settings.
#[derive(Clone, Debug)]
pub struct LaneMarkerConfig {
    /// Time between passes: a claim visits the dead entries of about this much finished work.
    pub interval: Duration,
    /// Time between deletions of old marks.
    pub forget_interval: Duration,
}

impl Default for LaneMarkerConfig {
    fn default() -> Self {
        LaneMarkerConfig {
            interval: Duration::from_millis(200),
            forget_interval: Duration::from_secs(60),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct LaneMarker {
    store: Store,
    config: LaneMarkerConfig,
    last_forget: Mutex<Instant>,
}

impl LaneMarker {
    /// A lane marker over `store`.
    pub fn new(store: Store, config: LaneMarkerConfig) -> Self {
        LaneMarker {
            store,
            config,
            last_forget: Mutex::new(Instant::now()),
        }
    }

    /// One pass: marks appended, and old marks deleted when it is time.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn run_once(&self) -> Result<Marked, StoreError> {
        let appended = self.store.mark_lanes().await?;
        let due = {
            let mut last = self.last_forget.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= self.config.forget_interval;
            if due {
                *last = Instant::now();
            }
            due
        };
        let forgotten = if due {
            self.store.forget_old_marks().await?
        } else {
            0
        };
        Ok(Marked {
            appended,
            forgotten,
        })
    }
}

/// What a pass did.
#[derive(Debug)]
pub struct Marked {
    /// Marks appended (lanes whose mark moved).
    pub appended: u64,
    /// Old marks deleted.
    pub forgotten: u64,
}

impl Pass for Marked {
    // Marks move all the time on a busy queue: only deletions are worth a line.
    fn is_empty(&self) -> bool {
        self.forgotten == 0
    }

    fn log(&self) {
        tracing::debug!(forgotten = self.forgotten, "old lane marks deleted");
    }
}

impl Service for LaneMarker {
    type Outcome = Marked;
    const OP: &'static str = "lanes";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<Marked, StoreError> {
        LaneMarker::run_once(self).await
    }
}
