//! Test helpers for applications (feature `testing`): run jobs inline against the test's own
//! database, and assert what code under test enqueued.
//!
//! The database's clock rules every time in Faultline (`run_at`, backoff, leases), so there is no
//! fake clock: a test that needs a scheduled job or a retry now calls [`make_due`], which makes
//! every queued job of the queues eligible at once.
//!
//! ```no_run
//! # async fn demo(store: faultline::Store, pool: sqlx::PgPool) -> Result<(), faultline::StoreError> {
//! use faultline::testing;
//! use faultline::worker::HandlerRegistry;
//! use faultline::JobArgs;
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Welcome { user: i64 }
//! impl JobArgs for Welcome { const KIND: &'static str = "welcome"; }
//!
//! // The code under test enqueues, in its own transaction.
//! let mut tx = pool.begin().await?;
//! store.enqueue_in(&mut tx, Welcome { user: 7 }).await?;
//! // Seen inside the transaction...
//! testing::assert_enqueued(&mut *tx, |w: &Welcome| w.user == 7).await?;
//! tx.commit().await?;
//!
//! // ...and run inline, through the same handler a worker would run.
//! let mut registry = HandlerRegistry::new();
//! registry.register_job_fn(|_ctx, w: Welcome| async move { println!("hi {}", w.user); Ok(()) });
//! let report = testing::drain(&store, &registry, &["default"]).await?;
//! assert_eq!(report.succeeded(), 1);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::StoreError;
use crate::job::{Job, JobId};
use crate::job_args::JobArgs;
use crate::store::{Claimed, FailOutcome, Store};
use crate::worker::{HandlerRegistry, JobContext};

/// The worker id the helpers claim as (shown as the jobs' `lease_owner`).
pub const TEST_WORKER: &str = "faultline-testing";

/// The lease the helpers take: long enough that no reaper takes a job back during a test.
const LEASE: Duration = Duration::from_secs(300);

/// How one inline run ended, as recorded in the database.
#[derive(Clone, Debug, PartialEq)]
pub enum RunResult {
    /// The handler returned `Ok`; the job is `succeeded` with this result (`null` for none).
    Succeeded(serde_json::Value),
    /// The handler failed; the job was re-queued with backoff (see [`make_due`]).
    Retrying(String),
    /// The handler failed for good (permanent error, or attempts spent); the job is `failed`.
    Failed(String),
    /// The handler snoozed ([`JobError::snooze`](crate::worker::JobError::snooze)): the job is
    /// queued again after this delay, its attempt not spent (see [`make_due`]).
    Snoozed(Duration),
    /// The handler slept or parked for a signal (docs/durable.md): the job is queued for
    /// later or `waiting`, its attempt not spent; run it again once it is due or signalled.
    Suspended,
}

/// What [`drain`] ran, in the order it ran it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrainReport {
    /// Each attempt: the job and how it ended.
    pub runs: Vec<(JobId, RunResult)>,
}

impl DrainReport {
    /// How many attempts succeeded.
    pub fn succeeded(&self) -> usize {
        self.count(|r| matches!(r, RunResult::Succeeded(_)))
    }

    /// How many attempts failed and were re-queued.
    pub fn retrying(&self) -> usize {
        self.count(|r| matches!(r, RunResult::Retrying(_)))
    }

    /// How many attempts failed for good.
    pub fn failed(&self) -> usize {
        self.count(|r| matches!(r, RunResult::Failed(_)))
    }

    fn count(&self, f: impl Fn(&RunResult) -> bool) -> usize {
        self.runs.iter().filter(|(_, r)| f(r)).count()
    }
}

/// Claim one eligible job of `queues` and run it through `registry` inline, then record its
/// outcome under its lease exactly as a worker does (a handler that completed the job in its own
/// transaction is left as it committed it). Returns `None` when no job is eligible.
///
/// # Errors
/// [`StoreError::Database`]; [`StoreError::LeaseLost`] if something else took the job from
/// under the test (a reaper, a cancel).
pub async fn run_one(
    store: &Store,
    registry: &HandlerRegistry,
    queues: &[&str],
) -> Result<Option<(JobId, RunResult)>, StoreError> {
    let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
    let Some(claimed) = store
        .claim_batch(&queues, TEST_WORKER, 1, LEASE)
        .await?
        .pop()
    else {
        return Ok(None);
    };
    let id = claimed.job.id;
    run_claimed(store, registry, claimed)
        .await
        .map(|result| Some((id, result)))
}

