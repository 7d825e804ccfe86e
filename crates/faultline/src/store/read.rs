//! Reads: one job, a filtered listing, per-queue statistics.

use super::statement::OnStore;
use super::Store;
use crate::error::StoreError;
use crate::job::{Job, JobFilter, JobId, Page, QueueStats, RateLimit};

/// The largest page [`Store::list`] returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

impl Store {
    /// The job with `id`, with its error history.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Database`].
    pub async fn get(&self, id: JobId) -> Result<Job, StoreError> {
        // One statement, one snapshot: a job moving to history at this moment is seen in
        // exactly one of the two tables.
        let mut job: Job = sqlx::query_as("select * from faultline.all_jobs where id = $1")
            .bind(id)
            .optional_on(self)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        job.steps = self.steps(id).await?;
        if job.state == crate::job::JobState::Waiting {
            job.waiting_for = self.waiting_for(id).await?;
        }
        Ok(job)
    }

    /// The jobs that depend on `id` (live or in history), oldest first, at most
    /// 1,000. Empty for an unknown id.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn dependents(&self, id: JobId) -> Result<Vec<Job>, StoreError> {
        // `cardinality(depends_on) > 0` is the GIN indexes' predicate: it lets both be used.
        Ok(sqlx::query_as(
            "select * from faultline.all_jobs
             where cardinality(depends_on) > 0 and depends_on @> array[$1::uuid]
             order by id limit $2",
        )
        .bind(id)
        .bind(MAX_PAGE_SIZE as i64)
        .all_on(self)
        .await?)
    }

    /// Jobs matching `filter`, newest first, `limit` per page (1 to 1,000). Pass the returned
    /// `next_cursor` as `cursor` for the next page. Keyset pagination on the time-ordered id:
    /// pages stay stable while jobs are added, and deep pages cost no more than the first.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a limit out of range; [`StoreError::Database`].
    pub async fn list(
        &self,
        filter: &JobFilter,
        cursor: Option<JobId>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        self.list_page(filter, cursor, limit, true).await
    }

    /// [`Store::list`]; without `bulk`, every job's payload and result read as JSON `null` and
    /// its error history as empty, so that a listing of jobs with megabyte payloads reads and
    /// sends none of them (the API's default summaries).
    pub(crate) async fn list_page(
        &self,
        filter: &JobFilter,
        cursor: Option<JobId>,
        limit: u32,
        bulk: bool,
    ) -> Result<Page, StoreError> {
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}, got {limit}"),
            ));
        }
        let sql = format!(
            "select id, queue, kind, priority, state, attempts, max_attempts, next_run_at,
                   timeout_ms, lease_owner, lease_expires_at, lease_token, idempotency_key,
                   last_error, created_at, started_at, finished_at, updated_at, concurrency_key,
                   depends_on, pending_dependencies, unique_key, unique_period_ms, traceparent,
                   case when $9 then payload else 'null'::json end as payload,
                   case when $9 then result end as result,
                   case when $9 then errors else '[]'::jsonb end as errors
            from faultline.all_jobs
            where {FILTERED} and ($7::uuid is null or id < $7)
            order by id desc
            limit $8"
        );
        let mut jobs: Vec<Job> = bind_filter(sqlx::query_as(&sql), filter)
            .bind(cursor)
            .bind(i64::from(limit) + 1)
            .bind(bulk)
            .all_on(self)
            .await?;
        let next_cursor = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|job| job.id)
        } else {
            None
        };
        Ok(Page { jobs, next_cursor })
    }

    /// The planner's estimate of the live table's rows (`pg_class.reltuples`, kept by vacuum
    /// and analyze): a catalog read, whatever the table's size; 0 before the first analyze.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn live_rows_estimate(&self) -> Result<u64, StoreError> {
        let rows: f32 = sqlx::query_scalar(
            "select greatest(reltuples, 0) from pg_class where oid = 'faultline.jobs'::regclass",
        )
        .one_on(self)
        .await?;
        Ok(rows as u64)
    }

    /// Per queue: jobs by state, and how long the oldest eligible job has waited.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows: Vec<StatsRow> = sqlx::query_as(QUEUE_STATS).all_on(self).await?;
        Ok(rows.into_iter().map(StatsRow::into_stats).collect())
    }
}

/// The rows of `faultline.all_jobs` a [`JobFilter`] matches, as binds `$1` to `$6` (in the
/// order [`bind_filter`] binds them); a filter left `None` matches everything.
pub(super) const FILTERED: &str = "($1::text is null or state = $1)
              and ($2::text is null or queue = $2)
              and ($3::text is null or kind = $3)
              and ($4::text is null or idempotency_key = $4)
              and ($5::timestamptz is null or created_at >= $5)
              and ($6::timestamptz is null or created_at < $6)";

/// `query` with `filter` bound as `$1` to `$6` of [`FILTERED`].
pub(super) fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q JobFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(filter.state)
        .bind(filter.queue.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.idempotency_key.as_deref())
        .bind(filter.created_after)
        .bind(filter.created_before)
}

