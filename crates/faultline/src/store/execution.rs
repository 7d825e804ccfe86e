//! The worker's transitions: claim (queued → running), heartbeat (running → running), complete
//! (→ succeeded), fail an attempt (→ queued with backoff, or → failed), release (→ queued, the
//! attempt handed back). Every call after the claim is fenced by the lease token.
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

use super::exec::OnStore;
use super::history::{archive_moved, job_fields, shard};
use super::settings::Throttle;
use super::{millis, Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{Job, JobId, JobState};
use crate::lease::{Lease, LeaseLostReason};
use crate::payload::Payload;

/// A job claimed by [`Store::claim_batch`], with the lease to report under.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The job as it is now (`running`, `attempts` already counting this attempt), without its
    /// error history (`errors` is empty; [`Store::get`] reads it).
    pub job: Job,
    /// The lease: every report on this job must carry it.
    pub lease: Lease,
    /// True when the job came back from an expired lease (a crashed or stalled worker) and this
    /// claim is its recovery.
    pub recovered: bool,
}

impl Claimed {
    /// How long the job waited between becoming eligible and starting.
    pub fn wait(&self) -> Duration {
        let eligible = self.job.next_run_at.max(self.job.created_at);
        let started = self.job.started_at.unwrap_or(eligible);
        (started - eligible).to_std().unwrap_or_default()
    }
}

/// What [`Store::claim_with_throttles`] claimed, and which queues' limits held it back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimOutcome {
    /// The jobs claimed, in (priority, next_run_at, id) order.
    pub claimed: Vec<Claimed>,
    /// The queues a limit held back, with the limit.
    pub throttled: Vec<(String, Throttle)>,
}

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

#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    #[sqlx(flatten)]
    job: Job,
    recovered: bool,
}

/// The plain claim's UPDATE of the rows a CTE `next (id, needs_recovery, at)` chose: `$2` is the
/// worker, `$4` the lease TTL in milliseconds. Start and lease expiry are on the real clock
/// (`clock_timestamp()`, as in `faultline.claim_limited`, which writes the same update for
/// limited queues), one `at` per row, so the lease is exactly the TTL from the start.
macro_rules! claim_update {
    () => {
        "update faultline.jobs j
            set state = 'running',
                attempts = j.attempts + 1,
                lease_owner = $2,
                lease_expires_at = next.at + $4 * interval '1 millisecond',
                lease_token = nextval('faultline.lease_token_seq'),
                needs_recovery = false,
                started_at = next.at,
                updated_at = now()
            from next
            where j.id = next.id
            -- What a handler needs, not the error history (which grows with every attempt and
            -- which no handler reads): `errors` comes back empty.
            returning j.id, j.queue, j.kind, j.payload, j.state, j.priority, j.attempts,
                      j.max_attempts, j.next_run_at, j.timeout_ms, j.lease_owner,
                      j.lease_expires_at, j.lease_token, j.idempotency_key, j.last_error,
                      '[]'::jsonb as errors, j.created_at, j.started_at, j.finished_at,
                      j.updated_at, j.concurrency_key, j.traceparent, j.result, j.depends_on,
                      j.pending_dependencies, j.unique_key, j.unique_period_ms,
                      next.needs_recovery as recovered"
    };
}

/// Longest error text kept per attempt; a handler that fails with a megabyte of text must not
/// bloat the row (the error history holds one entry per attempt).
const MAX_ERROR_LEN: usize = 4096;