/// Run every eligible job of `queues` inline, one at a time, until none is eligible (a job its
/// handler enqueued runs too, once eligible; a retry waits for its backoff unless
/// [`make_due`] is called). Returns every attempt made.
///
/// # Errors
/// As [`run_one`]; the attempts made before the error stay recorded.
pub async fn drain(
    store: &Store,
    registry: &HandlerRegistry,
    queues: &[&str],
) -> Result<DrainReport, StoreError> {
    let mut report = DrainReport::default();
    while let Some(run) = run_one(store, registry, queues).await? {
        report.runs.push(run);
    }
    Ok(report)
}

/// Run exactly job `id` inline through `registry`, as a worker would, and record its outcome
/// under its lease; no other job is touched, so a worker on the same database or a parallel
/// test cannot take it instead. The job must be eligible now (queued and due: move a
/// scheduled job or a retry's backoff with [`make_due`] first); a queue's pause and limits do
/// not apply.
///
/// # Errors
/// [`StoreError::NotFound`]; [`StoreError::InvalidTransition`] (action `run`) when the job is
/// not eligible now or another claimer holds it; [`StoreError::Database`].
pub async fn run_job(
    store: &Store,
    registry: &HandlerRegistry,
    id: JobId,
) -> Result<RunResult, StoreError> {
    match store.claim_job(id, TEST_WORKER, LEASE).await? {
        Some(claimed) => run_claimed(store, registry, claimed).await,
        None => Err(StoreError::InvalidTransition {
            id,
            state: store.get(id).await?.state,
            action: "run",
        }),
    }
}

/// Run every eligible job of type `A` (kind `A::KIND`, on the queue of `A::options()`)
/// inline, one at a time, until none is eligible; jobs of other kinds are left alone. Returns
/// every attempt made.
///
/// # Errors
/// As [`run_job`]; the attempts made before the error stay recorded.
pub async fn drain_kind<A: crate::JobArgs>(
    store: &Store,
    registry: &HandlerRegistry,
) -> Result<DrainReport, StoreError> {
    let filter = crate::job::JobFilter {
        state: Some(crate::job::JobState::Queued),
        queue: Some(
            A::options()
                .queue
                .unwrap_or_else(|| crate::job::DEFAULT_QUEUE.to_owned()),
        ),
        kind: Some(A::KIND.to_owned()),
        ..crate::job::JobFilter::default()
    };
    let mut report = DrainReport::default();
    loop {
        let mut jobs = store.list_page(&filter, None, 500, false).await?.jobs;
        jobs.sort_by_key(|j| (j.priority, j.next_run_at, j.id));
        let before = report.runs.len();
        for job in jobs {
            // Not due yet, or taken by someone else: left as it is.
            if let Some(claimed) = store.claim_job(job.id, TEST_WORKER, LEASE).await? {
                let result = run_claimed(store, registry, claimed).await?;
                report.runs.push((job.id, result));
            }
        }
        if report.runs.len() == before {
            return Ok(report);
        }
    }
}

