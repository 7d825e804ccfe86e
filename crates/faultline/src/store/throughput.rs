//! Per-queue throughput by minute (the dashboard's chart): the elected maintainer counts each
//! finished minute once from history (`sample_throughput`), and readers get the stored counts
//! (`throughput`). Nothing on the hot path writes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::statement::OnStore;
use super::Store;
use crate::StoreError;

/// How long the counts of a minute are kept.
const KEEP_HOURS: i32 = 25;

/// The jobs of one queue that finished in one minute, by outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ThroughputSample {
    /// The minute's start (UTC).
    pub minute: DateTime<Utc>,
    /// The queue.
    pub queue: String,
    /// Jobs that succeeded in it.
    pub succeeded: i64,
    /// Jobs that failed for good in it.
    pub failed: i64,
    /// Jobs cancelled in it.
    pub cancelled: i64,
    /// Of the jobs that succeeded in it: the median time their last attempt waited to start
    /// once due, in milliseconds (`null` when none succeeded, or counted by an older release).
    pub wait_p50_ms: Option<f64>,
    /// The same, 95th percentile.
    pub wait_p95_ms: Option<f64>,
    /// Of the jobs that succeeded in it: the median run time of their last attempt, ms.
    pub run_p50_ms: Option<f64>,
    /// The same, 95th percentile.
    pub run_p95_ms: Option<f64>,
}

impl Store {
    /// Count every finished minute of the last hour not counted yet (a minute is finished
    /// 15 s after its end, so that transactions that began in it have committed), and forget
    /// minutes older than a day. Returns how many minutes were counted.
    ///
    /// Why each minute is counted once: a minute is claimed by inserting it into
    /// `throughput_sampled` (primary key) in the transaction that counts it; a second
    /// maintainer (an old leader still finishing its pass) conflicts and counts nothing.
    ///
    /// # Errors
    /// [`StoreError::Database`]; nothing is half-written (one transaction).
    pub async fn sample_throughput(&self) -> Result<u64, StoreError> {
        let counted: i64 = sqlx::query_scalar(
            "with due as (
                 select m as minute
                 from generate_series(date_trunc('minute', now() - interval '60 minutes'),
                                      date_trunc('minute', now() - interval '75 seconds'),
                                      interval '1 minute') m
                 where not exists (select 1 from faultline.throughput_sampled s where s.minute = m)
             ),
             claimed as (
                 insert into faultline.throughput_sampled (minute)
                 select minute from due
                 on conflict do nothing
                 returning minute
             ),
             counts as (
                 insert into faultline.queue_throughput (minute, queue, succeeded, failed, cancelled,
                                                         wait_p50_ms, wait_p95_ms, run_p50_ms, run_p95_ms)
                 select c.minute, h.queue,
                        count(*) filter (where h.state = 'succeeded'),
                        count(*) filter (where h.state = 'failed'),
                        count(*) filter (where h.state = 'cancelled'),
                        percentile_cont(0.5) within group (order by h.wait_ms) filter (where h.state = 'succeeded'),
                        percentile_cont(0.95) within group (order by h.wait_ms) filter (where h.state = 'succeeded'),
                        percentile_cont(0.5) within group (order by h.run_ms) filter (where h.state = 'succeeded'),
                        percentile_cont(0.95) within group (order by h.run_ms) filter (where h.state = 'succeeded')
                 from claimed c
                 join lateral (
                     select queue, state,
                            greatest(0, extract(epoch from started_at - greatest(next_run_at, created_at)) * 1000) as wait_ms,
                            greatest(0, extract(epoch from finished_at - started_at) * 1000) as run_ms
                     from faultline.job_history
                     where finished_at >= c.minute and finished_at < c.minute + interval '1 minute'
                 ) h on true
                 group by c.minute, h.queue
                 on conflict do nothing
             ),
             forgotten as (
                 delete from faultline.queue_throughput
                 where minute < now() - make_interval(hours => $1)
             ),
             forgotten_marks as (
                 delete from faultline.throughput_sampled
                 where minute < now() - make_interval(hours => $1)
             )
             select count(*) from claimed",
        )
        .bind(KEEP_HOURS)
        .one_on(self)
        .await?;
        Ok(counted as u64)
    }

    /// The counted minutes since `minutes` ago, oldest first, every queue with a finished job.
    /// Minutes in which a queue finished nothing are absent.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn throughput(&self, minutes: u32) -> Result<Vec<ThroughputSample>, StoreError> {
        Ok(sqlx::query_as(
            "select minute, queue, succeeded, failed, cancelled,
                    wait_p50_ms, wait_p95_ms, run_p50_ms, run_p95_ms
             from faultline.queue_throughput
             where minute >= date_trunc('minute', now()) - make_interval(mins => $1)
             order by minute, queue",
        )
        .bind(minutes as i32)
        .all_on(self)
        .await?)
    }
}
