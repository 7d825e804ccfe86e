//! Queue settings (SPEC §12): pause, a concurrency limit, a rate limit and the per-key limit,
//! stored in `faultline.queue_settings` and enforced by the claim (`execution.rs` for plain
//! queues, [`Store::claim_limited`] for paused, limited and keyed ones).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::Row;

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

/// The queues whose jobs the plain claim leaves alone — paused, limited or keyed — as last
/// read, each with whether it is paused: the claim runs [`Store::claim_limited`] for those among
/// a worker's queues. A stale list never breaks a limit — the plain claim excludes those queues
/// in its own SQL — it only delays a newly limited queue's jobs by at most [`LIMITED_TTL`].
#[derive(Debug, Default)]
pub(crate) struct LimitedQueues(Mutex<Option<(Instant, SettingsList)>>);

/// Queues the plain claim leaves alone, each with whether it is paused.
type SettingsList = Arc<Vec<(String, bool)>>;

/// Why a claim took fewer jobs of a queue than it asked for (the `reason` label of
/// `faultline_claims_throttled_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Throttle {
    /// The queue is paused.
    Paused,
    /// The queue's `concurrency_limit` is reached.
    Concurrency,
    /// Every eligible keyed job's key is at its `key_concurrency`.
    Key,
    /// The queue's `rate_limit` is spent for now.
    Rate,
}

impl Throttle {
    /// Every reason, for creating the metric's series.
    pub const ALL: [Throttle; 4] = [
        Throttle::Paused,
        Throttle::Concurrency,
        Throttle::Key,
        Throttle::Rate,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Throttle::Paused => "paused",
            Throttle::Concurrency => "concurrency",
            Throttle::Key => "key",
            Throttle::Rate => "rate",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// A row of `faultline.claim_limited`: a claimed job, or the marker saying a limit held the
/// claim back.
pub(crate) enum LimitedRow {
    Claimed(Box<ClaimedRow>),
    Throttled(Throttle),
}

impl<'r> sqlx::FromRow<'r, PgRow> for LimitedRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let throttled: Option<String> = row.try_get("throttled")?;
        match throttled {
            None => ClaimedRow::from_row(row).map(|r| LimitedRow::Claimed(Box::new(r))),
            Some(text) => Throttle::parse(&text)
                .map(LimitedRow::Throttled)
                .ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "throttled".into(),
                    source: format!("unknown throttle reason {text:?}").into(),
                }),
        }
    }
}

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

    /// Those of `queues` that the plain claim leaves alone (paused, limited or keyed), each with
    /// whether it is paused, from a list at most [`LIMITED_TTL`] old.
    pub(crate) async fn limited_among(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let list = match self.limited.fresh() {
            Some(list) => list,
            None => {
                let list: Vec<(String, bool)> = sqlx::query_as(
                    "select queue, paused from faultline.queue_settings
                     where paused or keyed or concurrency_limit is not null
                        or rate_count is not null",
                )
                .all_on(self)
                .await?;
                self.limited.store(list)
            }
        };
        Ok(list
            .iter()
            .filter(|(q, _)| queues.contains(q))
            .cloned()
            .collect())
    }

    /// Claim up to `want` jobs of one paused, limited or keyed queue, within its limits, all
    /// workers together: one call of `faultline.claim_limited` (see its migration,
    /// `20261202000003_concurrency_keys.sql`, for why it is race-free; its current row type is in
    /// `20261206000001_complete_claims.sql`). Returns the claimed rows
    /// and, when a limit held the claim back, why.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) async fn claim_limited(
        &self,
        queue: &str,
        worker: &str,
        want: u32,
        ttl: Duration,
    ) -> Result<(Vec<ClaimedRow>, Option<Throttle>), StoreError> {
        let rows: Vec<LimitedRow> =
            sqlx::query_as("select * from faultline.claim_limited($1, $2, $3, $4)")
                .bind(queue)
                .bind(worker)
                .bind(i32::try_from(want).unwrap_or(i32::MAX))
                .bind(millis(ttl))
                .all_on(self)
                .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut throttle = None;
        for row in rows {
            match row {
                LimitedRow::Claimed(row) => claimed.push(*row),
                LimitedRow::Throttled(reason) => throttle = Some(reason),
            }
        }
        Ok((claimed, throttle))
    }
}

impl LimitedQueues {
    fn fresh(&self) -> Option<SettingsList> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIMITED_TTL)
            .map(|(_, list)| list.clone())
    }

    fn store(&self, list: Vec<(String, bool)>) -> SettingsList {
        let list = Arc::new(list);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), list.clone()));
        list
    }

    /// Read the list again at the next claim (this process just changed a setting).
    fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
