//! The reporter: records handler outcomes under their leases. Completions go out in batches
//! (`complete_batch`, fenced per lease) so a busy worker pays one round trip for many jobs.
//! When the database is unreachable, reports wait and are retried, always through the fenced
//! calls, until they land or the lease is known lost; nothing is ever written without the
//! token guard.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handler::JobError;
use super::shared::{Report, ReportKind, Shared, DB_RETRY};
use crate::lease::Lease;
use crate::store::FailOutcome;
use crate::StoreError;

/// Most reports written per pass.
const MAX_BATCH: usize = 1000;

/// Run until `finish` is cancelled and every report has been written, or `finish` is cancelled
/// and `give_up` fires (the database stayed away: the leases will expire and the reaper will
/// hand the jobs to another worker, so nothing is lost).
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    finish: CancellationToken,
    give_up: CancellationToken,
) {
    let mut pending: Vec<Report> = Vec::new();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            tokio::select! {
                report = reports.recv() => match report {
                    Some(report) => pending.push(report),
                    None => return,
                },
                _ = finish.cancelled() => {
                    while let Ok(report) = reports.try_recv() {
                        pending.push(report);
                    }
                    if pending.is_empty() {
                        return;
                    }
                }
            }
        }
        while pending.len() < MAX_BATCH {
            match reports.try_recv() {
                Ok(report) => pending.push(report),
                Err(_) => break,
            }
        }
        pending = flush(&shared, pending).await;
        if pending.is_empty() {
            failures = 0;
            continue;
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(DB_RETRY.delay(failures)) => {}
            _ = give_up.cancelled() => {
                tracing::warn!(
                    unreported = pending.len(),
                    "shutting down with results not recorded (database unreachable); their \
                     leases will expire and the jobs will run again elsewhere"
                );
                return;
            }
        }
    }
}

/// Write what can be written; return the reports to retry.
async fn flush(shared: &Shared, pending: Vec<Report>) -> Vec<Report> {
    let (completes, mut others): (Vec<Report>, Vec<Report>) = pending
        .into_iter()
        .partition(|r| matches!(r.what, ReportKind::Complete(_)));
    let mut retry = Vec::new();

    if !completes.is_empty() {
        flush_completes(shared, completes, &mut others, &mut retry).await;
    }

    // A queue rather than a loop over `others`: a refused report's replacement is written in
    // this same pass (at most one replacement per report, see `refused`).
    let mut queue: std::collections::VecDeque<Report> = others.into();
    while let Some(report) = queue.pop_front() {
        match write_one(shared, &report).await {
            Ok(outcome) => settle_written(shared, &report, outcome),
            Err(e @ StoreError::LeaseLost { .. }) => settle_rejected(shared, &report, e),
            Err(e) => {
                shared.health.failed(report.what.op(), &e);
                if e.is_permanent_database_error() {
                    if let Some(replacement) = refused(shared, report, &e) {
                        queue.push_back(replacement);
                    }
                } else {
                    retry.push(report);
                }
            }
        }
    }
    shared.reports_landed();
    retry
}

/// Write the successes `completes` in one fenced batch and settle each one's result. When the
/// database refused the batch itself they go to `others`, to be written one by one; when it
/// could not be reached, to `retry`.
async fn flush_completes(
    shared: &Shared,
    completes: Vec<Report>,
    others: &mut Vec<Report>,
    retry: &mut Vec<Report>,
) {
    let items: Vec<(&Lease, Option<&str>)> = completes
        .iter()
        .map(|r| match &r.what {
            ReportKind::Complete(result) => (&r.lease, result.as_deref()),
            _ => (&r.lease, None),
        })
        .collect();
    let outcome = shared.store.complete_many(&items).await;
    drop(items);
    match outcome {
        Ok(results) => {
            shared.health.ok();
            for (report, result) in completes.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        shared
                            .metrics
                            .jobs_succeeded
                            .with_label_values(&[&report.queue, &report.kind])
                            .inc();
                        shared.active.remove(report.lease.token);
                    }
                    Err(e) => settle_rejected(shared, &report, e),
                }
            }
        }
        Err(e) if e.is_permanent_database_error() => {
            // The database refused the batch itself (not our connection): report each alone
            // below, so one refused row cannot hold back the others.
            shared.health.failed("complete", &e);
            for report in completes {
                others.push(report);
            }
        }
        Err(e) => {
            shared.health.failed("complete", &e);
            retry.extend(completes);
        }
    }
}

