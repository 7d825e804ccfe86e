//! Running one claimed job: the handler in its own task (so a panic is caught, not fatal), under
//! its timeout and its stop signal; then the outcome goes to the reporter.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::active::{Stop, StopReason};
use super::handler::{JobContext, JobError, JobResult, Settled};
use super::hook::RunEnd;
use super::shared::Shared;
use super::shared::{Report, ReportKind};
use crate::payload::Payload;
use crate::store::Claimed;

/// After a stop, how long a handler gets to return on its own before it is aborted. Its result
/// is discarded either way; this only lets it clean up.
const STOP_GRACE: Duration = Duration::from_millis(500);

enum Outcome {
    /// With the result as JSON text, checked against the size limit.
    Succeeded(Option<String>),
    /// The handler completed the job in its own transaction (`complete_and_commit`).
    Committed,
    /// The handler slept or parked for a signal: the job was moved already.
    Suspended,
    Failed(JobError),
    Stopped(StopReason),
}

/// Run one claimed job: its handler, then its outcome to the reporter. The slot is free once the
/// handler is done; the lease stays held (and heartbeated) until the reporter has recorded the
/// result.
pub(crate) async fn run_job(shared: Arc<Shared>, claimed: Claimed, stop: Arc<Stop>) {
    let started = Instant::now();
    let outcome = match shared.registry.get(&claimed.job.kind) {
        None => Outcome::Failed(JobError::permanent(format!(
            "no handler for kind {:?} on worker {} (it runs: {})",
            claimed.job.kind,
            shared.worker_id,
            shared.registry.kinds().join(", ")
        ))),
        Some(handler) => run_handler(&shared, &claimed, handler, &stop).await,
    };
    shared.active.handler_finished(claimed.lease.token);
    shared.handler_done();
    shared
        .metrics
        .job_execution_seconds
        .with_label_values(&[&claimed.job.queue, &claimed.job.kind])
        .observe(started.elapsed().as_secs_f64());
    report(&shared, claimed, outcome);
}

/// The handler in its own task (a panic is caught, not fatal), under its timeout and its stop
/// signal, wrapped by the execution hooks and between their `started` and `finished` calls.
async fn run_handler(
    shared: &Shared,
    claimed: &Claimed,
    handler: Arc<dyn super::handler::ErasedHandler>,
    stop: &Stop,
) -> Outcome {
    let (job, lease) = (&claimed.job, &claimed.lease);
    // The handler's token is a child of the stop token: a stop cancels it, and a timeout can
    // cancel it alone.
    let cancel = stop.token.child_token();
    let settled = Settled::default();
    let ctx = JobContext::for_attempt(
        job,
        lease,
        shared.worker_id.clone(),
        cancel.clone(),
        shared.store.clone(),
        &settled,
        Some(shared.metrics.clone()),
    );
    let timeout = job
        .timeout_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
        .or_else(|| shared.registry.timeout(&job.kind));
    for hook in &shared.hooks {
        hook.started(&ctx).await;
    }
    // Only with hooks: the context is not cloned on the hot path otherwise.
    let hook_ctx = (!shared.hooks.is_empty()).then(|| ctx.clone());
    let mut run = handler.call(ctx, job.payload.clone());
    if let Some(hook_ctx) = &hook_ctx {
        // The first hook added is the outermost.
        for hook in shared.hooks.iter().rev() {
            run = hook.wrap(hook_ctx, run);
        }
    }
    let outcome = supervise(shared, tokio::spawn(run), timeout, &cancel, stop).await;
    let outcome = after_stop(outcome, stop, &settled);
    if let Some(hook_ctx) = &hook_ctx {
        let end = match &outcome {
            Outcome::Succeeded(_) | Outcome::Committed => RunEnd::Succeeded,
            Outcome::Failed(error) => RunEnd::Failed(error.message().to_owned()),
            Outcome::Stopped(_) | Outcome::Suspended => RunEnd::Stopped,
        };
        for hook in shared.hooks.iter().rev() {
            hook.finished(hook_ctx, &end).await;
        }
    }
    outcome
}

/// The outcome of the handler's `task`, whichever comes first: the task's end, its `timeout`
/// (the handler's token `cancel` cancelled and the task aborted: a retryable failure), or the
/// job's stop (the task given [`STOP_GRACE`] to return, then aborted: stopped).
async fn supervise(
    shared: &Shared,
    mut task: tokio::task::JoinHandle<JobResult<Payload>>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    stop: &Stop,
) -> Outcome {
    let expired = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        joined = &mut task => match joined {
            Ok(Ok(output)) => match shared.store.result_text(&output) {
                Ok(text) => Outcome::Succeeded(text),
                // Over the limit: a failed attempt, never a truncated result. Permanent: the
                // same handler would return the same result again (a webhook delivered twice).
                Err(e) => Outcome::Failed(JobError::permanent(e)),
            },
            Ok(Err(error)) => Outcome::Failed(error),
            Err(e) if e.is_panic() => Outcome::Failed(JobError::retryable(format!(
                "handler panicked: {}",
                panic_message(e.into_panic())
            ))),
            Err(_) => Outcome::Failed(JobError::retryable("handler task was aborted")),
        },
        _ = expired => {
            cancel.cancel();
            task.abort();
            Outcome::Failed(JobError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(timeout.unwrap_or_default())
            )))
        }
        _ = stop.token.cancelled() => {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
            }
            Outcome::Stopped(stop.reason().unwrap_or(StopReason::Shutdown))
        }
    }
}

/// The outcome to report: [`Outcome::Committed`] when the handler committed the job itself,
/// [`Outcome::Stopped`] for a failure once a stop has fired, else `outcome` as it is.
fn after_stop(outcome: Outcome, stop: &Stop, settled: &Settled) -> Outcome {
    // Once a stop has fired, a failure is taken as its consequence (the handler saw its token
    // cancelled), whichever branch of `supervise` won the race: the job is handed back or the result
    // dropped, never charged as a failed attempt. A success still counts: it is reported under
    // the lease and the fence decides whether it lands.
    match (outcome, stop.reason()) {
        // Committed by the handler: the job succeeded, whatever happened after.
        _ if settled.committed() => Outcome::Committed,
        // Slept or parked: the job was moved under the lease; nothing to report.
        _ if settled.suspended() => Outcome::Suspended,
        (Outcome::Failed(_), Some(reason)) => Outcome::Stopped(reason),
        (outcome, _) => outcome,
    }
}

/// Hand the outcome to the reporter under the job's lease; a lost lease reports nothing.
fn report(shared: &Shared, claimed: Claimed, outcome: Outcome) {
    let (job, lease) = (claimed.job, claimed.lease);
    let what = match outcome {
        Outcome::Committed => {
            shared
                .metrics
                .jobs_succeeded
                .with_label_values(&[&job.queue, &job.kind])
                .inc();
            shared.active.remove(lease.token);
            return;
        }
        Outcome::Suspended => {
            shared.active.remove(lease.token);
            return;
        }
        Outcome::Succeeded(result) => ReportKind::Complete(result),
        Outcome::Failed(error) => ReportKind::Fail(error),
        Outcome::Stopped(StopReason::Lost(reason)) => {
            shared.active.remove(lease.token);
            shared.lease_lost(&job.queue, job.id, reason);
            return;
        }
        Outcome::Stopped(StopReason::Shutdown | StopReason::SelfFence) => ReportKind::Release,
    };
    shared.report(Report {
        lease,
        queue: job.queue,
        kind: job.kind,
        what,
        replaced: false,
    });
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
