//! Workers in the test process: a quick config, a running worker that stops on demand, waiting
//! for a job's state.

use std::sync::Arc;
use std::time::Duration;

use faultline::maintenance::{MaintainerConfig, ReaperConfig};
use faultline::metrics::Metrics;
use faultline::worker::{builtin_registry, HandlerRegistry, WebhookConfig, Worker, WorkerConfig};
use faultline::{Job, JobId, JobState, NewJob, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::wait_for;

pub fn config(id: &str) -> WorkerConfig {
    WorkerConfig {
        worker_id: id.to_owned(),
        concurrency: 8,
        lease_ttl: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        maintainer: Some(maintainer_config()),
        ..WorkerConfig::default()
    }
}

/// A maintainer for tests: a short term (a stopped leader is replaced within about 1.3 s) and an
/// eager reaper; no pruner or depth sampler.
pub fn maintainer_config() -> MaintainerConfig {
    MaintainerConfig {
        leader_ttl: Duration::from_secs(1),
        reaper: Some(ReaperConfig {
            interval: Duration::from_millis(50),
            ..ReaperConfig::default()
        }),
        pruner: None,
        depth: None,
        ..MaintainerConfig::default()
    }
}

/// A worker running in the background of the test.
pub struct Running {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    pub fn start(store: &Store, registry: HandlerRegistry, config: WorkerConfig) -> Running {
        let worker = Worker::new(store.clone(), registry, config).expect("valid worker config");
        let metrics = worker.metrics().clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Running {
            shutdown,
            handle,
            metrics,
        }
    }

    /// The worker's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Graceful shutdown; panics if the worker panicked.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("the worker must not panic");
    }

    pub fn count(&self, metric: &str) -> f64 {
        metric_sum(&self.metrics.render(), metric)
    }
}

/// The sum of every sample of `metric` in a text exposition.
pub fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn builtins() -> HandlerRegistry {
    builtin_registry(WebhookConfig::default()).unwrap()
}

pub async fn wait_for_state(store: &Store, id: JobId, state: JobState, timeout: Duration) -> Job {
    wait_for(&format!("job {id} to be {state}"), timeout, || async {
        let job = store.get(id).await.ok()?;
        (job.state == state).then_some(job)
    })
    .await
}

pub async fn enqueue(store: &Store, job: NewJob) -> JobId {
    store.enqueue(job).await.unwrap().job().id
}