/// Write one report through its fenced call. Returns the failed attempt's outcome for a
/// failure, `None` for a success or a release.
async fn write_one(shared: &Shared, report: &Report) -> Result<Option<FailOutcome>, StoreError> {
    match &report.what {
        ReportKind::Fail(error) if error.is_snooze() => shared
            .store
            .snooze(&report.lease, error.delay().unwrap_or_default())
            .await
            .map(|()| None),
        ReportKind::Fail(error) => shared
            .store
            .fail_attempt_after(
                &report.lease,
                error.message(),
                error.is_retryable(),
                error.delay(),
            )
            .await
            .map(Some),
        ReportKind::Release => shared.store.release(&report.lease).await.map(|()| None),
        ReportKind::Complete(result) => shared
            .store
            .complete_many(&[(&report.lease, result.as_deref())])
            .await
            .and_then(|mut results| results.pop().expect("one result per lease"))
            .map(|()| None),
    }
}

/// A report that landed: count it (a retry also wakes the claimer when the job is due again)
/// and forget its lease.
fn settle_written(shared: &Shared, report: &Report, outcome: Option<FailOutcome>) {
    shared.health.ok();
    let labels = [report.queue.as_str(), report.kind.as_str()];
    match outcome {
        Some(FailOutcome::Retrying(job)) => {
            shared.metrics.job_retries.with_label_values(&labels).inc();
            // Both times come from one now(): the delay is clock-independent.
            let delay = (job.next_run_at - job.updated_at)
                .to_std()
                .unwrap_or_default();
            shared.wake_after(delay);
        }
        Some(FailOutcome::Failed(_)) => shared.metrics.jobs_failed.with_label_values(&labels).inc(),
        None => {}
    }
    shared.active.remove(report.lease.token);
}

/// A report the database refused for good (not one it could not receive). Retrying it as it is
/// would fail the same way forever while heartbeats keep the lease alive: the job would be
/// wedged in `running`. So a refused success or failure becomes a failed attempt whose text is
/// our own (always storable), and if even that is refused, the report is dropped and the job
/// left to its lease: heartbeats stop, the lease expires and the reaper takes the job back,
/// recording the expiry. Returns the report to try next, if any.
fn refused(shared: &Shared, report: Report, error: &StoreError) -> Option<Report> {
    let code = match error {
        StoreError::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
    .unwrap_or_else(|| "none".to_owned());
    let fallback = match &report.what {
        _ if report.replaced => None,
        ReportKind::Complete(_) => Some(format!(
            "the database refused to record this attempt's success (SQLSTATE {code}); the \
             attempt is counted as failed"
        )),
        ReportKind::Fail(original) => Some(format!(
            "the database refused to record the handler's error (SQLSTATE {code}); its \
                 first 200 characters: {}",
            crate::text::truncate(&crate::text::storable(original.message()), 200)
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
        )),
        _ => None,
    };
    match fallback {
        Some(message) => {
            tracing::warn!(job = %report.lease.job_id, %error, "database refused a report; recording a failed attempt instead");
            Some(Report {
                what: ReportKind::Fail(JobError::retryable(message)),
                replaced: true,
                ..report
            })
        }
        None => {
            tracing::error!(job = %report.lease.job_id, %error, "database refused a report twice; leaving the job to its lease (the reaper will take it back)");
            shared.active.remove(report.lease.token);
            None
        }
    }
}

/// A report the fence rejected: the job is not ours any more; drop the result and count it.
fn settle_rejected(shared: &Shared, report: &Report, error: StoreError) {
    shared.active.remove(report.lease.token);
    match error {
        StoreError::LeaseLost { reason, .. } => {
            shared.lease_lost(&report.queue, report.lease.job_id, reason)
        }
        other => tracing::warn!(job = %report.lease.job_id, error = %other, "report rejected"),
    }
}
