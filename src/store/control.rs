//! Transitions on request: cancel (queued | running | waiting → cancelled) and retry
//! (failed | cancelled → queued, or → waiting while dependencies are pending).

use super::dependencies::Parents;
use super::exec::OnStore;
use super::history::{archive_moved, shard};
use super::{Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{Job, JobId, JobState};

impl Store {
    /// Cancel a queued, waiting or running job (and every job waiting on it, SPEC §13). A running job's worker learns at its next heartbeat
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
    /// at once. Its error history is kept. A job with dependencies goes back to `waiting` while
    /// some have not succeeded yet.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::InvalidTransition`] when the job is queued,
    /// running, waiting or succeeded (nothing changed); [`StoreError::DependencyFailed`] when
    /// one of its dependencies failed or was cancelled (retry that one first);
    /// [`StoreError::Database`].
    pub async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        let depends_on: Option<Vec<JobId>> = sqlx::query_scalar(
            "select depends_on from faultline.job_history
             where id = $1 and state in ('failed', 'cancelled') and cardinality(depends_on) > 0",
        )
        .bind(id)
        .optional_on(self)
        .await?;
        if let Some(parents) = depends_on {
            return self.retry_dependent(id, &parents).await;
        }
        let job: Option<Job> = sqlx::query_as(RETRY)
            .bind(id)
            .bind(JOB_CHANNEL)
            .bind(shard())
            .bind(0i32)
            .optional_on(self)
            .await?;
        match job {
            Some(job) => Ok(job),
            None => Err(self.refusal(id, "retry").await?),
        }
    }

    /// [`Store::retry`] of a job with dependencies: its parents are locked and read (as an
    /// enqueue does, see `dependencies.rs`) in the transaction that moves it back.
    async fn retry_dependent(&self, id: JobId, parents: &[JobId]) -> Result<Job, StoreError> {
        let persistent = self.persistent();
        let mut tx = self.pool.begin().await?;
        let standing = Parents::read(&mut tx, parents, persistent)
            .await?
            .standing(parents);
        if let Some((dependency, state)) = standing.failed {
            return Err(StoreError::DependencyFailed {
                id,
                dependency,
                state,
            });
        }
        // A parent pruned from history finished long ago; it no longer holds the job back.
        let job: Option<Job> = sqlx::query_as(RETRY)
            .bind(id)
            .bind(JOB_CHANNEL)
            .bind(shard())
            .bind(standing.pending)
            .persistent(persistent)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
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

/// Out of history and back into the live table in one statement, its finished count going down
/// with it: `$1` the job, `$2` the channel to notify, `$3` the counter shard, `$4` its pending
/// dependencies (`waiting` when any). The result is not kept: a new attempt makes a new one.
const RETRY: &str = "with moved as (
                delete from faultline.job_history
                where id = $1 and state in ('failed', 'cancelled')
                returning *
            ),
            retried as (
                insert into faultline.jobs (id, queue, kind, payload, state, priority, attempts,
                    max_attempts, next_run_at, timeout_ms, lease_owner, lease_expires_at,
                    lease_token, needs_recovery, idempotency_key, request_fingerprint, last_error,
                    errors, created_at, started_at, finished_at, updated_at, concurrency_key,
                    depends_on, pending_dependencies, has_dependents)
                select id, queue, kind, payload,
                    case when $4 > 0 then 'waiting' else 'queued' end, priority, 0,
                    max_attempts, now(), timeout_ms, lease_owner, null, lease_token, false,
                    idempotency_key, request_fingerprint, last_error, errors, created_at,
                    started_at, null, now(), concurrency_key, depends_on, $4, has_dependents
                from moved
                returning *
            ),
            uncounted as (
                insert into faultline.queue_finished_counts as c (queue, state, shard, n)
                select queue, state, $3::int2, -count(*) from moved group by queue, state
                on conflict (queue, state, shard) do update set n = c.n + excluded.n
            )
            select retried.* from retried left join lateral (
                select pg_notify($2, retried.queue) where retried.state = 'queued'
            ) n on true";
