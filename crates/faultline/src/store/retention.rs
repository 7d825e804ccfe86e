//! Retention of finished jobs (what the pruner runs): history's partitions made ahead of time
//! and dropped whole past retention, and ended periods of uniqueness deleted.
//!
//! History is range-partitioned by `finished_at` into partitions of one fixed width (chosen
//! from the retention by the first process that makes one, then kept in `history_layout` for
//! every process). Each pass makes the partition of the current period and the next two, so a
//! finishing job always has one to land in, and drops every partition that ended more than the
//! retention ago: a `DROP TABLE` of a whole period instead of row-by-row deletes, so retention
//! leaves no dead tuples behind. A partition is named for the Unix second it starts at
//! (`job_history_p1764612000`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use super::statement::OnStore;
use super::Store;
use crate::error::StoreError;

/// What one [`Store::maintain_history`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryOutcome {
    /// Partitions made ahead of time.
    pub created: u32,
    /// Partitions dropped past retention.
    pub dropped: u32,
    /// Jobs in those partitions.
    pub dropped_jobs: u64,
    /// Jobs deleted from the default partition past retention.
    pub deleted: u64,
    /// Ended periods of uniqueness deleted.
    pub unique_periods: u64,
}

impl HistoryOutcome {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self == &HistoryOutcome::default()
    }
}

impl Store {
    /// Retention of history: make the partitions the next finished jobs go to, drop the
    /// partitions whose every job finished more than `retention` ago (their counts leave
    /// `queue_finished_counts` in the same transaction), and delete, in batches of `limit`,
    /// expired jobs from the default partition (jobs that finished while no partition covered
    /// their time, and jobs moved by the upgrade). Returns what it did.
    ///
    /// Safe in every process at once: partition changes run under a transaction-level advisory
    /// lock (no session lock, so it works behind PgBouncer), and the first process fixes the
    /// partition width for everyone (`history_layout`).
    ///
    /// # Errors
    /// [`StoreError::Database`]; a partition made or dropped before the error stays so.
    pub async fn maintain_history(
        &self,
        retention: Duration,
        limit: u32,
    ) -> Result<HistoryOutcome, StoreError> {
        let mut outcome = maintain(self, retention, limit).await?;
        // Periods of uniqueness that have ended: a later enqueue would overwrite each one
        // anyway (see `take_period`), so deleting them only keeps the table small.
        outcome.unique_periods = sqlx::query(
            "delete from faultline.unique_periods where unique_key in (
                 select unique_key from faultline.unique_periods
                 where expires_at < statement_timestamp() limit $1
                 for update skip locked)",
        )
        .bind(i64::from(limit))
        .persistent(self.uses_prepared_statements())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(outcome)
    }
}

/// Arbitrary, fixed key of the transaction-level advisory lock around partition changes
/// ("fl-parts").
const PARTITION_LOCK_KEY: i64 = 0x666c_2d70_6172_7473;

/// Partitions made ahead of the current one.
const AHEAD: i64 = 2;

/// The width a retention asks for: about a seventh of it, between a minute and a day, so that
/// history spans some eight partitions (few enough that a look-up by id probes few indexes).
fn width_for(retention: Duration) -> i64 {
    (retention.as_secs() as i64 / 7).clamp(60, 86_400)
}

fn at(second: i64) -> String {
    DateTime::<Utc>::from_timestamp(second, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// See [`Store::maintain_history`].
async fn maintain(
    store: &Store,
    retention: Duration,
    limit: u32,
) -> Result<HistoryOutcome, StoreError> {
    let mut outcome = HistoryOutcome::default();
    let retention_secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let persistent = store.uses_prepared_statements();

    let mut tx = store.pool().begin().await?;
    lock_partitions(&mut tx, persistent).await?;
    let width = layout_width(&mut tx, retention, persistent).await?;
    let now: i64 = sqlx::query_scalar("select floor(extract(epoch from now()))::int8")
        .persistent(persistent)
        .fetch_one(&mut *tx)
        .await?;
    let existing: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'faultline.job_history'::regclass",
    )
    .persistent(persistent)
    .fetch_all(&mut *tx)
    .await?;
    outcome.created = create_ahead(&mut tx, &existing, now, width).await?;
    let expired_before = now.saturating_sub(retention_secs);
    for name in &existing {
        let Some(start) = name
            .strip_prefix("job_history_p")
            .and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        if start.saturating_add(width) > expired_before {
            continue;
        }
        let jobs = drop_partition(&mut tx, name, persistent).await?;
        outcome.dropped += 1;
        outcome.dropped_jobs += jobs as u64;
    }
    sqlx::query("delete from faultline.queue_finished_counts where n = 0")
        .persistent(persistent)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    outcome.deleted = delete_expired_defaults(store, retention_secs, limit).await?;
    Ok(outcome)
}

/// Take the transaction-level advisory lock around partition changes and bound how long the
/// transaction may wait for or sit on the parent's lock. Held until `tx` ends.
async fn lock_partitions(tx: &mut PgConnection, persistent: bool) -> Result<(), StoreError> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK_KEY)
        .persistent(persistent)
        .execute(&mut *tx)
        .await?;
    // A drop waits for the parent's lock; never for long (completions insert into the parent).
    sqlx::query("set local lock_timeout = '5s'")
        .persistent(persistent)
        .execute(&mut *tx)
        .await?;
    // The DDL below holds the parent's exclusive lock until commit, and every completion
    // inserts into the parent: a maintainer that stalls inside this transaction (SIGSTOP, a
    // frozen VM) would stall every worker's completions. The server ends such a session after
    // 5 s idle in the transaction, which rolls it back and frees the lock.
    sqlx::query("set local idle_in_transaction_session_timeout = '5s'")
        .persistent(persistent)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Make the partitions of the current period (by `now`) and the [`AHEAD`] next ones that are
