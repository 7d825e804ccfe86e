//! Prometheus metrics: every metric name of docs/operations.md, as constants, registered on one [`Metrics`]
//! registry per process (the API and the worker each expose it on `/metrics`).
//!
//! Labels stay low-cardinality: queue, kind, state, op, method, matched route, status. Never a
//! job id, never a raw path.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `faultline_jobs_enqueued_total{queue,kind}`
pub(crate) const JOBS_ENQUEUED: &str = "faultline_jobs_enqueued_total";
/// `faultline_jobs_deduplicated_total{queue}`
pub(crate) const JOBS_DEDUPLICATED: &str = "faultline_jobs_deduplicated_total";
/// `faultline_jobs_claimed_total{queue}`
pub(crate) const JOBS_CLAIMED: &str = "faultline_jobs_claimed_total";
/// `faultline_jobs_succeeded_total{queue,kind}`
pub(crate) const JOBS_SUCCEEDED: &str = "faultline_jobs_succeeded_total";
/// `faultline_jobs_failed_total{queue,kind}` (terminal failures)
pub(crate) const JOBS_FAILED: &str = "faultline_jobs_failed_total";
/// `faultline_job_retries_total{queue,kind}`
pub(crate) const JOB_RETRIES: &str = "faultline_job_retries_total";
/// `faultline_lease_expirations_total{queue}`
pub(crate) const LEASE_EXPIRATIONS: &str = "faultline_lease_expirations_total";
/// `faultline_jobs_recovered_total{queue}`
pub(crate) const JOBS_RECOVERED: &str = "faultline_jobs_recovered_total";
/// `faultline_stale_completions_total{queue}`
pub(crate) const STALE_COMPLETIONS: &str = "faultline_stale_completions_total";
/// `faultline_db_errors_total{op}`
pub(crate) const DB_ERRORS: &str = "faultline_db_errors_total";
/// `faultline_http_requests_total{method,route,status}`
pub(crate) const HTTP_REQUESTS: &str = "faultline_http_requests_total";
/// `faultline_job_execution_seconds{queue,kind}`
pub(crate) const JOB_EXECUTION_SECONDS: &str = "faultline_job_execution_seconds";
/// `faultline_job_wait_seconds{queue}` (eligible → started)
pub(crate) const JOB_WAIT_SECONDS: &str = "faultline_job_wait_seconds";
/// `faultline_http_request_duration_seconds{method,route}`
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "faultline_http_request_duration_seconds";
/// `faultline_queue_depth{queue,state}`
pub(crate) const QUEUE_DEPTH: &str = "faultline_queue_depth";
/// `faultline_queue_oldest_age_seconds{queue}`
pub(crate) const QUEUE_OLDEST_AGE_SECONDS: &str = "faultline_queue_oldest_age_seconds";
/// `faultline_worker_inflight`
pub(crate) const WORKER_INFLIGHT: &str = "faultline_worker_inflight";
/// `faultline_db_up`
pub(crate) const DB_UP: &str = "faultline_db_up";
/// `faultline_leader` (1 while this process holds the maintainer's term)
pub(crate) const LEADER: &str = "faultline_leader";
/// `faultline_queue_paused{queue}` (1 while the queue is paused; sampled with the depth)
pub(crate) const QUEUE_PAUSED: &str = "faultline_queue_paused";

/// `faultline_claims_throttled_total{queue,reason}` (claims a queue's limit held back)
pub(crate) const CLAIMS_THROTTLED: &str = "faultline_claims_throttled_total";
/// `faultline_schedule_enqueued_total{schedule}`
pub(crate) const SCHEDULE_ENQUEUED: &str = "faultline_schedule_enqueued_total";
/// `faultline_schedule_misfires_total{schedule}` (slots missed while nothing was up to fire)
pub(crate) const SCHEDULE_MISFIRES: &str = "faultline_schedule_misfires_total";

/// `faultline_steps_recorded_total` (durable steps recorded, by workers and over HTTP)
pub(crate) const STEPS_RECORDED: &str = "faultline_steps_recorded_total";
/// `faultline_signals_received_total` (signals kept for jobs)
pub(crate) const SIGNALS_RECEIVED: &str = "faultline_signals_received_total";

