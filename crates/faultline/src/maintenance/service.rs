//! The one loop every maintenance service runs in: a pass at once or after the first interval,
//! then one every interval (jittered), until stopped; a log line only when a pass did
//! something, and a counted error (not a log line a second) when the database refuses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::jittered;
use crate::metrics::Metrics;
use crate::StoreError;

/// What a pass reports.
pub trait Pass {
    /// Whether the pass changed nothing (nothing is logged then).
    fn is_empty(&self) -> bool;
    /// Log what the pass did (called only when it did something).
    fn log(&self);
}

/// A maintenance service: one pass at a time, on an interval.
pub trait Service: Send + Sync + 'static {
    /// What a pass returns.
    type Outcome: Pass + Send;
    /// The `op` label its database errors are counted under.
    const OP: &'static str;
    /// Time between passes.
    fn interval(&self) -> Duration;
    /// Whether the first pass runs at once rather than after one interval.
    fn starts_at_once(&self) -> bool {
        false
    }
    /// One pass.
    fn run_once(&self) -> impl Future<Output = Result<Self::Outcome, StoreError>> + Send;
}

/// Run `service` until `stop`; before each pass, `may_run` must say yes (the maintainer's term
/// is still current), else the pass is skipped.
pub(crate) async fn drive<S: Service>(
    service: &S,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
    may_run: impl Fn() -> bool,
) {
    let mut first = service.starts_at_once();
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(jittered(service.interval())) => {}
                _ = stop.cancelled() => return,
            }
        }
        first = false;
        if stop.is_cancelled() || !may_run() {
            continue;
        }
        let outcome = tokio::select! {
            outcome = service.run_once() => outcome,
            _ = stop.cancelled() => return,
        };
        match outcome {
            Ok(outcome) if outcome.is_empty() => {}
            Ok(outcome) => outcome.log(),
            Err(e) => metrics.db_error(S::OP, &e),
        }
    }
}
