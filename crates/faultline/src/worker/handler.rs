//! The handler API: what a job kind runs, what it is told, and how it reports failure.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::job::JobId;
use crate::payload::Payload;

/// What a handler is told about the job it runs.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job.
    pub job_id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// The job's attempt budget.
    pub max_attempts: i32,
    /// The fencing token of this attempt's lease. Tokens only grow: pass it to systems you
    /// write to, and have them refuse a write with a smaller token than the last they saw, so
    /// that a worker that lost its lease cannot clobber its successor's side effects.
    pub lease_token: i64,
    /// The worker running it.
    pub worker_id: Arc<str>,
    /// Its concurrency key (docs/operations.md), if it has one.
    pub concurrency_key: Option<String>,
    /// The W3C `traceparent` of the context that enqueued it, if any (see
    /// [`crate::traceparent`]); with the `otel` feature the handler already runs in a span
    /// whose parent it is.
    pub traceparent: Option<String>,
    pub(crate) cancel: CancellationToken,
    /// What [`JobContext::complete_and_commit`] needs: the store and this attempt's lease.
    pub(crate) fence: Option<(crate::store::Store, crate::lease::Lease)>,
    /// Set once the handler completed the job in its own transaction: the worker then reports
    /// nothing more.
    pub(crate) committed: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the handler slept or parked for a signal (docs/durable.md): the job was moved
    /// already, and the worker reports nothing more.
    pub(crate) suspended: Arc<std::sync::atomic::AtomicBool>,
    /// How many durable sleeps this run has made: the n-th sleep's deadline is step
    /// `faultline:sleep:n`.
    pub(crate) sleeps: Arc<std::sync::atomic::AtomicU32>,
    /// The worker's metrics (steps recorded), when run by a worker.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The job's recorded steps, read once per run at its first step (then kept up to date by
    /// its own records: only this run's lease can record more).
    pub(crate) steps_seen: Arc<std::sync::Mutex<Option<StepsSeen>>>,
}

/// Recorded steps by name.
pub(crate) type StepsSeen = std::collections::HashMap<String, crate::step::Step>;

/// Flags a handler's context sets for the worker: completed in the handler's own transaction
/// (`.0`), suspended by a durable sleep or wait (`.1`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Settled(
    pub(crate) Arc<std::sync::atomic::AtomicBool>,
    pub(crate) Arc<std::sync::atomic::AtomicBool>,
);

