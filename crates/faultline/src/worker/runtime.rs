//! The worker: a claim loop that fills free slots in one round trip, plus its helpers
//! (listener, heartbeat, reporter, registry row, maintainer candidate), and the shutdown
//! sequence.
//!
//! ```text
//!            NOTIFY ──► listener ──wake──┐
//!                         poll interval ─┤
//!                                        ▼
//!   claim_batch(free slots) ◄── claim loop ◄── slot freed
//!        │ one task per job (handler in its own task: timeout, panic, stop)
//!        ▼
//!   reporter ── complete_batch / fail_attempt / release (fenced, retried through outages)
//!   heartbeat ── heartbeat_batch every ttl/3 (fenced); lost → stop; silent 2/3 ttl → self-fence
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::active::{ActiveJob, ActiveJobs, Stop, StopReason};
use super::config::{ConfigError, WorkerConfig};
use super::handler::HandlerRegistry;
use super::health::DbHealth;
use super::hook::ExecutionHook;
use super::prefetch::{PrefetchBuffer, Prefetched};
use super::shared::{Report, ReportKind};
use super::shared::{Shared, DB_RETRY};
use super::{attempt, heartbeat, listener, presence, reporter};
use crate::maintenance::Maintainer;
use crate::metrics::Metrics;
use crate::store::{ClaimOutcome, Claimed, Store};

/// Runs jobs from the store with the handlers of a registry. See the module docs.
pub struct Worker {
    store: Store,
    registry: Arc<HandlerRegistry>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    hooks: Vec<Arc<dyn ExecutionHook>>,
}

/// `config` with its queues filled in when it names none: `default` and every queue a typed
/// handler of `registry` sends its jobs to. When it names some, each typed handler whose queue
/// is not among them is warned about at start (its jobs would wait for another worker).
fn serve_handlers_queues(mut config: WorkerConfig, registry: &HandlerRegistry) -> WorkerConfig {
    let typed = registry.typed_queues();
    if config.queues.is_empty() {
        config.queues.push(crate::job::DEFAULT_QUEUE.to_owned());
        config.queues.extend(
            typed
                .into_iter()
                .map(|(queue, _)| queue)
                .filter(|q| q != crate::job::DEFAULT_QUEUE),
        );
        return config;
    }
    for (queue, kinds) in typed {
        if !config.queues.contains(&queue) {
            tracing::warn!(
                queue = %queue,
                kinds = %kinds.join(", "),
                "this worker registers handlers for kinds whose jobs go to queue {queue:?}, \
                 which it does not serve: they wait for another worker"
            );
        }
    }
    config
}

impl Worker {
    /// A worker over `store` running `registry`'s handlers.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting that cannot work.
    pub fn new(
        store: Store,
        registry: HandlerRegistry,
        config: WorkerConfig,
    ) -> Result<Self, ConfigError> {
        let config = serve_handlers_queues(config, &registry);
        config.validate()?;
        Ok(Worker {
            store,
            registry: Arc::new(registry),
            config,
            metrics: Arc::new(Metrics::new()),
            // With traces on, the outermost hook: every other hook's work is inside the span.
            #[cfg(feature = "otel")]
            hooks: vec![Arc::new(crate::otel::TracingHook)],
            #[cfg(not(feature = "otel"))]
            hooks: Vec::new(),
        })
    }

    /// Run `hook` around every handler run, inside the hooks added before it (see
    /// [`ExecutionHook`] for the order).
    pub fn with_hook(mut self, hook: Arc<dyn ExecutionHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Count into `metrics` (to share one registry with other components of the process).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The worker's settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Run until `shutdown` is cancelled, then shut down gracefully: stop claiming, let
    /// in-flight handlers finish within `shutdown_grace`, cancel the rest and hand their jobs
    /// back (eligible at once, attempt not counted), record every result, and return.
    ///
    /// Survives the database going away: every loop backs off (with jitter, capped at 5 s)
    /// and carries on when it returns. Never panics because of a job: handler panics are
    /// caught and recorded as retryable failures.
    pub async fn run(self, shutdown: CancellationToken) {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            hooks: self.hooks,
            worker_id: Arc::from(self.config.worker_id.as_str()),
            instance: uuid::Uuid::now_v7(),
            started_at: chrono::Utc::now(),
            health: DbHealth::new(self.metrics.clone()),
            store: self.store,
            registry: self.registry,
            config: self.config,
            metrics: self.metrics,
            active: ActiveJobs::default(),
            inflight: AtomicUsize::new(0),
            prefetched: PrefetchBuffer::default(),
            slot_freed: Notify::new(),
            fenced: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            reports: reports_tx,
            tasks: TaskTracker::new(),
        });
        shared
            .metrics
            .init_worker_series(&shared.config.queues, &shared.registry.kinds());
        let helpers = Helpers::start(&shared, reports_rx);
        tracing::info!(
            worker_id = %shared.worker_id,
            queues = ?shared.config.queues,
            concurrency = shared.config.concurrency,
            prefetch = shared.config.prefetch,
            lease_ttl = %humantime::format_duration(shared.config.lease_ttl),
            "worker started"
        );
        claim_loop(&shared, &shared.wake.clone(), &shutdown).await;
        shut_down(&shared, helpers).await;
        tracing::info!(worker_id = %shared.worker_id, "worker stopped");
    }
}

