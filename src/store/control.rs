//! Transitions on request: cancel (queued | running → cancelled) and retry
//! (failed | cancelled → queued).

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
        // The state guard in WHERE makes this a compare-and-set: a job that finished a moment
        // earlier is left alone and reported as an invalid transition. The lease token is kept
        // so that the holder can be told "cancelled" rather than "superseded".
        let job: Option<Job> = sqlx::query_as(
            "update faultline.jobs
            set state = 'cancelled',
                lease_expires_at = null,
                finished_at = now(),
                updated_at = now()
            where id = $1 and state in ('queued', 'running')
            returning *",
        )
        .bind(id)
        .fetch_optional(&self.pool)
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
        let job: Option<Job> = sqlx::query_as(
            "with retried as (
                update faultline.jobs
                set state = 'queued',
                    attempts = 0,
                    next_run_at = now(),
                    needs_recovery = false,
                    finished_at = null,
                    updated_at = now()
                where id = $1 and state in ('failed', 'cancelled')
                returning *
            )
            select retried.* from retried, lateral (select pg_notify($2, retried.queue)) n",
        )
        .bind(id)
        .bind(JOB_CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        match job {
            Some(job) => Ok(job),
            None => Err(self.refusal(id, "retry").await?),
        }
    }

    /// The error for a request whose guarded update matched nothing.
    async fn refusal(&self, id: JobId, action: &'static str) -> Result<StoreError, StoreError> {
        let state: Option<JobState> =
            sqlx::query_scalar("select state from faultline.jobs where id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match state {
            None => StoreError::NotFound(id),
            Some(state) => StoreError::InvalidTransition { id, state, action },
        })
    }
}