impl Settled {
    /// Whether the handler completed the job itself.
    pub(crate) fn committed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the handler suspended the job (it runs again later).
    pub(crate) fn suspended(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl JobContext {
    /// The context of one attempt of `job` under `lease`, run by `worker_id`, stopped by
    /// `cancel`; `settled` is set once the handler completed the job in its own transaction
    /// (`.0`) or suspended it (`.1`).
    pub(crate) fn for_attempt(
        job: &crate::job::Job,
        lease: &crate::lease::Lease,
        worker_id: Arc<str>,
        cancel: CancellationToken,
        store: crate::store::Store,
        settled: &Settled,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        JobContext {
            job_id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            attempt: lease.attempt,
            max_attempts: job.max_attempts,
            lease_token: lease.token,
            worker_id,
            concurrency_key: job.concurrency_key.clone(),
            traceparent: job.traceparent.clone(),
            cancel,
            fence: Some((store, lease.clone())),
            committed: settled.0.clone(),
            suspended: settled.1.clone(),
            sleeps: Arc::default(),
            metrics,
            steps_seen: Arc::default(),
        }
    }

    /// A context for calling a handler directly in a unit test, with no database: a new job id,
    /// `kind` on queue `default`, attempt 1 of 5, lease token 1, worker `test`, no concurrency
    /// key or trace. Change any public field as the test needs (`ctx.attempt = 3`). It is never
    /// cancelled unless the test cancels [`JobContext::cancel_token`]. What needs the database
    /// under a lease ([`JobContext::complete_and_commit`]) fails, naming the test context.
    pub fn for_test(kind: impl Into<String>) -> JobContext {
        JobContext {
            job_id: JobId::new(),
            kind: kind.into(),
            queue: crate::job::DEFAULT_QUEUE.to_owned(),
            attempt: 1,
            max_attempts: crate::job::DEFAULT_MAX_ATTEMPTS,
            lease_token: 1,
            worker_id: Arc::from("test"),
            concurrency_key: None,
            traceparent: None,
            cancel: CancellationToken::new(),
            fence: None,
            committed: Arc::default(),
            suspended: Arc::default(),
            sleeps: Arc::default(),
            metrics: None,
            steps_seen: Arc::default(),
        }
    }

    /// The token whose cancellation [`JobContext::cancelled`] waits for: a unit test cancels
    /// it to see how a handler stops (in a worker, a lost lease, a cancel or shutdown does).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Resolves when the handler must stop: the job was cancelled, the lease was lost, or the
    /// worker is shutting down past its grace period. Whatever the handler returns afterwards
    /// is not recorded.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the handler must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The cancellation token itself, to hand to code that takes one.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Complete this job inside `tx`, under its fence, with `result` (`()` for none), and
    /// commit: the handler's own writes in `tx` and the job's success commit together, exactly
    /// once, or not at all (docs/library.md). The worker then reports nothing more for this attempt,
    /// whatever the handler returns.
    ///
    /// The transaction is taken by value, so it cannot be committed after a refusal: on
    /// [`StoreError::LeaseLost`] (the lease expired and was taken back, the job was cancelled,
    /// or another worker holds it now) it is rolled back here, and the handler's writes with it.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] (rolled back); [`StoreError::Invalid`] for a result over the
    /// limit or not serialisable (rolled back); [`StoreError::Database`] — if the commit itself
    /// failed, whether it landed is unknown to this process; the fence settles it (a later
    /// report of this lease is refused if it did).
    ///
    /// [`StoreError::LeaseLost`]: crate::StoreError::LeaseLost
    /// [`StoreError::Database`]: crate::StoreError::Database
    /// [`StoreError::Invalid`]: crate::StoreError::Invalid
    ///
    /// ```no_run
    /// use faultline::worker::{HandlerRegistry, JobContext, JobError};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Credit { account: String, cents: i64 }
    ///
    /// fn register(registry: &mut HandlerRegistry, pool: sqlx::PgPool) {
    ///     registry.register_fn("credit", move |ctx: JobContext, credit: Credit| {
    ///         let pool = pool.clone();
    ///         async move {
    ///             let mut tx = pool.begin().await?;
    ///             sqlx::query("update accounts set cents = cents + $2 where id = $1")
    ///                 .bind(&credit.account)
    ///                 .bind(credit.cents)
    ///                 .execute(&mut *tx)
    ///                 .await?;
    ///             // The credit and the job's success commit together, or neither does: a
    ///             // worker that lost its lease gets LeaseLost here and its update rolls back.
    ///             ctx.complete_and_commit(tx, ()).await?;
    ///             Ok(())
    ///         }
    ///     });
    /// }
    /// ```
    pub async fn complete_and_commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        result: impl Serialize,
    ) -> Result<(), crate::StoreError> {
        let (store, lease) = self.fence.as_ref().ok_or_else(|| {
            crate::StoreError::invalid(
                "lease",
                "this context has no lease to complete under (a JobContext::for_test context)",
            )
        })?;
        let result = Payload::serialize(&result).map_err(|e| {
            crate::StoreError::invalid("result", format!("cannot be written as JSON: {e}"))
        })?;
        store.complete_in(&mut tx, lease, &result).await?;
        tx.commit().await?;
        self.committed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// A failed attempt: retryable (re-queued with backoff while attempts remain, or after its own
/// delay), permanent (the job fails at once), or a snooze (run again later without spending an
/// attempt).
///
/// Any error that converts into `Box<dyn std::error::Error + Send + Sync>` — every
/// `std::error::Error + Send + Sync`, `anyhow::Error`, a `String` — converts into a retryable
/// `JobError` whose message is the error and its sources joined by `: `, so handlers can use `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
    /// The retry's (or the snooze's) delay; `None`: the store's backoff.
    delay: Option<Duration>,
    snooze: bool,
}

impl JobError {
    /// A failure worth retrying (a timeout, a 5xx, a lost connection).
    pub fn retryable(message: impl fmt::Display) -> Self {
        JobError {
            message: message.to_string(),
            retryable: true,
            delay: None,
            snooze: false,
        }
    }

    /// A failure no retry can fix (bad input, a 4xx): the job fails now.
    pub fn permanent(message: impl fmt::Display) -> Self {
        JobError {
            retryable: false,
            ..JobError::retryable(message)
        }
    }

    /// A retryable failure whose next attempt comes after `delay` rather than after the
    /// backoff (a `Retry-After` from a rate-limited API). Attempts are still counted: the job
    /// fails for good once they are spent.
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        JobError {
            delay: Some(delay),
            ..JobError::retryable(message)
        }
    }

    /// Not a failure: run the job again after `delay` without spending an attempt and without
    /// an entry in its error history (River's `JobSnooze`, Oban's `{:snooze, n}`): waiting for
    /// something outside to be ready.
    pub fn snooze(delay: Duration) -> Self {
        JobError {
            message: format!("snoozed for {}", humantime::format_duration(delay)),
            retryable: true,
            delay: Some(delay),
            snooze: true,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether this is a snooze ([`JobError::snooze`]).
    pub fn is_snooze(&self) -> bool {
        self.snooze
    }

    /// The delay before the next run, when the error sets one ([`JobError::retry_after`],
    /// [`JobError::snooze`], a type's [`JobArgs::backoff`](crate::JobArgs::backoff)).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// This error with `delay` before the next attempt, unless it has one already.
    pub(crate) fn or_delay(mut self, delay: Option<Duration>) -> Self {
        self.delay = self.delay.or(delay);
        self
    }

    /// The error text recorded in the job's history.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for JobError {
    fn from(error: E) -> Self {
        let error: Box<dyn std::error::Error + Send + Sync> = error.into();
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Some errors repeat their source in their own text.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        JobError::retryable(message)
    }
}

/// What a handler returns: its result on success (`()` for none; any other value is kept as
/// the job's JSON `result`, docs/library.md), or why the attempt failed.
pub type JobResult<T = ()> = Result<T, JobError>;

/// Runs jobs of one kind, with a typed payload.
///
/// ```
/// use faultline::worker::{Handler, JobContext, JobResult};
///
/// #[derive(serde::Deserialize)]
/// struct Email { to: String }
///
/// struct SendEmail;
///
/// impl Handler for SendEmail {
///     type Payload = Email;
///     type Output = ();
///     async fn handle(&self, ctx: JobContext, email: Email) -> JobResult {
///         tokio::select! {
///             _ = ctx.cancelled() => {}
///             _ = async { println!("sending to {} (token {})", email.to, ctx.lease_token) } => {}
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The payload, deserialized from the job's JSON. A payload that does not deserialize fails
    /// the job permanently, naming the kind and the problem.
    type Payload: DeserializeOwned + Send + 'static;

    /// What a success returns, kept as the job's JSON `result` (`()` keeps none). A result
    /// larger than the worker's `--max-result-bytes` fails the attempt (it is never truncated).
    type Output: Serialize + Send + 'static;

    /// Run one attempt.
    fn handle(
        &self,
        ctx: JobContext,
        payload: Self::Payload,
    ) -> impl Future<Output = JobResult<Self::Output>> + Send;
}

/// A handler made from an async closure; see [`HandlerRegistry::register_fn`] and
/// [`HandlerRegistry::register_job_fn`].
pub struct FnHandler<P, F> {
    f: F,
    _payload: PhantomData<fn(P)>,
}

impl<P, F> FnHandler<P, F> {
    /// `f` as a handler of payload `P`.
    pub(crate) fn new(f: F) -> Self {
        FnHandler {
            f,
            _payload: PhantomData,
        }
    }
}

impl<P, O, F, Fut> Handler for FnHandler<P, F>
where
    P: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult<O>> + Send + 'static,
{
    type Payload = P;
    type Output = O;
    fn handle(&self, ctx: JobContext, payload: P) -> impl Future<Output = JobResult<O>> + Send {
        (self.f)(ctx, payload)
    }
}

/// A handler's run with its output as JSON (`null` for none).
/// A handler's run as [`ExecutionHook::wrap`](super::ExecutionHook::wrap) sees it: its output
/// as JSON, or its error.
pub type RunFuture = std::pin::Pin<Box<dyn Future<Output = JobResult<Payload>> + Send>>;

pub(crate) type BoxedJob = RunFuture;

/// A handler with its payload type erased, so handlers of every kind live in one map.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call(self: Arc<Self>, ctx: JobContext, payload: Payload) -> BoxedJob;
}

impl<H: Handler> ErasedHandler for H {
    fn call(self: Arc<Self>, ctx: JobContext, payload: Payload) -> BoxedJob {
        Box::pin(async move {
            let payload = payload.deserialize::<H::Payload>().map_err(|e| {
                JobError::permanent(format!("invalid payload for kind {:?}: {e}", ctx.kind))
            })?;
            let kind = ctx.kind.clone();
            let output = self.handle(ctx, payload).await?;
            Payload::serialize(&output).map_err(|e| {
                JobError::permanent(format!("the result of kind {kind:?} is not JSON: {e}"))
            })
        })
    }
}

/// The handlers a worker runs, by job kind, with optional per-kind timeouts.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    timeouts: HashMap<String, Duration>,
    /// The queue each typed handler's jobs go to (its `JobOptions::queue`), by kind.
    queues: HashMap<String, String>,
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<_> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("HandlerRegistry")
            .field("kinds", &kinds)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `handler` for jobs of `kind` (replacing any handler already registered for it).
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        let kind = kind.into();
        self.queues.remove(&kind);
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    /// The queues the registered typed handlers' jobs go to, each with the kinds that use it,
    /// sorted by queue.
    pub fn typed_queues(&self) -> Vec<(String, Vec<String>)> {
        let mut by_queue: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (kind, queue) in &self.queues {
            by_queue
                .entry(queue.clone())
                .or_default()
                .push(kind.clone());
        }
        by_queue
            .into_iter()
            .map(|(queue, mut kinds)| {
                kinds.sort();
                (queue, kinds)
            })
            .collect()
    }

