//! Taking back expired leases (what the reaper runs): each expired job is retried, or failed
//! once its attempts are spent, with the expiry in its history.

use super::history::{archive_moved, shard};
use super::statement::OnStore;
use super::{Store, JOB_CHANNEL};
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
    /// Jobs parked for a signal whose wait timed out, queued to run again (the reaper's pass
    /// runs [`Store::wake_timed_out_waits`] too).
    pub woken: u64,
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
        let rows: Vec<(JobId, String, String, JobState)> = sqlx::query_as(REAP_EXPIRED)
            .bind(i64::from(limit))
            .bind(JOB_CHANNEL)
            .bind(shard())
            .all_on(self)
            .await?;
        Ok(ReapOutcome::of(rows))
    }
}

impl ReapOutcome {
    /// The outcome of the reaped `rows` (id, queue, kind, new state): a job now queued was
    /// re-queued, any other failed.
    fn of(rows: Vec<(JobId, String, String, JobState)>) -> Self {
        let mut outcome = ReapOutcome::default();
        for (id, queue, kind, state) in rows {
            let job = ReapedJob { id, queue, kind };
            match state {
                JobState::Queued => outcome.requeued.push(job),
                _ => outcome.failed.push(job),
            }
        }
        outcome
    }
}

/// Take back expired leases (see [`Store::reap_expired`] for why it is safe): `$1` the most
/// jobs, `$2` the wake-up channel, `$3` the counter shard. One row (id, queue, kind, new state)
/// per job taken back.
const REAP_EXPIRED: &str = concat!(
    "with expired as (
                select id, attempts < max_attempts as again
                from faultline.jobs
                where state = 'running' and lease_expires_at < now()
                order by lease_expires_at
                limit $1
                for update skip locked
            ),
            requeued as (
                update faultline.jobs j
                set state = 'queued',
                    needs_recovery = true,
                    next_run_at = now(),
                    eligible_at = clock_timestamp(),
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
                where j.id = expired.id and expired.again and j.lease_expires_at < now()
                returning j.id, j.queue, j.kind, j.state
            ),
            moved as (
                delete from faultline.jobs j using expired
                where j.id = expired.id and not expired.again and j.lease_expires_at < now()
                returning j.*
            ),
            ",
    archive_moved!(
        "failed",
        "format('lease expired: worker %s stopped heartbeating during attempt %s', lease_owner, attempts)",
        "errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'worker', lease_owner, 'at', now(), 'error', format('lease expired: worker %s stopped heartbeating during attempt %s', lease_owner, attempts), 'reason', 'lease_expired'))",
        "$3"
    ),
    ",
            notified as (
                select pg_notify($2, q.queue)
                from (select distinct queue from requeued) q
            )
            select id, queue, kind, state from requeued where (select count(*) from notified) >= 0
            union all
            select id, queue, kind, state from archived"
);