/// The statement of [`Store::queue_stats`]: one row per queue with jobs or settings, by name.
// Live jobs are not counted row by row (1.6 s with 10,000,000 queued): their counts
// are `live_counts` plus the deltas not yet folded into it (migration `live_counts`),
// read in this one snapshot, so exact. The oldest eligible job of a queue is the first
// of one of its lanes: one index probe per lane from the lane's newest mark (under a
// held horizon the entries below the mark are dead; see the migration `lane_marks`).
// A job is eligible exactly when its lane position (`eligible_at`) has passed, which is
// also when it entered its lane (its enqueue, or its run_at or backoff when later).
// Finished ones come from the counters that the moves to and from history keep.
const QUEUE_STATS: &str = "with counts as (
                select queue, state, n from faultline.live_counts
                union all
                select queue, state, n from faultline.live_count_deltas
            ),
            summed as (
                select queue,
                       coalesce(sum(n) filter (where state = 'queued'), 0)::int8 as queued,
                       coalesce(sum(n) filter (where state = 'running'), 0)::int8 as running,
                       coalesce(sum(n) filter (where state = 'waiting'), 0)::int8 as waiting
                from counts
                group by queue
            ),
            firsts as (
                select l.queue, min(f.e) as first
                from faultline.lanes l
                cross join lateral (
                    select coalesce(j.eligible_at, j.next_run_at) as e
                    from faultline.jobs j
                    where j.state = 'queued'
                      and j.queue = l.queue
                      and j.priority = l.priority
                      and coalesce(j.eligible_at, j.next_run_at) >= coalesce(
                          (select m.low from faultline.lane_marks m
                           where m.queue = l.queue and m.priority = l.priority
                           order by m.id desc limit 1), '-infinity')
                      and coalesce(j.eligible_at, j.next_run_at) <= now()
                      and j.next_run_at <= now()
                    order by coalesce(j.eligible_at, j.next_run_at)
                    limit 1
                ) f
                group by l.queue
            ),
            live as (
                select s.queue, s.queued, s.running, s.waiting,
                       coalesce(extract(epoch from now() - f.first), 0)::float8 as oldest
                from summed s left join firsts f on f.queue = s.queue
            ),
            finished as (
                select queue,
                       coalesce(sum(n) filter (where state = 'succeeded'), 0)::int8 as succeeded,
                       coalesce(sum(n) filter (where state = 'failed'), 0)::int8 as failed,
                       coalesce(sum(n) filter (where state = 'cancelled'), 0)::int8 as cancelled
                from faultline.queue_finished_counts
                group by queue
            ),
            counted as (
                select coalesce(l.queue, f.queue) as queue, coalesce(l.queued, 0) as queued,
                       coalesce(l.running, 0) as running, coalesce(l.waiting, 0) as waiting,
                       coalesce(f.succeeded, 0) as succeeded,
                       coalesce(f.failed, 0) as failed, coalesce(f.cancelled, 0) as cancelled,
                       coalesce(l.oldest, 0) as oldest
                from live l full join finished f on f.queue = l.queue
                where coalesce(l.queued, 0) + coalesce(l.running, 0) + coalesce(l.waiting, 0)
                      + coalesce(f.succeeded, 0)
                      + coalesce(f.failed, 0) + coalesce(f.cancelled, 0) > 0
            )
            -- Queues that only have settings (no jobs yet) are listed too.
            select coalesce(c.queue, s.queue) as queue, coalesce(c.queued, 0) as queued,
                   coalesce(c.running, 0) as running, coalesce(c.waiting, 0) as waiting,
                   coalesce(c.succeeded, 0) as succeeded,
                   coalesce(c.failed, 0) as failed, coalesce(c.cancelled, 0) as cancelled,
                   coalesce(c.oldest, 0) as oldest, coalesce(s.paused, false) as paused,
                   s.concurrency_limit, s.rate_count, s.rate_period_ms, s.key_concurrency
            from counted c full join faultline.queue_settings s on s.queue = c.queue
            order by 1";

/// One row of [`Store::queue_stats`]'s statement.
#[derive(sqlx::FromRow)]
struct StatsRow {
    queue: String,
    queued: i64,
    running: i64,
    waiting: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    oldest: f64,
    paused: bool,
    concurrency_limit: Option<i32>,
    rate_count: Option<i32>,
    rate_period_ms: Option<i32>,
    key_concurrency: Option<i32>,
}

impl StatsRow {
    /// The row as the caller sees it: a negative age (clock skew) reads 0, and the rate limit
    /// is set only when both of its columns are.
    fn into_stats(self) -> QueueStats {
        QueueStats {
            queue: self.queue,
            queued: self.queued,
            running: self.running,
            waiting: self.waiting,
            succeeded: self.succeeded,
            failed: self.failed,
            cancelled: self.cancelled,
            oldest_eligible_age_seconds: self.oldest.max(0.0),
            paused: self.paused,
            concurrency_limit: self.concurrency_limit,
            rate_limit: self
                .rate_count
                .zip(self.rate_period_ms)
                .map(|(count, period_ms)| RateLimit { count, period_ms }),
            key_concurrency: self.key_concurrency,
        }
    }
}