/// The tasks beside the claim loop, and the tokens that stop them in order.
struct Helpers {
    /// Listener, registry row, maintainer: stopped last.
    background: CancellationToken,
    services: Vec<tokio::task::JoinHandle<()>>,
    heartbeat: tokio::task::JoinHandle<()>,
    heartbeat_stop: CancellationToken,
    reporter: tokio::task::JoinHandle<()>,
    /// Write what is pending, then return.
    finish_reports: CancellationToken,
    /// Return even with reports unwritten (the database stayed away).
    give_up_reports: CancellationToken,
}

impl Helpers {
    fn start(shared: &Arc<Shared>, reports: mpsc::UnboundedReceiver<Report>) -> Helpers {
        let background = CancellationToken::new();
        let mut services = vec![tokio::spawn(listener::run(
            shared.clone(),
            shared.wake.clone(),
            background.clone(),
        ))];
        services.push(tokio::spawn(presence::run(
            shared.clone(),
            background.clone(),
        )));
        if let Some(config) = shared.config.maintainer.clone() {
            let maintainer = Maintainer::new(
                shared.store.clone(),
                config,
                shared.metrics.clone(),
                shared.worker_id.to_string(),
            )
            .with_instance(shared.instance);
            services.push(tokio::spawn(maintainer.run(background.clone())));
        }
        let heartbeat_stop = CancellationToken::new();
        let finish_reports = CancellationToken::new();
        let give_up_reports = CancellationToken::new();
        Helpers {
            heartbeat: tokio::spawn(heartbeat::run(shared.clone(), heartbeat_stop.clone())),
            reporter: tokio::spawn(reporter::run(
                shared.clone(),
                reports,
                finish_reports.clone(),
                give_up_reports.clone(),
            )),
            background,
            services,
            heartbeat_stop,
            finish_reports,
            give_up_reports,
        }
    }
}

