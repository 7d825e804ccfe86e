//! The transitions of a running job, each fenced by the lease token of its claim
//! ([`super::claim`]): heartbeat (running → running), complete (→ succeeded), fail an attempt
//! (→ queued with backoff, or → failed), release (→ queued, the attempt handed back).
//!
//! ## Fenced batch reports
//!
//! How the batch reports (heartbeat, complete) reach and fence their rows:
//!
//! - **Through the primary key, whatever the statistics say.** `id = any($ids)` is an index
//!   condition on the primary key: each row is found by a direct probe. An earlier form joined
//!   the batch with the table, and with statistics gathered while `running` was rare the planner
//!   hash-joined the batch with every running row: O(running) per report. At a 10M backlog that
//!   made reports take seconds, leases expire and the worker spiral (see BENCHMARKS.md).
//! - **`running` as `lease_expires_at is not null`.** The CHECK `jobs_lease_check` makes the
//!   two equivalent, but only `state = 'running'` matches the partial indexes of running jobs,
//!   and a planner that believes running jobs rare (statistics from a quiet hour) picks such an
//!   index and filters every running row by id. Written as the lease's presence, the guard
//!   leaves the primary key as the only index that fits. The single-lease reports
//!   (`fail_attempt`, `release`) use the same guard for the same reason.
//! - **Fenced exactly, per lease.** `lease_token = any($tokens)`: tokens come from one sequence,
//!   so a token names exactly one claim of one job; a row whose current token is in the list
//!   holds exactly the lease that carried it. A batch with a stale and the live lease of one
//!   job matches the live one only.
//! - **Locked in id order.** The ids are sorted before binding and the index scan visits them in
//!   order, so two overlapping batches (a worker's heartbeat and its completions) cannot
//!   deadlock. A stale lease matches no row, so it locks nothing.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::history::{archive_moved, job_fields, shard};
use super::statement::OnStore;
use super::{millis, Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{Job, JobId, JobState};
use crate::lease::{Lease, LeaseLostReason};
use crate::payload::Payload;

/// What [`Store::fail_attempt`] did with the job.
#[derive(Clone, Debug, PartialEq)]
pub enum FailOutcome {
    /// Re-queued; eligible again at `job.next_run_at`.
    Retrying(Job),
    /// Terminal `failed`: attempts spent, or the error was not retryable.
    Failed(Job),
}

impl FailOutcome {
    /// The job after the transition.
    pub fn job(&self) -> &Job {
        match self {
            FailOutcome::Retrying(job) | FailOutcome::Failed(job) => job,
        }
    }
}

/// Longest error text kept per attempt; a handler that fails with a megabyte of text must not
/// bloat the row (the error history holds one entry per attempt).
const MAX_ERROR_LEN: usize = 4096;
impl Store {
    /// Extend `lease` to `now() + ttl`. Returns the new expiry.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds (the reason says whether the job
    /// was cancelled, so the handler should stop); nothing changed. [`StoreError::Database`].
    pub async fn heartbeat(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut results = self
            .heartbeat_batch(std::slice::from_ref(lease), ttl)
            .await?;
        results.pop().expect("one result per lease")
    }

    /// Extend every lease in `leases` in one statement, fenced per lease. Results are in input
    /// order: the new expiry, or [`StoreError::LeaseLost`] for that lease alone.
    ///
    /// # Errors
    /// The outer error is [`StoreError::Database`]; nothing changed.
    pub async fn heartbeat_batch(
        &self,
        leases: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>, StoreError>>, StoreError> {
        let (ids, tokens) = unzip_leases(leases);
        // Found by `id = any(…)`, fenced by `lease_token = any(…)`: see "Fenced batch reports"
        // in the module docs.
        let rows: Vec<(JobId, i64, DateTime<Utc>)> = sqlx::query_as(HEARTBEAT_BATCH)
            .bind(&ids)
            .bind(&tokens)
            .bind(millis(ttl))
            .all_on(self)
            .await?;
        let extended: HashMap<(JobId, i64), DateTime<Utc>> = rows
            .into_iter()
            .map(|(id, token, expires)| ((id, token), expires))
            .collect();
        self.fenced_results(leases, extended).await
    }

    /// Mark the job of `lease` succeeded.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds: the result is not recorded and
    /// nothing changed (the caller counts a stale completion). [`StoreError::Database`].
    pub async fn complete(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut results = self.complete_batch(std::slice::from_ref(lease)).await?;
        results.pop().expect("one result per lease")
    }

    /// Mark the job of `lease` succeeded with `result` (docs/library.md), kept with the job and
    /// returned by [`Store::get`]; JSON `null` records no result.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming `result` when it is larger than
    /// [`StoreConfig::max_result_bytes`](super::StoreConfig) (nothing changed);
    /// [`StoreError::LeaseLost`]; [`StoreError::Database`].
    pub async fn complete_with_result(
        &self,
        lease: &Lease,
        result: impl Into<Payload>,
    ) -> Result<(), StoreError> {
        let text = self.result_text(&result.into())?;
        let mut results = self.complete_many(&[(lease, text.as_deref())]).await?;
        results.pop().expect("one result per lease")
    }

    /// Mark the jobs of many leases succeeded in one statement, fenced per lease. Results are in
    /// input order.
    ///
    /// # Errors
    /// The outer error is [`StoreError::Database`] (nothing changed); an inner
    /// [`StoreError::LeaseLost`] concerns that lease alone.
    pub async fn complete_batch(
        &self,
        leases: &[Lease],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let items: Vec<(&Lease, Option<&str>)> = leases.iter().map(|l| (l, None)).collect();
        self.complete_many(&items).await
    }

    /// [`Store::complete_batch`] with each job's result as JSON text (already checked by
    /// [`Store::result_text`]).
    pub(crate) async fn complete_many(
        &self,
        items: &[(&Lease, Option<&str>)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let leases: Vec<Lease> = items.iter().map(|(l, _)| (*l).clone()).collect();
        let (ids, tokens) = unzip_leases(&leases);
        let (result_tokens, results): (Vec<i64>, Vec<&str>) = items
            .iter()
            .filter_map(|(l, r)| Some((l.token, (*r)?)))
            .unzip();
        // See the module docs ("Fenced batch reports").
        let rows: Vec<(JobId, i64)> = sqlx::query_as(COMPLETE_BATCH)
            .bind(&ids)
            .bind(&tokens)
            .bind(shard())
            .bind(&result_tokens)
            .bind(&results)
            .all_on(self)
            .await?;
        let done: HashMap<(JobId, i64), ()> = rows.into_iter().map(|key| (key, ())).collect();
        self.fenced_results(&leases, done).await
    }

    /// A handler's result as the JSON text stored (`json`, so it comes back as written), or
    /// `None` for JSON `null` (no result).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming `result` when it is over
    /// [`StoreConfig::max_result_bytes`](super::StoreConfig) or cannot be written as JSON.
    pub fn result_text(&self, result: &Payload) -> Result<Option<String>, StoreError> {
        if result.is_null() {
            return Ok(None);
        }
        let text = result.get();
        result
            .check()
            .map_err(|e| StoreError::invalid("result", format!("is not valid JSON: {e}")))?;
        let limit = self.config.max_result_bytes;
        if text.len() > limit {
            return Err(StoreError::invalid(
                "result",
                format!(
                    "is {} bytes; at most {limit} allowed (max_result_bytes); the result was \
                     not recorded",
                    text.len()
                ),
            ));
        }
        Ok(Some(text.to_owned()))
    }

    /// Mark the job of `lease` succeeded with `result` (JSON `null` for none) inside the
    /// caller's transaction (docs/library.md), so that the caller's own writes in it and the success
    /// commit together or not at all. Handlers use
    /// [`crate::worker::JobContext::complete_and_commit`], which also commits.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds: nothing was changed by this
    /// call, and the caller must roll back (its writes were made without a lease).
    /// [`StoreError::Invalid`] for a result over the limit (nothing changed).
    /// [`StoreError::Database`].
    pub async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        lease: &Lease,
        result: impl Into<Payload>,
    ) -> Result<(), StoreError> {
        let text = self.result_text(&result.into())?;
        let (ids, tokens) = unzip_leases(std::slice::from_ref(lease));
        let (result_tokens, results): (Vec<i64>, Vec<&str>) = text
            .as_deref()
            .map(|t| (lease.token, t))
            .into_iter()
            .unzip();
        let done: Vec<(JobId, i64)> = sqlx::query_as(COMPLETE_BATCH)
            .bind(&ids)
            .bind(&tokens)
            .bind(shard())
            .bind(&result_tokens)
            .bind(&results)
            .persistent(self.uses_prepared_statements())
            .fetch_all(conn)
            .await?;
        if done.is_empty() {
            return Err(self.lease_lost(lease).await?);
        }
        Ok(())
    }

    /// Record a failed attempt under `lease`. The error joins the job's history (attempt,
    /// worker, time, text). If `retryable` and attempts remain, the job is re-queued with
    /// `next_run_at = now() + backoff(attempt)`; otherwise it is `failed` for good.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds (nothing changed);
    /// [`StoreError::Database`].
    pub async fn fail_attempt(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
    ) -> Result<FailOutcome, StoreError> {
        self.fail_attempt_after(lease, error, retryable, None).await
    }

    /// [`Store::fail_attempt`] with the retry's delay given (`None`: the store's backoff for
    /// this attempt): a handler's `JobError::retry_after`, a type's own backoff. The delay is
    /// capped like every interval the store writes (100 years).
    ///
    /// # Errors
    /// As [`Store::fail_attempt`].
    pub async fn fail_attempt_after(
        &self,
        lease: &Lease,
        error: &str,
        retryable: bool,
        delay: Option<Duration>,
    ) -> Result<FailOutcome, StoreError> {
        let attempt = u32::try_from(lease.attempt).unwrap_or(1);
        let delay = delay.unwrap_or_else(|| self.config.backoff.delay(attempt));
        // Handler errors are outside text: NUL would make Postgres refuse the whole report.
        let error = crate::text::storable(error);
        let error = crate::text::truncate(&error, MAX_ERROR_LEN);
        let job: Option<Job> = sqlx::query_as(FAIL_ATTEMPT)
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(error)
            .bind(retryable)
            .bind(millis(delay))
            .bind(shard())
            .optional_on(self)
            .await?;
        match job {
            Some(job) if job.state == JobState::Queued => Ok(FailOutcome::Retrying(job)),
            Some(job) => Ok(FailOutcome::Failed(job)),
            None => Err(self.lease_lost(lease).await?),
        }
    }

    /// Put the job of `lease` back to run again after `delay` without spending an attempt (a
    /// handler's `JobError::snooze`): like [`Store::release`], but eligible only once the delay
    /// has passed. Fenced like every report: a stale lease changes nothing.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds (nothing changed);
    /// [`StoreError::Database`].
    pub async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<(), StoreError> {
        // As release: attempts - 1 stays >= 0 (a running job was claimed); `eligible_at` no
        // earlier than the statement's real clock, as every move back to queued writes it (the
        // lanes' marks rely on it).
        let snoozed: Option<(JobId,)> = sqlx::query_as(
            "update faultline.jobs
             set state = 'queued',
                 attempts = attempts - 1,
                 next_run_at = now() + $3 * interval '1 millisecond',
                 eligible_at = greatest(now() + $3 * interval '1 millisecond', clock_timestamp()),
                 lease_expires_at = null,
                 updated_at = now()
             where id = $1 and lease_token = $2 and lease_expires_at is not null
             returning id",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(millis(delay))
        .optional_on(self)
        .await?;
        match snoozed {
            Some(_) => Ok(()),
            None => Err(self.lease_lost(lease).await?),
        }
    }

    /// Hand the job of `lease` back unfinished (graceful shutdown): it becomes eligible at once
    /// and the attempt is not counted against its budget.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease no longer holds (nothing changed);
    /// [`StoreError::Database`].
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        // attempts - 1 stays >= 0: a running job has been claimed, so attempts >= 1.
        let released: Option<(JobId,)> = sqlx::query_as(
            "with released as (
                update faultline.jobs
                set state = 'queued',
                    attempts = attempts - 1,
                    next_run_at = now(),
                    eligible_at = clock_timestamp(),
                    lease_expires_at = null,
                    updated_at = now()
                where id = $1 and lease_token = $2 and lease_expires_at is not null
                returning id, queue
            )
            select id from released, lateral (select pg_notify($3, released.queue)) n",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(JOB_CHANNEL)
        .optional_on(self)
        .await?;
        match released {
            Some(_) => Ok(()),
            None => Err(self.lease_lost(lease).await?),
        }
    }

    /// Turn per-lease success (`done` holds the (id, token) pairs whose guarded update matched)
    /// into results in input order, classifying each rejected lease with one extra query (only
    /// when some lease was rejected, which is rare). Keyed by token as well as id: a batch may
    /// hold a stale lease and the live lease of the same job, and only the live one succeeded.
    async fn fenced_results<T: Clone>(
        &self,
        leases: &[Lease],
        done: HashMap<(JobId, i64), T>,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let lost: Vec<&Lease> = leases
            .iter()
            .filter(|l| !done.contains_key(&(l.job_id, l.token)))
            .collect();
        let reasons = if lost.is_empty() {
            HashMap::new()
        } else {
            self.lost_reasons(&lost).await?
        };
        Ok(leases
            .iter()
            .map(|lease| match done.get(&(lease.job_id, lease.token)) {
                Some(value) => Ok(value.clone()),
                None => Err(StoreError::LeaseLost {
                    id: lease.job_id,
                    reason: reasons
                        .get(&(lease.job_id, lease.token))
                        .copied()
                        .unwrap_or(LeaseLostReason::Gone),
                }),
            })
            .collect())
    }

    pub(super) async fn lease_lost(&self, lease: &Lease) -> Result<StoreError, StoreError> {
        let reasons = self.lost_reasons(&[lease]).await?;
        Ok(StoreError::LeaseLost {
            id: lease.job_id,
            reason: reasons
                .get(&(lease.job_id, lease.token))
                .copied()
                .unwrap_or(LeaseLostReason::Gone),
        })
    }

    /// Why each of `leases` was rejected: cancelled while this lease held the job (the token is
    /// kept on cancel for exactly this), gone, or superseded by anything else.
    async fn lost_reasons(
        &self,
        leases: &[&Lease],
    ) -> Result<HashMap<(JobId, i64), LeaseLostReason>, StoreError> {
        let ids: Vec<JobId> = leases.iter().map(|l| l.job_id).collect();
        let rows: Vec<(JobId, JobState, Option<i64>)> = sqlx::query_as(
            "select id, state, lease_token from faultline.all_jobs where id = any($1)",
        )
        .bind(&ids)
        .all_on(self)
        .await?;
        let current: HashMap<JobId, (JobState, Option<i64>)> = rows
            .into_iter()
            .map(|(id, state, token)| (id, (state, token)))
            .collect();
        Ok(leases
            .iter()
            .map(|lease| {
                let reason = match current.get(&lease.job_id) {
                    None => LeaseLostReason::Gone,
                    Some((JobState::Cancelled, Some(token))) if *token == lease.token => {
                        LeaseLostReason::Cancelled
                    }
                    Some(_) => LeaseLostReason::Superseded,
                };
                ((lease.job_id, lease.token), reason)
            })
            .collect())
    }
}

/// Extend many leases: `$1` ids, `$2` tokens, `$3` the TTL in milliseconds. See
/// the module docs ("Fenced batch reports").
pub const HEARTBEAT_BATCH: &str = "update faultline.jobs j
            set lease_expires_at = now() + $3 * interval '1 millisecond',
                updated_at = now()
            where j.id = any($1::uuid[]) and j.lease_token = any($2::int8[])
              and j.lease_expires_at is not null
            returning j.id, j.lease_token, j.lease_expires_at";

/// Complete many leases: `$1` ids, `$2` tokens, `$3` the counter shard, `$4`/`$5` the tokens
/// that carry a result and their results (JSON text). The jobs move to history as `succeeded`
/// (see `history.rs`). See the module docs ("Fenced batch reports").
pub const COMPLETE_BATCH: &str = concat!(
    "with gone as (
    delete from faultline.jobs j
    where j.id = any($1::uuid[]) and j.lease_token = any($2::int8[])
      and j.lease_expires_at is not null
    returning j.*
),
-- Results by token (a token names one lease); most batches carry none. A subquery, not a
-- join, so the plan stays a probe of the primary key (see the test store::hot_path).
moved as (
    select gone.*,
           (select r.result from unnest($4::int8[], $5::text[]) as r(token, result)
            where r.token = gone.lease_token limit 1) as new_result
    from gone
),
",
    archive_moved!(
        "succeeded",
        "last_error",
        "errors",
        "$3",
        "new_result::json"
    ),
    "
select id, lease_token from archived"
);

/// Record a failed attempt: `$1` id, `$2` token, `$3` the error, `$4` whether it is retryable,
/// `$5` the backoff in milliseconds, `$6` the counter shard. One row: the job re-queued or
/// moved to history as `failed`; none when the lease no longer holds.
// `attempts` was counted at claim time, so `attempts < max_attempts` means another
// attempt is left; the history entry takes its attempt number and worker from the row,
// which the token guard proves is this lease's.
// One statement, two exclusive outcomes on the locked row: re-queued in place when
// retryable with attempts left, else moved to history as `failed`.
const FAIL_ATTEMPT: &str = concat!(
    "with target as (
                select id, ($4 and attempts < max_attempts) as again
                from faultline.jobs
                where id = $1 and lease_token = $2 and lease_expires_at is not null
                for update
            ),
            retried as (
                update faultline.jobs j
                set state = 'queued',
                    next_run_at = now() + $5 * interval '1 millisecond',
                    eligible_at = greatest(now() + $5 * interval '1 millisecond',
                                           clock_timestamp()),
                    lease_expires_at = null,
                    last_error = $3,
                    errors = j.errors || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempts, 'worker', j.lease_owner, 'at', now(),
                        'error', $3::text, 'reason', 'error',
                        'retry_at', now() + $5 * interval '1 millisecond')),
                    updated_at = now()
                from target t
                where j.id = t.id and t.again
                returning j.*
            ),
            moved as (
                delete from faultline.jobs j using target t
                where j.id = t.id and not t.again
                returning j.*
            ),
            ",
    archive_moved!(
        "failed",
        "$3",
        "errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'worker', lease_owner, 'at', now(), 'error', $3::text, 'reason', 'error', 'retry_at', null))",
        "$6"
    ),
    "
            select ",
    job_fields!("pending_dependencies"),
    " from retried
            union all
            select ",
    job_fields!("0"),
    " from archived"
);

/// The leases' ids (sorted: see "Fenced batch reports" in the module docs) and tokens.
fn unzip_leases(leases: &[Lease]) -> (Vec<JobId>, Vec<i64>) {
    let mut ids: Vec<JobId> = leases.iter().map(|l| l.job_id).collect();
    ids.sort();
    ids.dedup();
    (ids, leases.iter().map(|l| l.token).collect())
}
