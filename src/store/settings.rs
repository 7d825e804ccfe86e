//! Queue settings (SPEC §12): pause, a concurrency limit and a rate limit per queue, stored in
//! `faultline.queue_settings` and enforced by the claim (`execution.rs` for the unlimited
//! path, [`Store::claim_limited`] for queues with a limit).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::exec::{ExecuteOnStore, OnStore};
use super::execution::ClaimedRow;
use super::{millis, Store};
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

/// The queues with a limit (not paused), as last read: the claim runs [`Store::claim_limited`]
/// for those among a worker's queues. A stale list never breaks a limit — the unlimited claim
/// excludes limited and paused queues in its own SQL — it only delays a newly limited queue's
/// jobs by at most [`LIMITED_TTL`].
#[derive(Debug, Default)]
pub(crate) struct LimitedQueues(Mutex<Option<(Instant, Arc<Vec<String>>)>>);

/// How long the list of limited queues is reused before it is read again.
const LIMITED_TTL: Duration = Duration::from_millis(250);

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
                (queue, paused, concurrency_limit, rate_count, rate_period_ms)
             values ($1, coalesce($2, false), $4, $6, $7)
             on conflict (queue) do update set
                paused = coalesce($2, s.paused),
                concurrency_limit = case when $3 then $4 else s.concurrency_limit end,
                rate_count = case when $5 then $6 else s.rate_count end,
                rate_period_ms = case when $5 then $7 else s.rate_period_ms end,
                updated_at = now()",
        )
        .bind(queue)
        .bind(patch.paused)
        .bind(patch.concurrency_limit.is_some())
        .bind(patch.concurrency_limit.flatten())
        .bind(patch.rate_limit.is_some())
        .bind(rate.map(|r| r.count))
        .bind(rate.map(|r| r.period_ms))
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

    /// Those of `queues` that have a limit and are not paused (from a list at most
    /// [`LIMITED_TTL`] old).
    pub(crate) async fn limited_among(&self, queues: &[String]) -> Result<Vec<String>, StoreError> {
        if let Some(list) = self.limited.fresh() {
            return Ok(queues
                .iter()
                .filter(|q| list.contains(q))
                .cloned()
                .collect());
        }
        let list: Vec<String> = sqlx::query_scalar(
            "select queue from faultline.queue_settings
             where not paused and (concurrency_limit is not null or rate_count is not null)",
        )
        .all_on(self)
        .await?;
        let list = self.limited.store(list);
        Ok(queues
            .iter()
            .filter(|q| list.contains(q))
            .cloned()
            .collect())
    }

    /// Claim up to `want` jobs of one limited queue, within its limits, all workers together.
    ///
    /// Why it is race-free: the transaction first locks the queue's settings row (`for
    /// update`), so limited claims of one queue run one at a time; the claim itself is a *new*
    /// statement, whose snapshot (READ COMMITTED) sees every claim committed before the lock
    /// was granted. Its running count (every `running` row of the queue, expired leases
    /// included: a slot is freed only when its job leaves `running`) and its count of starts in
    /// the last period are therefore exact, and only ever fall behind the truth in the safe
    /// direction (a job finishing meanwhile). Starts are logged in `queue_starts` with the real
    /// clock (`clock_timestamp()`, not the transaction's start, which may predate the wait for
    /// the lock) and pruned past the period in the same statement.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) async fn claim_limited(
        &self,
        queue: &str,
        worker: &str,
        want: u32,
        ttl: Duration,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let settings: Option<(Option<i32>, Option<i32>, Option<i32>)> = sqlx::query_as(
            "select concurrency_limit, rate_count, rate_period_ms from faultline.queue_settings
             where queue = $1 and not paused for update",
        )
        .bind(queue)
        .persistent(self.persistent())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((limit, rate_count, rate_period_ms)) = settings else {
            tx.commit().await?;
            return Ok(Vec::new());
        };
        let rows: Vec<ClaimedRow> = sqlx::query_as(concat!(
            "with room as (
                select greatest(0, least(
                    $3::int8,
                    coalesce($5::int8 - (select count(*) from faultline.jobs
                                         where queue = $1 and state = 'running'), $3::int8),
                    coalesce($6::int8 - (select count(*) from faultline.queue_starts
                                         where queue = $1
                                           and at > clock_timestamp() - $7 * interval '1 millisecond'),
                             $3::int8)
                )) as n
            ),
            locked as (
                select id, needs_recovery
                from faultline.jobs
                where state = 'queued' and queue = $1 and next_run_at <= now()
                  and attempts < max_attempts
                order by priority, next_run_at, id
                limit (select n from room)
                for update skip locked
            ),
            next as (
                select id, needs_recovery, clock_timestamp() as at from locked
            ),
            claimed as (",
            super::execution::claim_update!(),
            "
            ),
            logged as (
                insert into faultline.queue_starts (queue, at)
                select $1, clock_timestamp() from claimed where $6::int8 is not null
            ),
            pruned as (
                delete from faultline.queue_starts
                where queue = $1 and $7::int8 is not null
                  and at <= clock_timestamp() - $7 * interval '1 millisecond'
            )
            select * from claimed"
        ))
        .bind(queue)
        .bind(worker)
        .bind(i64::from(want))
        .bind(millis(ttl))
        .bind(limit.map(i64::from))
        .bind(rate_count.map(i64::from))
        .bind(rate_period_ms.map(i64::from))
        .persistent(self.persistent())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

impl LimitedQueues {
    fn fresh(&self) -> Option<Arc<Vec<String>>> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIMITED_TTL)
            .map(|(_, list)| list.clone())
    }

    fn store(&self, list: Vec<String>) -> Arc<Vec<String>> {
        let list = Arc::new(list);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), list.clone()));
        list
    }

    /// Read the list again at the next claim (this process just changed a setting).
    fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
