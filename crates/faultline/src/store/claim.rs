//! The claim (queued → running): the one place a job gets a lease. Plain queues are claimed by
//! one statement for all of them ([`Store::claim_batch`]); paused, limited and keyed queues by
//! `faultline.claim_limited`, one call per queue, which enforces the limits for all workers
//! together (its live definition is the last migration that redefines it,
//! `20261206000007_limited_claim_from_marks.sql`; `docs/schema.sql` shows the current text).
//! Every later report on the job ([`super::running`]) is fenced by the lease this hands out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::statement::OnStore;
use super::{millis, Store};
use crate::error::StoreError;
use crate::job::{Job, JobId};
use crate::lease::Lease;

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

/// The queues whose jobs the plain claim leaves alone — paused, limited or keyed — as last
/// read, each with whether it is paused: the claim runs [`Store::claim_limited`] for those among
/// a worker's queues. A stale list never breaks a limit — the plain claim excludes those queues
/// in its own SQL — it only delays a newly limited queue's jobs by at most [`LIMITED_TTL`].
#[derive(Debug, Default)]
pub(crate) struct LimitedQueues(Mutex<Option<(Instant, SettingsList)>>);

/// Queues the plain claim leaves alone, each with whether it is paused.
type SettingsList = Arc<Vec<(String, bool)>>;

/// Why a claim took fewer jobs of a queue than it asked for (the `reason` label of
/// `faultline_claims_throttled_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Throttle {
    /// The queue is paused.
    Paused,
    /// The queue's `concurrency_limit` is reached.
    Concurrency,
    /// Every eligible keyed job's key is at its `key_concurrency`.
    Key,
    /// The queue's `rate_limit` is spent for now.
    Rate,
}

impl Throttle {
    /// Every reason, for creating the metric's series.
    pub const ALL: [Throttle; 4] = [
        Throttle::Paused,
        Throttle::Concurrency,
        Throttle::Key,
        Throttle::Rate,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Throttle::Paused => "paused",
            Throttle::Concurrency => "concurrency",
            Throttle::Key => "key",
            Throttle::Rate => "rate",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// A row of `faultline.claim_limited`: a claimed job, or the marker saying a limit held the
/// claim back.
pub(crate) enum LimitedRow {
    Claimed(Box<ClaimedRow>),
    Throttled(Throttle),
}

impl<'r> sqlx::FromRow<'r, PgRow> for LimitedRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let throttled: Option<String> = row.try_get("throttled")?;
        match throttled {
            None => ClaimedRow::from_row(row).map(|r| LimitedRow::Claimed(Box::new(r))),
            Some(text) => Throttle::parse(&text)
                .map(LimitedRow::Throttled)
                .ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "throttled".into(),
                    source: format!("unknown throttle reason {text:?}").into(),
                }),
        }
    }
}

/// The claim of queues without limits ([`Store::claim_unlimited`]): `$1` the queues, `$2` the
/// worker, `$3` the most jobs, `$4` the lease TTL in milliseconds.
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
const CLAIM_UNLIMITED: &str = concat!(
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
);

/// The claim of one job by id: the same UPDATE as every claim, of a `next` that is that job if
/// it is eligible now (queued, due, attempts left), locked with `skip locked` so a job another
/// claimer holds is left to it. `$3` (a limit, always 1) keeps the parameters of the shared
/// update.
const CLAIM_ONE: &str = concat!(
    "with next as (
                select j.id, j.needs_recovery, clock_timestamp() as at
                from faultline.jobs j
                where j.id = $1
                  and j.state = 'queued'
                  and j.next_run_at <= now()
                  and j.attempts < j.max_attempts
                limit $3
                for update skip locked
            )
            ",
    claim_update!()
);