/// Every metric name above, for tests and dashboards to check against.
pub const ALL_NAMES: [&str; 25] = [
    JOBS_ENQUEUED,
    JOBS_DEDUPLICATED,
    JOBS_CLAIMED,
    JOBS_SUCCEEDED,
    JOBS_FAILED,
    JOB_RETRIES,
    LEASE_EXPIRATIONS,
    JOBS_RECOVERED,
    STALE_COMPLETIONS,
    DB_ERRORS,
    HTTP_REQUESTS,
    JOB_EXECUTION_SECONDS,
    JOB_WAIT_SECONDS,
    HTTP_REQUEST_DURATION_SECONDS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE_SECONDS,
    WORKER_INFLIGHT,
    DB_UP,
    LEADER,
    QUEUE_PAUSED,
    CLAIMS_THROTTLED,
    SCHEDULE_ENQUEUED,
    SCHEDULE_MISFIRES,
    STEPS_RECORDED,
    SIGNALS_RECEIVED,
];

/// Every `op` label of `faultline_db_errors_total`, created at zero.
pub(crate) const DB_OPS: [&str; 22] = [
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "release",
    "listen",
    "probe",
    "reap",
    "prune",
    "sample",
    "enqueue",
    "enqueue_batch",
    "get",
    "list",
    "cancel",
    "retry",
    "queue_stats",
    "elect",
    "register",
    "workers",
    "queue_settings",
    "schedule",
];

