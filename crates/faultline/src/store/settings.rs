//! Queue settings: pause, a concurrency limit, a rate limit and the per-key limit, stored in
//! `faultline.queue_settings` and enforced by the claim ([`super::claim`]).

use super::statement::ExecuteOnStore;
use super::Store;
use crate::error::StoreError;
use crate::job::{QueueStats, RateLimit};

/// Largest concurrency limit or rate count accepted.
pub const MAX_LIMIT: i32 = 1_000_000;
/// Longest rate period accepted (a day), in milliseconds.
pub const MAX_RATE_PERIOD_MS: i32 = 86_400_000;

/// A change to a queue's settings: a field left `None` is kept; `Some(None)` clears a limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSettingsPatch {
    /// Pause (`true`) or resume (`false`).
    pub paused: Option<bool>,
    /// Set or clear the concurrency limit.
    pub concurrency_limit: Option<Option<i32>>,
    /// Set or clear the rate limit.
    pub rate_limit: Option<Option<RateLimit>>,
    /// Set the running jobs allowed per concurrency key, or clear it (back to the default, 1).
    pub key_concurrency: Option<Option<i32>>,
}

impl QueueSettingsPatch {
    /// The first field out of bounds, as the API names it.
    fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(Some(limit)) = self.concurrency_limit {
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Some((
                    "concurrency_limit",
                    format!("must be 1 to {MAX_LIMIT} (or null for none), got {limit}"),
                ));
            }
        }
        if let Some(Some(limit)) = self.key_concurrency {
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Some((
                    "key_concurrency",
                    format!("must be 1 to {MAX_LIMIT} (or null for the default, 1), got {limit}"),
                ));
            }
        }
        if let Some(Some(rate)) = self.rate_limit {
            if !(1..=MAX_LIMIT).contains(&rate.count) {
                return Some((
                    "rate_limit.count",
                    format!("must be 1 to {MAX_LIMIT}, got {}", rate.count),
                ));
            }
            if !(1..=MAX_RATE_PERIOD_MS).contains(&rate.period_ms) {
                return Some((
                    "rate_limit.period_ms",
                    format!("must be 1 to {MAX_RATE_PERIOD_MS}, got {}", rate.period_ms),
                ));
            }
        }
        None
    }
}

impl Store {
    /// Change `queue`'s settings (creating them if the queue has none) and return the queue as
    /// `GET /v1/queues` lists it. Workers see the change at their next claim.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field (nothing changed); [`StoreError::Database`].
    pub async fn update_queue_settings(
        &self,
        queue: &str,
        patch: &QueueSettingsPatch,
    ) -> Result<QueueStats, StoreError> {
        if let Some(problem) = crate::names::name_problem(queue) {
            return Err(StoreError::invalid("queue", problem));
        }
        if let Some((field, message)) = patch.problem() {
            return Err(StoreError::invalid(field, message));
        }
        let rate = patch.rate_limit.flatten();
        // The upsert locks the settings row, so it waits for a limited claim in progress.
        sqlx::query(
            "insert into faultline.queue_settings as s
                (queue, paused, concurrency_limit, rate_count, rate_period_ms, key_concurrency)
             values ($1, coalesce($2, false), $4, $6, $7, $9)
             on conflict (queue) do update set
                paused = coalesce($2, s.paused),
                concurrency_limit = case when $3 then $4 else s.concurrency_limit end,
                rate_count = case when $5 then $6 else s.rate_count end,
                rate_period_ms = case when $5 then $7 else s.rate_period_ms end,
                key_concurrency = case when $8 then $9 else s.key_concurrency end,
                updated_at = now()",
        )
        .bind(queue)
        .bind(patch.paused)
        .bind(patch.concurrency_limit.is_some())
        .bind(patch.concurrency_limit.flatten())
        .bind(patch.rate_limit.is_some())
        .bind(rate.map(|r| r.count))
        .bind(rate.map(|r| r.period_ms))
        .bind(patch.key_concurrency.is_some())
        .bind(patch.key_concurrency.flatten())
        .execute_on(self)
        .await?;
        self.limited.forget();
        let stats = self.queue_stats().await?;
        stats
            .into_iter()
            .find(|s| s.queue == queue)
            .ok_or_else(|| StoreError::invalid("queue", "vanished while being updated"))
    }

    /// Pause `queue`: claims take none of its jobs until [`Store::resume`]; running jobs
    /// finish; enqueues are accepted.
    ///
    /// # Errors
    /// As [`Store::update_queue_settings`].
    pub async fn pause(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let patch = QueueSettingsPatch {
            paused: Some(true),
            ..QueueSettingsPatch::default()
        };
        self.update_queue_settings(queue, &patch).await
    }

    /// Resume a paused queue.
    ///
    /// # Errors
    /// As [`Store::update_queue_settings`].
    pub async fn resume(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let patch = QueueSettingsPatch {
            paused: Some(false),
            ..QueueSettingsPatch::default()
        };
        self.update_queue_settings(queue, &patch).await
    }
}