/// The shutdown sequence, once the claim loop has stopped claiming: hand prefetched jobs back,
/// let running handlers finish within the grace period, stop and hand back the rest, record
/// every result (heartbeats going on meanwhile), then stop the helpers.
async fn shut_down(shared: &Arc<Shared>, mut helpers: Helpers) {
    let handed_back = hand_back_prefetched(shared);
    if handed_back > 0 {
        tracing::info!(
            jobs = handed_back,
            "shutting down: handing back prefetched jobs"
        );
    }
    let grace = shared.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let running = shared.inflight.load(Ordering::Acquire);
    if running > 0 {
        tracing::info!(
            running,
            "shutting down: waiting up to {} for in-flight jobs",
            humantime::format_duration(grace)
        );
    }
    while shared.inflight.load(Ordering::Acquire) > 0 {
        tokio::select! {
            _ = shared.slot_freed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let stopped = shared.active.stop_running(StopReason::Shutdown);
    if stopped > 0 {
        tracing::info!(
            jobs = stopped,
            "grace period over: cancelled unfinished jobs and handing them back"
        );
    }
    shared.tasks.close();
    shared.tasks.wait().await;

    // If the database stays away for a whole lease, give up: those leases expire and the jobs
    // run again elsewhere.
    helpers.finish_reports.cancel();
    if tokio::time::timeout(shared.config.lease_ttl, &mut helpers.reporter)
        .await
        .is_err()
    {
        helpers.give_up_reports.cancel();
        let _ = helpers.reporter.await;
    }
    helpers.heartbeat_stop.cancel();
    helpers.background.cancel();
    let _ = helpers.heartbeat.await;
    for service in helpers.services {
        let _ = service.await;
    }
}

async fn claim_loop(shared: &Arc<Shared>, wake: &Notify, shutdown: &CancellationToken) {
    let concurrency = shared.config.concurrency as usize;
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Flow::Stop = claim_once(shared, wake, shutdown, concurrency, &mut failures).await {
            return;
        }
    }
}

/// What the claim loop does after one pass.
enum Flow {
    /// Go round again.
    Continue,
    /// Shutdown: leave the loop.
    Stop,
}

/// One pass of the claim loop: leave self-fencing once the database answers, start buffered
/// jobs, then claim for the free room and start or buffer what came; when the queues are
/// drained for now, wait for work. `failures` counts the database calls failed in a row.
async fn claim_once(
    shared: &Arc<Shared>,
    wake: &Notify,
    shutdown: &CancellationToken,
    concurrency: usize,
    failures: &mut u32,
) -> Flow {
    if shared.fenced.load(Ordering::Acquire) {
        if let Some(flow) = probe_while_fenced(shared, shutdown, failures).await {
            return flow;
        }
    }
    launch_prefetched(shared, concurrency);
    let free = claim_room(shared, concurrency);
    if free == 0 {
        tokio::select! {
            _ = shared.slot_freed.notified() => {}
            _ = shutdown.cancelled() => return Flow::Stop,
        }
        gather_slots(shared, concurrency).await;
        return Flow::Continue;
    }
    let sent = Instant::now();
    let outcome = match shared
        .store
        .claim_with_throttles(
            &shared.config.queues,
            &shared.worker_id,
            free as u32,
            shared.config.lease_ttl,
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            shared.health.failed("claim", &e);
            *failures += 1;
            return after_failure(*failures, shutdown).await;
        }
    };
    shared.health.ok();
    *failures = 0;
    let throttled = !outcome.throttled.is_empty();
    if start_claimed(shared, outcome, sent, concurrency) == free {
        // There may be more: claim again as soon as a slot frees.
        return Flow::Continue;
    }
    wait_for_work(shared, wake, shutdown, throttled).await
}

