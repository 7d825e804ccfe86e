//! Transitions on request: cancel (queued | running | waiting → cancelled) and retry
//! (failed | cancelled → queued, or → waiting while dependencies are pending).

use super::dependencies::{record_edges, Parents};
use super::history::{archive_moved, carried_columns, job_fields, shard};
use super::statement::OnStore;
use super::{Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{Job, JobId, JobState};

impl Store {
    /// Cancel a queued, waiting or running job (and every job waiting on it, docs/library.md). A running job's worker learns at its next heartbeat
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
            select ",
            job_fields!("0"),
            " from archived"
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
    /// [`StoreError::UniqueKeyHeld`] when another live job holds its uniqueness key;
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
            .await
            .map_err(|e| unique_refusal(id, e))?;
        match job {
            Some(job) => Ok(job),
            None => Err(self.refusal(id, "retry").await?),
        }
    }

    /// [`Store::retry`] of a job with dependencies: its parents are locked and read (as an
    /// enqueue does, see `dependencies.rs`) in the transaction that moves it back.
    async fn retry_dependent(&self, id: JobId, parents: &[JobId]) -> Result<Job, StoreError> {
        let persistent = self.uses_prepared_statements();
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
            .await
            .map_err(|e| unique_refusal(id, e))?;
        if job.as_ref().is_some_and(|j| j.state == JobState::Waiting) {
            record_edges(&mut tx, parents, &vec![id; parents.len()], persistent).await?;
        }
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

/// A retry refused by the live table's uniqueness index (scope `active`): another live job
/// holds the job's key, and two live jobs must never share it. The statement changed nothing
/// (one statement, rolled back whole).
fn unique_refusal(id: JobId, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.constraint() == Some("jobs_unique_active_idx") => {
            StoreError::UniqueKeyHeld { id }
        }
        _ => StoreError::Database(error),
    }
}

/// Out of history and back into the live table in one statement, its finished count going down
/// with it: `$1` the job, `$2` the channel to notify, `$3` the counter shard, `$4` its pending
/// dependencies (`waiting` when any). The result is not kept: a new attempt makes a new one.
const RETRY: &str = concat!(
    "with moved as (
                delete from faultline.job_history
                where id = $1 and state in ('failed', 'cancelled')
                returning *
            ),
            retried as (
                insert into faultline.jobs (",
    carried_columns!(),
    ", state, attempts, next_run_at, lease_expires_at, needs_recovery, last_error, errors,
                    finished_at, updated_at, pending_dependencies, eligible_at)
                select ",
    carried_columns!(),
    ", case when $4 > 0 then 'waiting' else 'queued' end, 0, now(), null, false, last_error,
                    errors, null, now(), $4,
                    case when $4 = 0 then clock_timestamp() end
                from moved
                returning *
            ),
            -- Its lane is known to the claims (a job from before lanes may be the first of it).
            noted_lanes as (
                insert into faultline.lanes (queue, priority)
                select queue, priority from moved
                on conflict do nothing
            ),
            uncounted as (
                insert into faultline.queue_finished_counts as c (queue, state, shard, n)
                select queue, state, $3::int2, -count(*) from moved group by queue, state
                on conflict (queue, state, shard) do update set n = c.n + excluded.n
            )
            select retried.* from retried left join lateral (
                select pg_notify($2, retried.queue) where retried.state = 'queued'
            ) n on true"
);