async fn run_claimed(
    store: &Store,
    registry: &HandlerRegistry,
    claimed: Claimed,
) -> Result<RunResult, StoreError> {
    let Claimed { job, lease, .. } = claimed;
    let Some(handler) = registry.get(&job.kind) else {
        let message = format!(
            "no handler for kind {:?} (registered: {})",
            job.kind,
            registry.kinds().join(", ")
        );
        store.fail_attempt(&lease, &message, false).await?;
        return Ok(RunResult::Failed(message));
    };
    let settled = crate::worker::Settled::default();
    let ctx = JobContext::for_attempt(
        &job,
        &lease,
        Arc::from(TEST_WORKER),
        CancellationToken::new(),
        store.clone(),
        &settled,
        None,
    );
    // In a task of its own, as in a worker, so a panic is a failed attempt, not a failed test.
    let outcome = tokio::spawn(handler.call(ctx, job.payload.clone())).await;
    if settled.suspended() {
        return Ok(RunResult::Suspended);
    }
    if settled.committed() {
        let result = store.get(job.id).await?.result;
        return Ok(RunResult::Succeeded(
            result.map_or(serde_json::Value::Null, |r| r.to_value()),
        ));
    }
    let error = match outcome {
        Ok(Ok(output)) => {
            store.complete_with_result(&lease, &output).await?;
            return Ok(RunResult::Succeeded(output.to_value()));
        }
        Ok(Err(error)) => error,
        Err(e) => crate::worker::JobError::retryable(format!("handler panicked: {e}")),
    };
    if error.is_snooze() {
        let delay = error.delay().unwrap_or_default();
        store.snooze(&lease, delay).await?;
        return Ok(RunResult::Snoozed(delay));
    }
    Ok(
        match store
            .fail_attempt_after(&lease, error.message(), error.is_retryable(), error.delay())
            .await?
        {
            FailOutcome::Retrying(_) => RunResult::Retrying(error.message().to_owned()),
            FailOutcome::Failed(_) => RunResult::Failed(error.message().to_owned()),
        },
    )
}

/// Make every queued job of `queues` eligible now (scheduled `run_at`, retry backoff): the
/// database's clock rules, so tests move the jobs rather than the clock. Returns how many.
///
/// # Errors
/// [`StoreError::Database`].
pub async fn make_due(store: &Store, queues: &[&str]) -> Result<u64, StoreError> {
    let queues: Vec<&str> = queues.to_vec();
    let done = sqlx::query(
        "update faultline.jobs
         set next_run_at = now(), eligible_at = clock_timestamp(),
             updated_at = now()
         where state = 'queued' and queue = any($1) and next_run_at > now()",
    )
    .bind(&queues)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

/// The live jobs of type `A` (queued, waiting or running) with their arguments, oldest first,
/// as `executor` sees them: pass `&mut *tx` to see what a transaction enqueued before it
/// commits, or a pool.
///
/// # Errors
/// [`StoreError::Database`]; [`StoreError::Invalid`] (field `payload`) if a job of the kind
/// does not deserialise into `A`.
pub async fn enqueued<'c, A, E>(executor: E) -> Result<Vec<(Job, A)>, StoreError>
where
    A: JobArgs,
    E: sqlx::PgExecutor<'c>,
{
    let jobs: Vec<Job> = sqlx::query_as(
        "select * from faultline.jobs where kind = $1 and state in ('queued', 'waiting', 'running')
         order by created_at, id",
    )
    .bind(A::KIND)
    .fetch_all(executor)
    .await?;
    jobs.into_iter()
        .map(|job| {
            let args = job.payload.deserialize().map_err(|e| {
                StoreError::invalid(
                    "payload",
                    format!(
                        "job {} of kind {:?} is not a {}: {e}",
                        job.id,
                        A::KIND,
                        std::any::type_name::<A>()
                    ),
                )
            })?;
            Ok((job, args))
        })
        .collect()
}

/// Assert that a live job of type `A` whose arguments satisfy `matches` was enqueued; returns
/// it.
///
/// # Panics
/// When no job matches, listing the arguments of every live job of the type.
///
/// # Errors
/// As [`enqueued`].
pub async fn assert_enqueued<'c, A, E>(
    executor: E,
    matches: impl Fn(&A) -> bool,
) -> Result<(Job, A), StoreError>
where
    A: JobArgs + std::fmt::Debug,
    E: sqlx::PgExecutor<'c>,
{
    let all = enqueued::<A, E>(executor).await?;
    let listed: Vec<String> = all.iter().map(|(_, a)| format!("{a:?}")).collect();
    match all.into_iter().find(|(_, args)| matches(args)) {
        Some(found) => Ok(found),
        None => panic!(
            "no live job of type {} (kind {:?}) matches; enqueued: [{}]",
            std::any::type_name::<A>(),
            A::KIND,
            listed.join(", ")
        ),
    }
}