/// Self-fenced: claim nothing until the database answers a probe. `None` once it answered
/// (fence lifted, go on with this pass); otherwise what to do after backing off.
async fn probe_while_fenced(
    shared: &Shared,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> Option<Flow> {
    match shared.store.ping().await {
        Ok(_) => {
            shared.fenced.store(false, Ordering::Release);
            shared.health.ok();
            *failures = 0;
            None
        }
        Err(e) => {
            shared.health.failed("probe", &e.into());
            *failures += 1;
            Some(after_failure(*failures, shutdown).await)
        }
    }
}

/// Back off after the `failures`th failed call in a row: [`Flow::Stop`] if shutdown came
/// meanwhile.
async fn after_failure(failures: u32, shutdown: &CancellationToken) -> Flow {
    if backoff(failures, shutdown).await {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// Count the claims `outcome`'s limits held back, and start each claimed job (held from now
/// on) in a free slot, or buffer it when none is free. Returns how many jobs were claimed.
fn start_claimed(
    shared: &Arc<Shared>,
    outcome: ClaimOutcome,
    sent: Instant,
    concurrency: usize,
) -> usize {
    for (queue, reason) in &outcome.throttled {
        shared
            .metrics
            .claims_throttled
            .with_label_values(&[queue.as_str(), reason.as_str()])
            .inc();
    }
    let batch = outcome.claimed;
    let claimed = batch.len();
    for job in batch {
        let stop = hold(shared, &job, sent);
        if shared.inflight.load(Ordering::Acquire) < concurrency {
            launch(shared, job, stop);
        } else {
            shared.prefetched.push(Prefetched { claimed: job, stop });
        }
    }
    claimed
}

/// The queue is drained for now: wait for a notification, the poll interval, or shutdown
/// ([`Flow::Stop`]) — or, with jobs buffered or a claim held back by a limit, for a slot.
async fn wait_for_work(
    shared: &Shared,
    wake: &Notify,
    shutdown: &CancellationToken,
    throttled: bool,
) -> Flow {
    // The queue is drained for now: wait for a notification, the poll interval, or
    // shutdown — or, with jobs buffered, for a slot to start the next one in.
    // A limit that held the claim back may have room again as soon as one of this worker's
    // own jobs of that queue finishes; other workers' completions are seen at the poll.
    let buffered = shared.prefetched.len() > 0;
    tokio::select! {
        _ = wake.notified() => {}
        _ = shared.slot_freed.notified(), if buffered || throttled => {}
        _ = tokio::time::sleep(shared.config.poll_interval) => {}
        _ = shutdown.cancelled() => return Flow::Stop,
    }
    Flow::Continue
}

/// How many jobs to claim now: room for `concurrency` handlers and `prefetch` buffered jobs,
/// less those held, but never so many that this worker would hold more than
/// `MAX_HELD_PER_SLOT × concurrency + prefetch` leases. Leases are held from the claim until the
/// result is written; when results cannot be written as fast as handlers finish (a slow or
/// overloaded database), every further claim would only become an expired lease and a wasted
/// attempt, so the worker stops claiming until its reports catch up (backpressure).
fn claim_room(shared: &Shared, concurrency: usize) -> usize {
    let prefetch = shared.config.prefetch as usize;
    let held = shared.inflight.load(Ordering::Acquire) + shared.prefetched.len();
    let room = (concurrency + prefetch).saturating_sub(held);
    let lease_room =
        (concurrency * MAX_HELD_PER_SLOT + prefetch).saturating_sub(shared.active.len());
    room.min(lease_room)
}

/// See [`claim_room`].
const MAX_HELD_PER_SLOT: usize = 2;

/// Start buffered jobs in the free handler slots. A job whose lease was lost while it waited is
/// dropped (the heartbeat found it cancelled or taken); one whose lease went unrenewed long
/// enough to have lapsed is handed back rather than run.
fn launch_prefetched(shared: &Arc<Shared>, concurrency: usize) {
    while shared.inflight.load(Ordering::Acquire) < concurrency {
        let Some(next) = shared.prefetched.pop() else {
            return;
        };
        let token = next.claimed.lease.token;
        if next.stop.reason().is_some() {
            shared.active.remove(token);
            continue;
        }
        if shared
            .active
            .unrenewed_for(token, shared.config.fence_after())
        {
            release(shared, next.claimed);
            continue;
        }
        launch(shared, next.claimed, next.stop);
    }
}

/// Hand every buffered job back; returns how many.
fn hand_back_prefetched(shared: &Arc<Shared>) -> usize {
    let buffered = shared.prefetched.drain();
    let n = buffered.len();
    for job in buffered {
        if job.stop.reason().is_some() {
            shared.active.remove(job.claimed.lease.token);
        } else {
            release(shared, job.claimed);
        }
    }
    n
}

fn release(shared: &Shared, claimed: Claimed) {
    shared.report(Report {
        lease: claimed.lease,
        queue: claimed.job.queue,
        kind: claimed.job.kind,
        what: ReportKind::Release,
        replaced: false,
    });
}

/// How long a full worker that just got a free slot waits for more before claiming: short jobs
/// finish in bursts, and one claim for the burst costs one round trip and one commit instead of
/// one per job.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// After a slot frees in a full worker, wait up to [`BATCH_WINDOW`] until half the slots are
/// free. A worker with one slot never waits.
async fn gather_slots(shared: &Shared, concurrency: usize) {
    let enough = (concurrency + shared.config.prefetch as usize).div_ceil(2);
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    while claim_room(shared, concurrency) < enough {
        tokio::select! {
            _ = shared.slot_freed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Sleep for the `failures`-th backoff step; true if shutdown came first.
async fn backoff(failures: u32, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(DB_RETRY.delay(failures)) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Count the claim and hold its lease (renewed by the heartbeat from now on).
fn hold(shared: &Shared, claimed: &Claimed, sent: Instant) -> Arc<Stop> {
    let queue = claimed.job.queue.clone();
    shared
        .metrics
        .jobs_claimed
        .with_label_values(&[&queue])
        .inc();
    if claimed.recovered {
        shared
            .metrics
            .jobs_recovered
            .with_label_values(&[&queue])
            .inc();
    }
    shared
        .metrics
        .job_wait_seconds
        .with_label_values(&[&queue])
        .observe(claimed.wait().as_secs_f64());
    let stop = Arc::new(Stop::default());
    shared.active.insert(ActiveJob {
        lease: claimed.lease.clone(),
        renewed: sent,
        stop: stop.clone(),
        running: false,
    });
    stop
}

/// Run a held job's handler in its own task.
fn launch(shared: &Arc<Shared>, claimed: Claimed, stop: Arc<Stop>) {
    shared.active.handler_started(claimed.lease.token);
    shared.inflight.fetch_add(1, Ordering::AcqRel);
    shared.metrics.worker_inflight.inc();
    shared
        .tasks
        .spawn(attempt::run_job(shared.clone(), claimed, stop));
}