impl Store {
    /// Claim up to `limit` eligible jobs from `queues` for `worker`, leasing each for `ttl`.
    ///
    /// Eligible means `queued` with `next_run_at <= now()`, taken by priority, then in the order
    /// the jobs were queued (an enqueue's jobs in their `next_run_at` order, then by id; a job
    /// retried or released queues again when that happens). Safe with any number of concurrent claimers: rows are locked with
    /// `for update skip locked`, so each job goes to exactly one claimer and no claimer waits on
    /// another. Each claimed job gets `attempts + 1`, a fresh fencing token from
    /// `faultline.lease_token_seq`, and `lease_expires_at = now() + ttl` on the database clock.
    ///
    /// Expired leases are not taken back here but by [`Store::reap_expired`]: this keeps the
    /// claim a pure scan of the partial index of queued jobs, and leaves one place that decides
    /// whether an expired job is retried or, its attempts spent, failed (with the expiry in its
    /// history).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn claim_batch(
        &self,
        queues: &[String],
        worker: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(self
            .claim_with_throttles(queues, worker, limit, ttl)
            .await?
            .claimed)
    }

    /// [`Store::claim_batch`], also saying which queues' limits held the claim back (SPEC §12):
    /// what a worker counts in `faultline_claims_throttled_total` and what tells it to try again
    /// when one of its own jobs frees a slot.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn claim_with_throttles(
        &self,
        queues: &[String],
        worker: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut outcome = ClaimOutcome::default();
        if limit == 0 || queues.is_empty() {
            return Ok(outcome);
        }
        let mut queues = queues.to_vec();
        queues.sort();
        queues.dedup();
        // Paused, limited and keyed queues first (their claims are small by nature, and would
        // otherwise starve behind busy plain ones), each under its own lock; then the rest in one
        // statement.
        let mut rows = Vec::new();
        let limited = self.limited_among(&queues).await?;
        for (queue, paused) in &limited {
            let want = limit - rows.len() as u32;
            if want == 0 {
                break;
            }
            if *paused {
                // As of the cached list (at most 250 ms old); a queue resumed since waits that
                // long. A queue paused since is caught by the claim's own SQL.
                outcome.throttled.push((queue.clone(), Throttle::Paused));
                continue;
            }
            let (claimed, throttle) = self.claim_limited(queue, worker, want, ttl).await?;
            rows.extend(claimed);
            if let Some(reason) = throttle {
                outcome.throttled.push((queue.clone(), reason));
            }
        }
        let want = limit - rows.len() as u32;
        // When every queue is limited, the plain statement would find nothing.
        if want > 0 && limited.len() < queues.len() {
            rows.extend(self.claim_unlimited(&queues, worker, want, ttl).await?);
        }
        outcome.claimed = rows
            .into_iter()
            .map(|row| {
                let lease = Lease {
                    job_id: row.job.id,
                    token: row.job.lease_token.unwrap_or_default(),
                    attempt: row.job.attempts,
                    owner: worker.to_owned(),
                    expires_at: row.job.lease_expires_at.unwrap_or_default(),
                };
                Claimed {
                    job: row.job,
                    lease,
                    recovered: row.recovered,
                }
            })
            .collect();
        outcome.claimed.sort_by(|a, b| {
            (a.job.priority, a.job.next_run_at, a.job.id).cmp(&(
                b.job.priority,
                b.job.next_run_at,
                b.job.id,
            ))
        });
        Ok(outcome)
    }

    /// The claim of queues without limits: one statement for all of them.
    async fn claim_unlimited(
        &self,
        queues: &[String],
        worker: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        // One ordered scan of the partial index per queue (LATERAL), merged by the outer
        // ORDER BY: `queue = any($1)` would make Postgres read and sort every queued job of
        // every queue on each claim. The lateral scan may lock up to `limit` rows in each queue
        // and keep fewer; the extra locks go at commit, a moment later.
        //
        // Paused and limited queues are left out here, in SQL, whatever the caller believes:
        // one primary-key probe of `queue_settings` per queue. Their jobs are claimed by
        // `claim_limited`, under the queue's lock.
        //
        // The `attempts < max_attempts` test can never fail for a queued job (every transition
        // to queued checks it, and a CHECK constraint backs it); it is here so that a row that
        // somehow broke the invariant stays visible as queued instead of failing every claim.
        //
        // Each lane (queue, priority) is scanned from its newest low-water mark, not from the
        // head of the index: under a held MVCC horizon the head is every job finished since,
        // none of whose entries can be marked dead (see the migration `lane_marks` for why a
        // mark never hides a job). A lane without a mark is scanned from its head.
        Ok(sqlx::query_as(concat!(
            "with next as (
                select j.id, j.needs_recovery, clock_timestamp() as at
                from unnest($1::text[]) as q(name)
                cross join lateral (
                    select l.priority,
                           coalesce((select m.low from faultline.lane_marks m
                                     where m.queue = l.queue and m.priority = l.priority
                                     order by m.id desc limit 1), '-infinity') as low
                    from faultline.lanes l
                    where l.queue = q.name
                ) lane
                cross join lateral (
                    select id, needs_recovery, priority,
                           coalesce(eligible_at, next_run_at) as e, next_run_at
                    from faultline.jobs
                    where state = 'queued'
                      and queue = q.name
                      and priority = lane.priority
                      and coalesce(eligible_at, next_run_at) >= lane.low
                      and coalesce(eligible_at, next_run_at) <= now()
                      and next_run_at <= now()
                      and attempts < max_attempts
                    order by coalesce(eligible_at, next_run_at), next_run_at, id
                    limit $3
                    for update skip locked
                ) j
                where not exists (
                    select 1 from faultline.queue_settings s
                    where s.queue = q.name
                      and (s.paused or s.keyed or s.concurrency_limit is not null
                           or s.rate_count is not null)
                )
                order by j.priority, j.e, j.next_run_at, j.id
                limit $3
            )
            ",
            claim_update!()
        ))
        .bind(queues)
        .bind(worker)
        .bind(i64::from(limit))
        .bind(millis(ttl))
        .all_on(self)
        .await?)
    }

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

    /// Mark the job of `lease` succeeded with `result` (SPEC §13), kept with the job and
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
                    "is {} bytes; at most {limit} allowed (--max-result-bytes); the result was \
                     not recorded",
                    text.len()
                ),
            ));
        }
        Ok(Some(text.to_owned()))
    }

    /// Mark the job of `lease` succeeded with `result` (JSON `null` for none) inside the
    /// caller's transaction (SPEC §13), so that the caller's own writes in it and the success
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
            .persistent(self.persistent())
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
        let attempt = u32::try_from(lease.attempt).unwrap_or(1);
        let delay = self.config.backoff.delay(attempt);
        // Handler errors are outside text: NUL would make Postgres refuse the whole report.
        let error = crate::text::storable(error);
        let error = crate::text::truncate(&error, MAX_ERROR_LEN);
        // `attempts` was counted at claim time, so `attempts < max_attempts` means another
        // attempt is left; the history entry takes its attempt number and worker from the row,
        // which the token guard proves is this lease's.
        // One statement, two exclusive outcomes on the locked row: re-queued in place when
        // retryable with attempts left, else moved to history as `failed`.
        let job: Option<Job> = sqlx::query_as(concat!(
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
        ))
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

    async fn lease_lost(&self, lease: &Lease) -> Result<StoreError, StoreError> {
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
-- join, so the plan stays a probe of the primary key (see tests/integration/hot_path.rs).
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

/// The leases' ids (sorted: see "Fenced batch reports" in the module docs) and tokens.
fn unzip_leases(leases: &[Lease]) -> (Vec<JobId>, Vec<i64>) {
    let mut ids: Vec<JobId> = leases.iter().map(|l| l.job_id).collect();
    ids.sort();
    ids.dedup();
    (ids, leases.iter().map(|l| l.token).collect())
}
