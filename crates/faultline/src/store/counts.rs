//! Live counts (migration `live_counts`): every statement that changes the live table appends
//! its per-(queue, state) deltas; a fold adds them to the counts. Reading the counts costs
//! O(queues + unfolded deltas), whatever the backlog.

use super::statement::OnStore;
use super::Store;
use crate::error::StoreError;

impl Store {
    /// Fold the live-count deltas appended since the last fold into the counts. Returns how
    /// many delta rows it folded; 0 when another fold was under way (it skips rather than
    /// waits). Safe to run in several processes at once: a delta is folded exactly once.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn fold_live_counts(&self) -> Result<u64, StoreError> {
        let folded: i64 = sqlx::query_scalar("select faultline.fold_live_counts()")
            .one_on(self)
            .await?;
        Ok(u64::try_from(folded).unwrap_or(0))
    }
}
