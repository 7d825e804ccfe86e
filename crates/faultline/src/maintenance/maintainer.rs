//! The maintainer: one elected process runs the background services (reaper, pruner, depth
//! sampler, registry janitor) for the whole cluster, instead of every process running them.
//!
//! Leadership is a lease row (`faultline.leader`, see `store/leader.rs`), held like a job's
//! lease: elected when the row's term has expired, renewed every third of the TTL, taken over by
//! another candidate once it lapses. Every process that may lead (`serve`, `worker`, `up`) runs
//! a `Maintainer` as a candidate.
//!
//! **Fencing.** A term is held until `t + ttl` on this process's monotonic clock, where `t` is
//! when the renewal that granted it was *sent*: the database computed its own expiry from a
//! later `now()`, so the local deadline never outlives the database's, and no other candidate
//! can take over before it. Services check the local deadline before every pass and stop when
//! it passes, whether or not the election loop has run since (a process stopped with SIGSTOP
//! resumes with its deadline long gone, and acts as a follower at once). A renewal is only ever
//! of a current term (`store.renew` checks instance, token and expiry), so a lapsed term is
//! never revived: the process must win a new election, with a new token. The services
//! themselves are safe even when two processes run them at once (the reaper skips locked rows
//! and re-checks expiry, partition changes take a transaction-level lock), so a pass that was
//! already in flight when a term lapsed does no harm; the election saves the cluster N times the
//! maintenance queries and gives one place to look.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::service::{drive, Service};
use super::{
    CountFolder, CountFolderConfig, DepthSampler, DepthSamplerConfig, Janitor, JanitorConfig,
    LaneMarker, LaneMarkerConfig, Pruner, PrunerConfig, Reaper, ReaperConfig, Scheduler,
    SchedulerConfig,
};
use crate::metrics::Metrics;
use crate::store::{Store, Term};
use crate::StoreError;

pub use crate::store::MAINTAINER_ROLE;

/// Maintainer settings; a service set to `None` is not run even when this process leads.
#[derive(Clone, Debug)]
pub struct MaintainerConfig {
    /// How long a term lasts without renewal (default 10 s). A dead leader is replaced within
    /// this plus one election attempt (at most a quarter of a second).
    pub leader_ttl: Duration,
    /// The reaper (default on).
    pub reaper: Option<ReaperConfig>,
    /// The pruner (default on).
    pub pruner: Option<PrunerConfig>,
    /// The depth sampler (default on): the leader's `/metrics` carries the queue depth gauges.
    pub depth: Option<DepthSamplerConfig>,
    /// The registry janitor (default on).
    pub janitor: Option<JanitorConfig>,
    /// The scheduler (default on).
    pub scheduler: Option<SchedulerConfig>,
    /// The lane marker (default on): claims start at each lane's low-water mark rather than
    /// at the head of the claim index (what keeps them fast under a held MVCC horizon).
    pub lanes: Option<LaneMarkerConfig>,
    /// The count folder (default on): keeps reads of the live counts (`GET /v1/queues`, the
    /// depth sampler) at a few rows per queue.
    pub counts: Option<CountFolderConfig>,
}

impl Default for MaintainerConfig {
    fn default() -> Self {
        MaintainerConfig {
            leader_ttl: Duration::from_secs(10),
            reaper: Some(ReaperConfig::default()),
            pruner: Some(PrunerConfig::default()),
            depth: Some(DepthSamplerConfig::default()),
            janitor: Some(JanitorConfig::default()),
            scheduler: Some(SchedulerConfig::default()),
            lanes: Some(LaneMarkerConfig::default()),
            counts: Some(CountFolderConfig::default()),
        }
    }
}

/// This process's view of its term: held until a local deadline.
#[derive(Clone, Debug, Default)]
struct TermClock(Arc<Mutex<Option<Instant>>>);