/// not in `existing`, each in a savepoint of `tx`. Returns how many it made; a period the
/// default partition already holds jobs of is left to the default partition.
async fn create_ahead(
    tx: &mut PgConnection,
    existing: &[String],
    now: i64,
    width: i64,
) -> Result<u32, StoreError> {
    let mut created = 0;
    let current = now - now.rem_euclid(width);
    for k in 0..=AHEAD {
        let start = current + k * width;
        let name = format!("job_history_p{start}");
        if existing.contains(&name) {
            continue;
        }
        // Integers formatted by us: nothing from outside reaches this DDL.
        let ddl = format!(
            "create table faultline.{name} partition of faultline.job_history
             for values from ('{}') to ('{}')",
            at(start),
            at(start + width)
        );
        let mut savepoint = tx.begin().await?;
        match sqlx::query(&ddl)
            .persistent(false)
            .execute(&mut *savepoint)
            .await
        {
            Ok(_) => {
                savepoint.commit().await?;
                created += 1;
            }
            // 23514: the default partition already holds jobs of that period (they finished
            // while no partition covered it); they stay there and retention deletes them.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
                savepoint.rollback().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created)
}

/// Take the jobs of partition `name` out of `queue_finished_counts` and drop it, in `tx`.
/// Returns how many jobs it held.
async fn drop_partition(
    tx: &mut PgConnection,
    name: &str,
    persistent: bool,
) -> Result<i64, StoreError> {
    let jobs: i64 = sqlx::query_scalar(&format!(
        "with gone as (select queue, state, count(*) n from faultline.{name} group by 1, 2),
             uncounted as (
                 insert into faultline.queue_finished_counts as c (queue, state, shard, n)
                 select queue, state, 0, -n from gone
                 on conflict (queue, state, shard) do update set n = c.n + excluded.n
             )
             select coalesce(sum(n), 0)::int8 from gone"
    ))
    .persistent(persistent)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(&format!("drop table faultline.{name}"))
        .persistent(persistent)
        .execute(&mut *tx)
        .await?;
    Ok(jobs)
}

/// Delete jobs that finished more than `retention_secs` ago from the default partition, batch
/// by batch of `limit` (at least 1) until a batch comes back short, each batch taking its jobs
/// out of `queue_finished_counts` in the same statement. Returns how many it deleted.
async fn delete_expired_defaults(
    store: &Store,
    retention_secs: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    let mut total = 0;
    // The default partition, batch by batch (it holds only stragglers and upgraded rows).
    loop {
        let deleted: i64 = sqlx::query_scalar(
            "with doomed as (
                select id, finished_at from faultline.job_history_default
                where finished_at < now() - $1 * interval '1 second'
                order by finished_at
                limit $2
                for update skip locked
            ),
            gone as (
                delete from faultline.job_history_default d using doomed
                where d.id = doomed.id and d.finished_at = doomed.finished_at
                returning d.queue, d.state
            ),
            uncounted as (
                insert into faultline.queue_finished_counts as c (queue, state, shard, n)
                select queue, state, 0, -count(*) from gone group by queue, state
                on conflict (queue, state, shard) do update set n = c.n + excluded.n
            )
            select count(*) from gone",
        )
        .bind(retention_secs.min(i64::from(i32::MAX)) as f64)
        .bind(i64::from(limit.max(1)))
        .one_on(store)
        .await?;
        total += deleted as u64;
        if deleted < i64::from(limit.max(1)) {
            break;
        }
    }
    Ok(total)
}

/// The partition width in force, fixing it from `retention` if no process has yet.
async fn layout_width(
    conn: &mut PgConnection,
    retention: Duration,
    persistent: bool,
) -> Result<i64, StoreError> {
    sqlx::query(
        "insert into faultline.history_layout (width_seconds) values ($1) on conflict do nothing",
    )
    .bind(width_for(retention) as i32)
    .persistent(persistent)
    .execute(&mut *conn)
    .await?;
    let width: i32 = sqlx::query_scalar("select width_seconds from faultline.history_layout")
        .persistent(persistent)
        .fetch_one(&mut *conn)
        .await?;
    Ok(i64::from(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_retention_within_bounds() {
        assert_eq!(width_for(Duration::from_secs(7 * 86_400)), 86_400);
        assert_eq!(width_for(Duration::from_secs(300)), 60);
        assert_eq!(width_for(Duration::from_secs(7 * 3_600)), 3_600);
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
    }
}