/// Job execution buckets: from a no-op (sub-millisecond) to long jobs (10 min).
const EXECUTION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];
/// Wait and HTTP buckets: a millisecond to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process's metrics. Cheap to share behind an `Arc`; every field is a handle into the
/// registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Jobs created by enqueue (replays excluded).
    pub jobs_enqueued: IntCounterVec,
    /// Enqueue requests answered with an existing job (idempotent replays).
    pub jobs_deduplicated: IntCounterVec,
    /// Jobs claimed by workers.
    pub jobs_claimed: IntCounterVec,
    /// Jobs that succeeded.
    pub jobs_succeeded: IntCounterVec,
    /// Jobs that failed for good.
    pub jobs_failed: IntCounterVec,
    /// Failed attempts that were re-queued for another try.
    pub job_retries: IntCounterVec,
    /// Leases taken back by the reaper after their worker stopped heartbeating.
    pub lease_expirations: IntCounterVec,
    /// Claims of jobs that came back from an expired lease.
    pub jobs_recovered: IntCounterVec,
    /// Reports rejected because the lease was no longer the job's live lease.
    pub stale_completions: IntCounterVec,
    /// Database calls that failed, by operation.
    pub db_errors: IntCounterVec,
    /// HTTP requests by method, matched route and status.
    pub http_requests: IntCounterVec,
    /// Claims a queue's limit held back, by queue and reason.
    pub claims_throttled: IntCounterVec,
    /// Jobs enqueued by schedules.
    pub schedule_enqueued: IntCounterVec,
    /// Schedule slots missed while nothing was up to fire them.
    pub schedule_misfires: IntCounterVec,
    /// Durable steps recorded (docs/durable.md).
    pub steps_recorded: IntCounter,
    /// Signals kept for jobs (the first of a name; a duplicate is not counted).
    pub signals_received: IntCounter,
    /// Handler run time.
    pub job_execution_seconds: HistogramVec,
    /// Time from eligible to started.
    pub job_wait_seconds: HistogramVec,
    /// HTTP request duration by method and matched route.
    pub http_request_duration_seconds: HistogramVec,
    /// Jobs per queue and state (sampled from the database).
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest eligible job per queue (sampled from the database).
    pub queue_oldest_age_seconds: GaugeVec,
    /// 1 for a paused queue, 0 otherwise (sampled from the database).
    pub queue_paused: IntGaugeVec,
    /// Handlers running in this process.
    pub worker_inflight: IntGauge,
    /// 1 while the last database call succeeded, 0 after one failed to reach the database.
    pub db_up: Gauge,
    /// 1 while this process holds a current maintainer term. Rendered from the term's local
    /// deadline at every scrape (see [`Metrics::set_leader_until`]), so a process that stalled
    /// past its term reads 0 the moment it resumes, before its election loop has run again.
    leader: IntGauge,
    leader_until: Arc<Mutex<Option<Instant>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs = JobCounters::register(&registry);
        let ops = OperationCounters::register(&registry);
        let timings = Histograms::register(&registry);
        let gauges = Gauges::register(&registry);
        let metrics = Metrics {
            jobs_enqueued: jobs.enqueued,
            jobs_deduplicated: jobs.deduplicated,
            jobs_claimed: jobs.claimed,
            jobs_succeeded: jobs.succeeded,
            jobs_failed: jobs.failed,
            job_retries: jobs.retries,
            lease_expirations: jobs.lease_expirations,
            jobs_recovered: jobs.recovered,
            stale_completions: jobs.stale_completions,
            db_errors: ops.db_errors,
            http_requests: ops.http_requests,
            claims_throttled: ops.claims_throttled,
            schedule_enqueued: ops.schedule_enqueued,
            schedule_misfires: ops.schedule_misfires,
            steps_recorded: register(
                &registry,
                IntCounter::new(STEPS_RECORDED, "Durable steps recorded.").expect("valid counter"),
            ),
            signals_received: register(
                &registry,
                IntCounter::new(SIGNALS_RECEIVED, "Signals kept for jobs.").expect("valid counter"),
            ),
            job_execution_seconds: timings.job_execution_seconds,
            job_wait_seconds: timings.job_wait_seconds,
            http_request_duration_seconds: timings.http_request_duration_seconds,
            queue_depth: gauges.queue_depth,
            queue_oldest_age_seconds: gauges.queue_oldest_age_seconds,
            queue_paused: gauges.queue_paused,
            worker_inflight: gauges.worker_inflight,
            db_up: gauges.db_up,
            leader: gauges.leader,
            leader_until: Arc::default(),
            registry,
        };
        metrics.db_up.set(1.0);
        for op in DB_OPS {
            metrics.db_errors.with_label_values(&[op]);
        }
        metrics
    }

    /// Create every per-queue and per-kind series a worker of `queues` running `kinds` can
    /// produce, at zero, so that "nothing happened" reads as 0 rather than as a missing series
    /// (alerts on rates and absent series both need this).
    pub fn init_worker_series(&self, queues: &[String], kinds: &[String]) {
        for queue in queues {
            let q = [queue.as_str()];
            self.jobs_claimed.with_label_values(&q);
            self.jobs_recovered.with_label_values(&q);
            self.lease_expirations.with_label_values(&q);
            self.stale_completions.with_label_values(&q);
            self.job_wait_seconds.with_label_values(&q);
            for reason in crate::store::Throttle::ALL {
                self.claims_throttled
                    .with_label_values(&[queue.as_str(), reason.as_str()]);
            }
            for kind in kinds {
                let qk = [queue.as_str(), kind.as_str()];
                self.jobs_succeeded.with_label_values(&qk);
                self.jobs_failed.with_label_values(&qk);
                self.job_retries.with_label_values(&qk);
                self.job_execution_seconds.with_label_values(&qk);
            }
        }
    }

    /// The registry, to render or to register more collectors on.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record this process's maintainer term: held until `until` (local monotonic clock), or
    /// not held (`None`).
    pub fn set_leader_until(&self, until: Option<Instant>) {
        *self.leader_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// Whether this process holds a maintainer term now (by its local deadline).
    pub fn is_leader(&self) -> bool {
        self.leader_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.leader.set(i64::from(self.is_leader()));
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    /// Count a failed database call under `op`, and mark the database down when the failure
    /// means it could not be reached.
    pub fn db_error(&self, op: &str, error: &crate::StoreError) {
        self.db_errors.with_label_values(&[op]).inc();
        if error.is_unavailable() {
            self.db_up.set(0.0);
        }
    }
}

/// Register `collector` on `registry` and hand it back. The names are constants of this module,
/// registered once per fresh registry, so a clash is a programming error.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// Register an integer counter family on `registry` and hand it back.
fn register_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

/// Register a histogram family with `buckets` on `registry` and hand it back.
fn register_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid histogram"),
    )
}

/// The counters of a job's life (enqueue to finish), registered in field order.
struct JobCounters {
    enqueued: IntCounterVec,
    deduplicated: IntCounterVec,
    claimed: IntCounterVec,
    succeeded: IntCounterVec,
    failed: IntCounterVec,
    retries: IntCounterVec,
    lease_expirations: IntCounterVec,
    recovered: IntCounterVec,
    stale_completions: IntCounterVec,
}

