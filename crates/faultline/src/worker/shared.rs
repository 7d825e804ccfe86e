//! The state the worker's parts share, below all of them: the runtime creates it and hands it
//! down to the claim loop, the job tasks, the heartbeat, the listener and the reporter, none of
//! which knows the runtime (River's producer → executor / completer / notifier).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::task::TaskTracker;

use super::active::ActiveJobs;
use super::config::WorkerConfig;
use super::handler::{HandlerRegistry, JobError};
use super::health::DbHealth;
use super::hook::ExecutionHook;
use super::prefetch::PrefetchBuffer;
use crate::job::JobId;
use crate::lease::{Lease, LeaseLostReason};
use crate::metrics::Metrics;
use crate::retry::{Backoff, Jitter};
use crate::store::Store;

/// Backoff between passes while the database is unreachable.
pub(crate) const DB_RETRY: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
    jitter: Jitter::Equal,
};

/// State shared by the claim loop, the job tasks and the helper tasks.
pub(crate) struct Shared {
    pub hooks: Vec<Arc<dyn ExecutionHook>>,
    pub store: Store,
    pub registry: Arc<HandlerRegistry>,
    pub config: WorkerConfig,
    pub metrics: Arc<Metrics>,
    pub worker_id: Arc<str>,
    /// This process's instance (unique per start): its registry row and its maintainer term.
    pub instance: uuid::Uuid,
    /// When the worker started, as its registry row says.
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub active: ActiveJobs,
    pub health: DbHealth,
    /// Handlers running now; the claim loop asks for `concurrency - inflight` jobs (plus room in
    /// the prefetch buffer).
    pub inflight: AtomicUsize,
    /// Jobs claimed ahead of free handler slots (see `prefetch.rs`).
    pub prefetched: PrefetchBuffer,
    /// Signalled each time a handler finishes, so a full worker claims again at once.
    pub slot_freed: Notify,
    /// Set by self-fencing; the claim loop claims nothing until the database answers again.
    pub fenced: AtomicBool,
    /// Wakes the claim loop: a notification arrived, or a job this worker re-queued with backoff
    /// became eligible.
    pub wake: Arc<Notify>,
    pub reports: mpsc::UnboundedSender<Report>,
    /// Every job task, so shutdown can wait for them all.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn handler_done(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.metrics.worker_inflight.dec();
        self.slot_freed.notify_one();
    }

    /// Reports were written and their leases let go: a worker held back by backpressure may
    /// claim again.
    pub fn reports_landed(&self) {
        self.slot_freed.notify_one();
    }

    pub fn report(&self, report: Report) {
        // The receiver lives until every job task has finished, so this cannot fail in practice;
        // if it did, the lease would expire and the job would run again, which is safe.
        let _ = self.reports.send(report);
    }

    pub fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    /// Wake the claim loop after `delay`: when a job this worker re-queued with backoff becomes
    /// eligible, claim it then instead of at the next poll.
    pub fn wake_after(&self, delay: std::time::Duration) {
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            wake.notify_one();
        });
    }

    /// A result was discarded because the lease is gone.
    pub fn lease_lost(&self, queue: &str, job: JobId, reason: LeaseLostReason) {
        match reason {
            LeaseLostReason::Cancelled => {
                tracing::info!(%job, "job cancelled while running; its result is discarded")
            }
            LeaseLostReason::Superseded | LeaseLostReason::Gone => {
                self.metrics
                    .stale_completions
                    .with_label_values(&[queue])
                    .inc();
                tracing::warn!(%job, %reason, "lease lost; result discarded (stale)");
            }
        }
    }
}

/// What a job task hands the reporter: the outcome to record under a lease.
#[derive(Debug)]
pub(crate) enum ReportKind {
    /// With the handler's result as JSON text, if it returned one.
    Complete(Option<String>),
    Fail(JobError),
    Release,
}

impl ReportKind {
    /// The operation's name in `faultline_db_errors_total{op}`.
    pub fn op(&self) -> &'static str {
        match self {
            ReportKind::Complete(_) => "complete",
            ReportKind::Fail(_) => "fail",
            ReportKind::Release => "release",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Report {
    pub lease: Lease,
    pub queue: String,
    pub kind: String,
    pub what: ReportKind,
    /// This report replaces one the database refused for good (see `reporter::refused`): if
    /// it is refused too, it is not replaced again.
    pub replaced: bool,
}
