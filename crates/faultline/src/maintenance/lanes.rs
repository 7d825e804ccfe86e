//! The lane marker: moves each lane's low-water mark up to its first queued job, a few times a
//! second, so that claims start there instead of at the head of an index whose first entries,
//! while something holds the MVCC horizon, are every job finished since (see
//! `Store::mark_lanes` and `docs/design/mvcc-horizon.md`). Now and then it deletes old marks,
//! and looks for queued jobs a mark has passed (`Store::repair_marks`: a backstop).
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
    /// Time between looks for queued jobs a mark has passed (`Store::repair_marks`).
    pub repair_interval: Duration,
}

impl Default for LaneMarkerConfig {
    fn default() -> Self {
        LaneMarkerConfig {
            interval: Duration::from_millis(200),
            forget_interval: Duration::from_secs(60),
            repair_interval: Duration::from_secs(10),
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct LaneMarker {
    store: Store,
    config: LaneMarkerConfig,
    last_forget: Mutex<Instant>,
    last_repair: Mutex<Instant>,
}

impl LaneMarker {
    /// A lane marker over `store`.
    pub fn new(store: Store, config: LaneMarkerConfig) -> Self {
        LaneMarker {
            store,
            config,
            last_forget: Mutex::new(Instant::now()),
            last_repair: Mutex::new(Instant::now()),
        }
    }

    /// One pass: marks appended; when it is time, old marks deleted and passed jobs looked
    /// for.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn run_once(&self) -> Result<Marked, StoreError> {
        let appended = self.store.mark_lanes().await?;
        let forgotten = if due(&self.last_forget, self.config.forget_interval) {
            self.store.forget_old_marks().await?
        } else {
            0
        };
        let repaired = if due(&self.last_repair, self.config.repair_interval) {
            self.store.repair_marks().await?
        } else {
            0
        };
        Ok(Marked {
            appended,
            forgotten,
            repaired,
        })
    }
}

/// Whether `interval` has passed since `last`; if so, `last` becomes now.
fn due(last: &Mutex<Instant>, interval: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let due = last.elapsed() >= interval;
    if due {
        *last = Instant::now();
    }
    due
}

/// What a pass did.
#[derive(Debug)]
pub struct Marked {
    /// Marks appended (lanes whose mark moved).
    pub appended: u64,
    /// Old marks deleted.
    pub forgotten: u64,
    /// Lanes whose mark had passed a queued job, set back to it.
    pub repaired: u64,
}

impl Pass for Marked {
    // Marks move all the time on a busy queue: only deletions and repairs are worth a line.
    fn is_empty(&self) -> bool {
        self.forgotten == 0 && self.repaired == 0
    }

    fn log(&self) {
        if self.repaired > 0 {
            // The marks' argument failed somewhere (a clock stepped back?): say so loudly.
            tracing::warn!(
                lanes = self.repaired,
                "a lane mark had passed queued jobs; set back so that claims find them"
            );
        }
        if self.forgotten > 0 {
            tracing::debug!(forgotten = self.forgotten, "old lane marks deleted");
        }
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