impl JobCounters {
    /// Register every job counter on `registry`, in field order.
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register_counter(registry, name, help, labels)
        };
        JobCounters {
            enqueued: counter(
                JOBS_ENQUEUED,
                "Jobs created by enqueue.",
                &["queue", "kind"],
            ),
            deduplicated: counter(
                JOBS_DEDUPLICATED,
                "Enqueues answered with an existing job (same idempotency key and request).",
                &["queue"],
            ),
            claimed: counter(JOBS_CLAIMED, "Jobs claimed by workers.", &["queue"]),
            succeeded: counter(JOBS_SUCCEEDED, "Jobs that succeeded.", &["queue", "kind"]),
            failed: counter(
                JOBS_FAILED,
                "Jobs that failed for good (attempts spent or permanent error).",
                &["queue", "kind"],
            ),
            retries: counter(
                JOB_RETRIES,
                "Failed attempts re-queued with backoff.",
                &["queue", "kind"],
            ),
            lease_expirations: counter(
                LEASE_EXPIRATIONS,
                "Leases taken back after their worker stopped heartbeating.",
                &["queue"],
            ),
            recovered: counter(
                JOBS_RECOVERED,
                "Claims of jobs that came back from an expired lease.",
                &["queue"],
            ),
            stale_completions: counter(
                STALE_COMPLETIONS,
                "Reports rejected because the worker no longer held the job's lease.",
                &["queue"],
            ),
        }
    }
}

/// The counters of the process's other operations: database calls, HTTP requests, throttled
/// claims and schedules, registered in field order.
struct OperationCounters {
    db_errors: IntCounterVec,
    http_requests: IntCounterVec,
    claims_throttled: IntCounterVec,
    schedule_enqueued: IntCounterVec,
    schedule_misfires: IntCounterVec,
}

impl OperationCounters {
    /// Register every operation counter on `registry`, in field order.
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register_counter(registry, name, help, labels)
        };
        OperationCounters {
            db_errors: counter(DB_ERRORS, "Failed database calls by operation.", &["op"]),
            http_requests: counter(
                HTTP_REQUESTS,
                "HTTP requests by method, matched route and status.",
                &["method", "route", "status"],
            ),
            claims_throttled: counter(
                CLAIMS_THROTTLED,
                "Claims a queue's pause or limit held back, by reason.",
                &["queue", "reason"],
            ),
            schedule_enqueued: counter(
                SCHEDULE_ENQUEUED,
                "Jobs enqueued by a schedule.",
                &["schedule"],
            ),
            schedule_misfires: counter(
                SCHEDULE_MISFIRES,
                "Schedule slots missed while nothing was up to fire them.",
                &["schedule"],
            ),
        }
    }
}

/// The duration histograms, registered in field order.
struct Histograms {
    job_execution_seconds: HistogramVec,
    job_wait_seconds: HistogramVec,
    http_request_duration_seconds: HistogramVec,
}

impl Histograms {
    /// Register every histogram on `registry`, in field order.
    fn register(registry: &Registry) -> Self {
        Histograms {
            job_execution_seconds: register_histogram(
                registry,
                JOB_EXECUTION_SECONDS,
                "Handler run time.",
                &["queue", "kind"],
                EXECUTION_BUCKETS,
            ),
            job_wait_seconds: register_histogram(
                registry,
                JOB_WAIT_SECONDS,
                "Time from a job becoming eligible to its start.",
                &["queue"],
                LATENCY_BUCKETS,
            ),
            http_request_duration_seconds: register_histogram(
                registry,
                HTTP_REQUEST_DURATION_SECONDS,
                "HTTP request duration by method and matched route.",
                &["method", "route"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// The gauges, registered in field order (all at their zero value).
struct Gauges {
    queue_depth: IntGaugeVec,
    queue_oldest_age_seconds: GaugeVec,
    queue_paused: IntGaugeVec,
    worker_inflight: IntGauge,
    db_up: Gauge,
    leader: IntGauge,
}

impl Gauges {
    /// Register every gauge on `registry`, in field order.
    fn register(registry: &Registry) -> Self {
        Gauges {
            queue_depth: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(QUEUE_DEPTH, "Jobs per queue and state."),
                    &["queue", "state"],
                )
                .expect("valid gauge"),
            ),
            queue_oldest_age_seconds: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        QUEUE_OLDEST_AGE_SECONDS,
                        "Seconds the oldest eligible job of a queue has waited.",
                    ),
                    &["queue"],
                )
                .expect("valid gauge"),
            ),
            queue_paused: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(QUEUE_PAUSED, "1 while the queue is paused, else 0."),
                    &["queue"],
                )
                .expect("valid gauge"),
            ),
            worker_inflight: register(
                registry,
                IntGauge::new(WORKER_INFLIGHT, "Handlers running in this process.")
                    .expect("valid gauge"),
            ),
            db_up: register(
                registry,
                Gauge::new(DB_UP, "1 while the database answers, else 0.").expect("valid gauge"),
            ),
            leader: register(
                registry,
                IntGauge::new(
                    LEADER,
                    "1 while this process is the elected maintainer, else 0.",
                )
                .expect("valid gauge"),
            ),
        }
    }
}