    /// Remember that jobs of `kind` go to `queue` (a typed handler's).
    pub(crate) fn set_queue(&mut self, kind: &str, queue: String) {
        self.queues.insert(kind.to_owned(), queue);
    }

    /// Run an async closure for jobs of `kind`.
    ///
    /// ```
    /// # use faultline::worker::{HandlerRegistry, JobContext};
    /// let mut registry = HandlerRegistry::new();
    /// registry.register_fn("greet", |_ctx: JobContext, name: String| async move {
    ///     println!("hello, {name}");
    ///     Ok(())
    /// });
    /// ```
    pub fn register_fn<P, O, F, Fut>(&mut self, kind: impl Into<String>, f: F) -> &mut Self
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult<O>> + Send + 'static,
    {
        self.register(kind, FnHandler::new(f))
    }

    /// Default timeout for jobs of `kind` that set none of their own.
    pub fn set_timeout(&mut self, kind: impl Into<String>, timeout: Duration) -> &mut Self {
        self.timeouts.insert(kind.into(), timeout);
        self
    }

    /// The kinds with a handler, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    pub(crate) fn insert_erased(
        &mut self,
        kind: impl Into<String>,
        handler: Arc<dyn ErasedHandler>,
    ) -> &mut Self {
        self.handlers.insert(kind.into(), handler);
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn ErasedHandler>> {
        self.handlers.get(kind).cloned()
    }

    pub(crate) fn timeout(&self, kind: &str) -> Option<Duration> {
        self.timeouts.get(kind).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn greet(ctx: JobContext, name: String) -> Result<String, JobError> {
        Ok(format!("hello {name}, attempt {}", ctx.attempt))
    }

    #[tokio::test]
    async fn a_handler_runs_in_a_test_context_without_a_database() {
        let mut ctx = JobContext::for_test("greet");
        ctx.attempt = 2;
        assert_eq!(ctx.queue, "default");
        assert_eq!(
            greet(ctx, "ada".into()).await.unwrap(),
            "hello ada, attempt 2"
        );

        let ctx = JobContext::for_test("greet");
        ctx.cancel_token().cancel();
        // Resolves at once: the handler sees the stop it would see in a worker.
        ctx.cancelled().await;
    }
}