/// How long the list of limited queues is reused before it is read again.
const LIMITED_TTL: Duration = Duration::from_millis(250);

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

    /// [`Store::claim_batch`], also saying which queues' limits held the claim back (docs/operations.md):
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
        let limited = self.limited_among(&queues).await?;
        let mut rows = self
            .claim_each_limited(&limited, worker, limit, ttl, &mut outcome.throttled)
            .await?;
        let want = limit - rows.len() as u32;
        // When every queue is limited, the plain statement would find nothing.
        if want > 0 && limited.len() < queues.len() {
            rows.extend(self.claim_unlimited(&queues, worker, want, ttl).await?);
        }
        outcome.claimed = claimed_in_order(rows, worker);
        Ok(outcome)
    }

    /// Claim up to `limit` jobs from the `limited` queues (with whether each is paused), one
    /// queue after the other, each under its own lock, until `limit` are claimed. A paused queue,
    /// and each queue whose limit held the claim back, goes to `throttled` with the reason.
    async fn claim_each_limited(
        &self,
        limited: &[(String, bool)],
        worker: &str,
        limit: u32,
        ttl: Duration,
        throttled: &mut Vec<(String, Throttle)>,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let mut rows = Vec::new();
        for (queue, paused) in limited {
            let want = limit - rows.len() as u32;
            if want == 0 {
                break;
            }
            if *paused {
                // As of the cached list (at most 250 ms old); a queue resumed since waits that
                // long. A queue paused since is caught by the claim's own SQL.
                throttled.push((queue.clone(), Throttle::Paused));
                continue;
            }
            let (claimed, throttle) = self.claim_limited(queue, worker, want, ttl).await?;
            rows.extend(claimed);
            if let Some(reason) = throttle {
                throttled.push((queue.clone(), reason));
            }
        }
        Ok(rows)
    }

    /// The claim of queues without limits: one statement for all of them.
    async fn claim_unlimited(
        &self,
        queues: &[String],
        worker: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        Ok(sqlx::query_as(CLAIM_UNLIMITED)
            .bind(queues)
            .bind(worker)
            .bind(i64::from(limit))
            .bind(millis(ttl))
            .all_on(self)
            .await?)
    }

    /// Those of `queues` that the plain claim leaves alone (paused, limited or keyed), each with
    /// whether it is paused, from a list at most [`LIMITED_TTL`] old.
    pub(crate) async fn limited_among(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let list = match self.limited.fresh() {
            Some(list) => list,
            None => {
                let list: Vec<(String, bool)> = sqlx::query_as(
                    "select queue, paused from faultline.queue_settings
                     where paused or keyed or concurrency_limit is not null
                        or rate_count is not null",
                )
                .all_on(self)
                .await?;
                self.limited.store(list)
            }
        };
        Ok(list
            .iter()
            .filter(|(q, _)| queues.contains(q))
            .cloned()
            .collect())
    }

    /// Claim up to `want` jobs of one paused, limited or keyed queue, within its limits, all
    /// workers together: one call of `faultline.claim_limited` (see its migration,
    /// `20261202000003_concurrency_keys.sql`, for why it is race-free; its current row type is in
    /// `20261206000001_complete_claims.sql`). Returns the claimed rows
    /// and, when a limit held the claim back, why.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) async fn claim_limited(
        &self,
        queue: &str,
        worker: &str,
        want: u32,
        ttl: Duration,
    ) -> Result<(Vec<ClaimedRow>, Option<Throttle>), StoreError> {
        let rows: Vec<LimitedRow> =
            sqlx::query_as("select * from faultline.claim_limited($1, $2, $3, $4)")
                .bind(queue)
                .bind(worker)
                .bind(i32::try_from(want).unwrap_or(i32::MAX))
                .bind(millis(ttl))
                .all_on(self)
                .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut throttle = None;
        for row in rows {
            match row {
                LimitedRow::Claimed(row) => claimed.push(*row),
                LimitedRow::Throttled(reason) => throttle = Some(reason),
            }
        }
        Ok((claimed, throttle))
    }
}

impl LimitedQueues {
    fn fresh(&self) -> Option<SettingsList> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIMITED_TTL)
            .map(|(_, list)| list.clone())
    }

    fn store(&self, list: Vec<(String, bool)>) -> SettingsList {
        let list = Arc::new(list);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), list.clone()));
        list
    }

    /// Read the list again at the next claim (this process just changed a setting).
    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Store {
    /// Claim job `id` for `worker`, leased for `ttl`, if it is eligible now (queued, due, with
    /// attempts left) and no other claimer holds it; `None` otherwise. The lease is what any
    /// claim gives (fresh token, `attempts + 1`). Unlike [`Store::claim_batch`] it does not
    /// look at the queue's pause or limits: it is for running one known job (tests, tooling).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM_ONE)
            .bind(id)
            .bind(worker)
            .bind(1i64)
            .bind(millis(ttl))
            .all_on(self)
            .await?;
        Ok(claimed_in_order(rows, worker).pop())
    }
}

/// The claimed rows as [`Claimed`] jobs with their leases (held by `worker`), in (priority,
/// next_run_at, id) order.
fn claimed_in_order(rows: Vec<ClaimedRow>, worker: &str) -> Vec<Claimed> {
    let mut claimed: Vec<Claimed> = rows
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
    claimed.sort_by(|a, b| {
        (a.job.priority, a.job.next_run_at, a.job.id).cmp(&(
            b.job.priority,
            b.job.next_run_at,
            b.job.id,
        ))
    });
    claimed
}
