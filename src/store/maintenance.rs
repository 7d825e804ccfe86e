//! Maintenance transitions: take back expired leases (the reaper) and delete old finished jobs
//! (the pruner).

use std::time::Duration;

use super::{millis, Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{JobId, JobState};

/// A job whose expired lease was taken back, with the labels its metrics need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReapedJob {
    /// The job.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
}

/// What one [`Store::reap_expired`] pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReapOutcome {
    /// Expired leases whose jobs went back to `queued` (each counts as a lease expiration; the
    /// claim that picks one up again reports a recovery).
    pub requeued: Vec<ReapedJob>,
    /// Expired leases whose jobs had no attempt left and went to `failed`.
    pub failed: Vec<ReapedJob>,
}

impl ReapOutcome {
    /// Total leases taken back.
    pub fn total(&self) -> usize {
        self.requeued.len() + self.failed.len()
    }
}

impl Store {
    /// Take back up to `limit` jobs whose lease expired (`running`, `lease_expires_at < now()`
    /// on the database clock): back to `queued`, eligible at once, when attempts remain;
    /// otherwise to `failed`. Either way "lease expired" joins the job's error history, so a
    /// job never fails silently.
    ///
    /// Safe to run in every worker at once: rows are taken with `for update skip locked`. A
    /// heartbeat racing the reaper either extends the lease before the reaper locks the row (the
    /// expiry is checked again after the lock, so the row is left alone) or waits for the reaper
    /// and then finds its token fenced off. A job whose worker keeps heartbeating
    /// never matches, however long it runs.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn reap_expired(&self, limit: u32) -> Result<ReapOutcome, StoreError> {
        let rows: Vec<(JobId, String, String, JobState)> = sqlx::query_as(
            "with expired as (
                select id
                from faultline.jobs
                where state = 'running' and lease_expires_at < now()
                order by lease_expires_at
                limit $1
                for update skip locked
            ),
            reaped as (
                update faultline.jobs j
                set state = case when j.attempts < j.max_attempts then 'queued' else 'failed' end,
                    needs_recovery = j.attempts < j.max_attempts,
                    next_run_at = now(),
                    finished_at = case when j.attempts < j.max_attempts then null else now() end,
                    lease_expires_at = null,
                    last_error = format('lease expired: worker %s stopped heartbeating during attempt %s',
                                        j.lease_owner, j.attempts),
                    errors = j.errors || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempts, 'worker', j.lease_owner, 'at', now(),
                        'error', format('lease expired: worker %s stopped heartbeating during attempt %s',
                                        j.lease_owner, j.attempts),
                        'reason', 'lease_expired')),
                    updated_at = now()
                from expired
                -- Checked again after the lock: a heartbeat may have extended the lease between
                -- the scan and the lock.
                where j.id = expired.id and j.state = 'running' and j.lease_expires_at < now()
                returning j.id, j.queue, j.kind, j.state
            ),
            notified as (
                select pg_notify($2, q.queue)
                from (select distinct queue from reaped where state = 'queued') q
            )
            select id, queue, kind, state from reaped where (select count(*) from notified) >= 0",
        )
        .bind(i64::from(limit))
        .bind(JOB_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        let mut outcome = ReapOutcome::default();
        for (id, queue, kind, state) in rows {
            let job = ReapedJob { id, queue, kind };
            match state {
                JobState::Queued => outcome.requeued.push(job),
                _ => outcome.failed.push(job),
            }
        }
        Ok(outcome)
    }

    /// Delete up to `limit` finished jobs (succeeded, failed, cancelled) that finished more than
    /// `older_than` ago. Returns how many were deleted. Small batches with `skip locked` keep
    /// each delete short and never block the claim path. Once a job is pruned its idempotency
    /// key is free again.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn prune_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "with doomed as (
                select id
                from faultline.jobs
                where state in ('succeeded', 'failed', 'cancelled')
                  and finished_at < now() - $1 * interval '1 millisecond'
                order by finished_at
                limit $2
                for update skip locked
            )
            delete from faultline.jobs j using doomed where j.id = doomed.id",
        )
        .bind(millis(older_than))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}