impl TermClock {
    fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    fn is_current(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Maintainer {
    store: Store,
    config: MaintainerConfig,
    metrics: Arc<Metrics>,
    holder: String,
    instance: Uuid,
    clock: TermClock,
}

/// A term this process holds, with the services it runs under it.
struct Held {
    term: Term,
    deadline: Instant,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    depth: Option<Arc<DepthSampler>>,
}

impl Maintainer {
    /// A candidate named `holder` (shown as the leader's name), with a fresh instance id.
    pub fn new(
        store: Store,
        config: MaintainerConfig,
        metrics: Arc<Metrics>,
        holder: impl Into<String>,
    ) -> Self {
        let config = MaintainerConfig {
            leader_ttl: config.leader_ttl.max(Duration::from_millis(300)),
            ..config
        };
        Maintainer {
            store,
            config,
            metrics,
            holder: holder.into(),
            instance: Uuid::now_v7(),
            clock: TermClock::default(),
        }
    }

    /// Use `instance` as this candidate's instance id (a worker passes its own, so that the
    /// registry can tell which worker leads).
    pub fn with_instance(mut self, instance: Uuid) -> Self {
        self.instance = instance;
        self
    }

    /// This candidate's instance id.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Whether this candidate holds a current term, by its local deadline.
    pub fn is_leader(&self) -> bool {
        self.clock.is_current()
    }

    /// One election step: renew `term` if given, else try to be elected. Returns the term held
    /// afterwards, or `None` when another process leads.
    ///
    /// # Errors
    /// [`StoreError::Database`]; the caller keeps `term` only until its local deadline.
    pub async fn run_once(&self, term: Option<&Term>) -> Result<Option<Term>, StoreError> {
        let ttl = self.config.leader_ttl;
        match term {
            Some(term) => self.store.renew(term, ttl).await,
            None => {
                self.store
                    .elect(MAINTAINER_ROLE, &self.holder, self.instance, ttl)
                    .await
            }
        }
    }

    /// Stand for election until `shutdown`; while elected, run the services. On shutdown, stop
    /// them and resign, so another candidate takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let ttl = self.config.leader_ttl;
        let mut held: Option<Held> = None;
        loop {
            let sent = Instant::now();
            // Bounded: a renewal that hangs past the term's deadline is a lost term.
            let limit = held.as_ref().map_or(sent + ttl, |h| h.deadline);
            let attempt = tokio::time::timeout_at(
                limit.into(),
                self.run_once(held.as_ref().map(|h| &h.term)),
            );
            let result = tokio::select! {
                result = attempt => result,
                _ = shutdown.cancelled() => break,
            };
            self.settle_election(result, sent, &mut held).await;
            self.stop_if_lapsed(&mut held).await;
            let next = match &held {
                Some(h) => (sent + ttl / 3).min(h.deadline),
                None => sent + (ttl / 3).min(Duration::from_millis(250)),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(h) = held.take() {
            let term = h.term.clone();
            self.stop(h).await;
            // Best effort: if it fails, the term simply expires.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.store.resign(&term)).await;
            tracing::info!(token = term.token, "maintainer resigned");
        }
    }

    /// Act on one election step's `result` (sent at `sent`): a term held (renewed, or won: the
    /// services start) runs until `sent` plus the TTL; a term lost to another process stops
    /// the services; a failed step is counted; a step that timed out changes nothing.
    async fn settle_election(
        &self,
        result: Result<Result<Option<Term>, StoreError>, tokio::time::error::Elapsed>,
        sent: Instant,
        held: &mut Option<Held>,
    ) {
        let ttl = self.config.leader_ttl;
        match result {
            Ok(Ok(Some(term))) => {
                let deadline = sent + ttl;
                self.clock.set(Some(deadline));
                self.metrics.set_leader_until(Some(deadline));
                match held {
                    Some(h) => {
                        h.term = term;
                        h.deadline = deadline;
                    }
                    None => {
                        tracing::info!(
                            holder = %self.holder,
                            token = term.token,
                            "elected maintainer"
                        );
                        *held = Some(self.start(term, deadline));
                    }
                }
            }
            Ok(Ok(None)) => {
                if let Some(h) = held.take() {
                    tracing::warn!(
                        token = h.term.token,
                        "maintainer term lost to another process"
                    );
                    self.stop(h).await;
                }
            }
            Ok(Err(e)) => self.metrics.db_error("elect", &e),
            Err(_elapsed) => {}
        }
    }

    /// Stop the services of a held term whose local deadline has passed unrenewed.
    async fn stop_if_lapsed(&self, held: &mut Option<Held>) {
        if held.as_ref().is_some_and(|h| Instant::now() >= h.deadline) {
            if let Some(h) = held.take() {
                tracing::warn!(token = h.term.token, "maintainer term lapsed unrenewed");
                self.stop(h).await;
            }
        }
    }

    fn start(&self, term: Term, deadline: Instant) -> Held {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let store = &self.store;
        let metrics = &self.metrics;
        if let Some(config) = self.config.reaper.clone() {
            let reaper = Reaper::new(store.clone(), config, metrics.clone());
            tasks.push(self.spawn(Arc::new(reaper), &stop));
        }
        if let Some(config) = self.config.pruner.clone() {
            let pruner = Pruner::new(store.clone(), config, metrics.clone());
            tasks.push(self.spawn(Arc::new(pruner), &stop));
        }
        if let Some(config) = self.config.scheduler.clone() {
            let scheduler = Scheduler::new(store.clone(), config, metrics.clone());
            tasks.push(self.spawn(Arc::new(scheduler), &stop));
        }
        if let Some(config) = self.config.lanes.clone() {
            tasks.push(self.spawn(Arc::new(LaneMarker::new(store.clone(), config)), &stop));
        }
        if let Some(config) = self.config.counts.clone() {
            tasks.push(self.spawn(Arc::new(CountFolder::new(store.clone(), config)), &stop));
        }
        if let Some(config) = self.config.janitor.clone() {
            tasks.push(self.spawn(Arc::new(Janitor::new(store.clone(), config)), &stop));
        }
        let depth = self.config.depth.clone().map(|config| {
            let sampler = Arc::new(DepthSampler::new(store.clone(), config, metrics.clone()));
            tasks.push(self.spawn(sampler.clone(), &stop));
            sampler
        });
        Held {
            term,
            deadline,
            stop,
            tasks,
            depth,
        }
    }

    fn spawn<S: Service>(&self, service: Arc<S>, stop: &CancellationToken) -> JoinHandle<()> {
        let metrics = self.metrics.clone();
        let stop = stop.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move { drive(&*service, &metrics, &stop, || clock.is_current()).await })
    }

    async fn stop(&self, held: Held) {
        self.clock.set(None);
        self.metrics.set_leader_until(None);
        held.stop.cancel();
        for task in held.tasks {
            let _ = task.await;
        }
        if let Some(depth) = held.depth {
            depth.clear();
        }
    }
}
