//! Transitions on request: cancel (queued | running → cancelled) and retry
//! (failed | cancelled → queued).

use super::exec::OnStore;
use super::history::{archive_moved, shard};
use super::{Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{Job, JobId, JobState};

impl Store {
    /// Cancel a queued or running job. A running job's worker learns at its next heartbeat
    /// (which reports [`crate::LeaseLostReason::Cancelled`]) and its late result is rejected,
    /// because every report requires `state = 'running'`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::InvalidTransition`] when the job is already
    /// finished (nothing changed); [`StoreError::Database`].
    pub async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
        // Only live jobs (queued or running) are in `faultline.jobs`, so the delete by id is
        // the compare-and-set: a job that finished a moment earlier has left the table and is
        // reported as an invalid transition. The lease token is kept so that the holder can be
        // told "cancelled" rather than "superseded".
        let job: Option<Job> = sqlx::query_as(concat!(
            "with moved as (
                delete from faultline.jobs where id = $1 returning *
            ),
            ",
            archive_moved!("cancelled", "last_error", "errors", "$2"),
            "
            select * from archived"
        ))
        .bind(id)
        .bind(shard())
        .optional_on(self)
        .await?;
        match job {
            Some(job) => Ok(job),
            None => Err(self.refusal(id, "cancel").await?),
        }
    }

    /// Re-queue a failed or cancelled job with a fresh attempt budget (`attempts = 0`), eligible
    /// at once. Its error history is kept.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::InvalidTransition`] when the job is queued,
    /// running or succeeded (nothing changed); [`StoreError::Database`].
    pub async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        // Out of history and back into the live table in one statement; its finished count
        // goes down with it.
        let job: Option<Job> = sqlx::query_as(
            "with moved as (
                delete from faultline.job_history
                where id = $1 and state in ('failed', 'cancelled')
                returning *
            ),
            retried as (
                insert into faultline.jobs (id, queue, kind, payload, state, priority, attempts,
                    max_attempts, next_run_at, timeout_ms, lease_owner, lease_expires_at,
                    lease_token, needs_recovery, idempotency_key, request_fingerprint, last_error,
                    errors, created_at, started_at, finished_at, updated_at, concurrency_key)
                select id, queue, kind, payload, 'queued', priority, 0, max_attempts, now(),
                    timeout_ms, lease_owner, null, lease_token, false, idempotency_key,
                    request_fingerprint, last_error, errors, created_at, started_at, null, now(),
                    concurrency_key
                from moved
                returning *
            ),
            uncounted as (
                insert into faultline.queue_finished_counts as c (queue, state, shard, n)
                select queue, state, $3::int2, -count(*) from moved group by queue, state
                on conflict (queue, state, shard) do update set n = c.n + excluded.n
            )
            select retried.* from retried, lateral (select pg_notify($2, retried.queue)) n",
        )
        .bind(id)
        .bind(JOB_CHANNEL)
        .bind(shard())
        .optional_on(self)
        .await?;
        match job {
            Some(job) => Ok(job),
            None => Err(self.refusal(id, "retry").await?),
        }
    }

    /// The error for a request whose guarded update matched nothing.
    async fn refusal(&self, id: JobId, action: &'static str) -> Result<StoreError, StoreError> {
        let state: Option<JobState> =
            sqlx::query_scalar("select state from faultline.all_jobs where id = $1")
                .bind(id)
                .optional_on(self)
                .await?;
        Ok(match state {
            None => StoreError::NotFound(id),
            Some(state) => StoreError::InvalidTransition { id, state, action },
        })
    }
}
