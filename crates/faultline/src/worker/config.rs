//! Worker settings.

use std::time::Duration;

use crate::maintenance::MaintainerConfig;

/// Settings of a [`super::Worker`]. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This worker's name, recorded as `lease_owner` (default: `hostname-pid-random`).
    pub worker_id: String,
    /// Queues to claim from. Empty (the default): `default` and every queue the registered
    /// typed handlers send their jobs to ([`JobOptions::queue`](crate::JobOptions::queue)),
    /// resolved by [`Worker::new`](super::Worker::new).
    pub queues: Vec<String>,
    /// Most handlers running at once (default 16).
    pub concurrency: u32,
    /// Jobs claimed ahead of free handler slots, waiting in a local buffer under a renewed
    /// lease (default 0: none), so that a slot that frees starts its next job without a claim
    /// round trip. A prefetched job is leased like a running one: its lease is renewed while
    /// it waits, a lost lease drops it unrun, one that waited past two thirds of its TTL without
    /// a renewal is handed back rather than run, and shutdown hands every buffered job back at
    /// once (the attempt not counted).
    pub prefetch: u32,
    /// Lease length; a worker that stops heartbeating loses its jobs this long after its last
    /// heartbeat (default 30 s).
    pub lease_ttl: Duration,
    /// Time between heartbeats of a running job (default `lease_ttl / 3`).
    pub heartbeat_interval: Option<Duration>,
    /// Claim at least this often even without a notification (default 1 s): a lost `NOTIFY`
    /// delays a job by at most this much, and scheduled or backed-off jobs are found.
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight handlers may run on before they are cancelled and their
    /// jobs handed back (default 30 s).
    pub shutdown_grace: Duration,
    /// Stand for election as the cluster's [`crate::maintenance::Maintainer`] (reaper, pruner,
    /// depth sampler, registry janitor), which then runs in this worker while it leads
    /// (default: yes). `None` for a worker that must never run maintenance; some process
    /// of the cluster must stand, or expired leases are never taken back.
    pub maintainer: Option<MaintainerConfig>,
    /// Where wake-ups come from (default: `LISTEN` on a connection like the store's).
    pub listen: Listen,
}

/// Where a worker's `LISTEN` connection goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Listen {
    /// A connection with the store pool's options (the database itself).
    #[default]
    Pool,
    /// A direct connection to this URL (the database behind a pooler that cannot `LISTEN`).
    Url(String),
    /// No `LISTEN`: find jobs by polling every `poll_interval` only.
    Off,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: default_worker_id(),
            queues: Vec::new(),
            concurrency: 16,
            prefetch: 0,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: None,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            maintainer: Some(MaintainerConfig::default()),
            listen: Listen::Pool,
        }
    }
}

/// Returned for settings that cannot work.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid worker setting `{setting}`: {message}")]
pub struct ConfigError {
    /// The field of [`WorkerConfig`] that is wrong.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

impl WorkerConfig {
    /// The heartbeat interval in force.
    pub fn heartbeat_every(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.lease_ttl / 3)
    }

    /// After this long without a renewed lease, a job's handler is cancelled (self-fencing):
    /// two thirds of the TTL, leaving a third for the reaper's clock and ours to disagree.
    pub fn fence_after(&self) -> Duration {
        self.lease_ttl * 2 / 3
    }

    /// Check that the settings can work together.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_names()?;
        self.validate_sizes()?;
        self.validate_lease()?;
        if let Listen::Url(url) = &self.listen {
            if let Err(e) = crate::db::connect_options(url) {
                return err("listen", e.to_string());
            }
        }
        self.validate_durations()
    }

    /// The worker id and the queue names (at least one).
    fn validate_names(&self) -> Result<(), ConfigError> {
        if let Some(problem) = crate::names::label_problem(&self.worker_id) {
            return err("worker_id", problem);
        }
        for queue in &self.queues {
            if let Some(problem) = crate::names::name_problem(queue) {
                return err("queues", format!("queue {queue:?} {problem}"));
            }
        }
        Ok(())
    }

    /// The concurrency (1 to 10,000), then the prefetch (0 to 10,000).
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return err(
                "concurrency",
                format!("must be 1 to 10000, got {}", self.concurrency),
            );
        }
        if self.prefetch > 10_000 {
            return err(
                "prefetch",
                format!("must be 0 to 10000, got {}", self.prefetch),
            );
        }
        Ok(())
    }

    /// The lease TTL (at least 100 ms), then the heartbeat interval, which must renew a lease
    /// before it would self-fence.
    fn validate_lease(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_millis(100) {
            return err(
                "lease_ttl",
                format!("must be at least 100ms, got {:?}", self.lease_ttl),
            );
        }
        let heartbeat = self.heartbeat_every();
        if heartbeat.is_zero() || heartbeat >= self.fence_after() {
            return err(
                "heartbeat_interval",
                format!(
                    "must be above zero and below two thirds of the lease TTL ({:?}), got {heartbeat:?}",
                    self.fence_after()
                ),
            );
        }
        Ok(())
    }

    /// The poll interval (at least 1 ms), then every duration the database adds to its clock.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        if self.poll_interval < Duration::from_millis(1) {
            return err("poll_interval", "must be at least 1ms".into());
        }
        // Durations added to the database's now() must keep the sum a representable time.
        for (setting, duration) in [
            ("lease_ttl", self.lease_ttl),
            ("poll_interval", self.poll_interval),
            ("shutdown_grace", self.shutdown_grace),
        ] {
            if let Some(problem) = crate::time_range::duration_problem(duration) {
                return err(setting, problem);
            }
        }
        Ok(())
    }
}

/// The [`ConfigError`] for `setting`, as the result of a check.
fn err(setting: &'static str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError { setting, message })
}

/// `hostname-pid-xxxx`: unique across hosts, processes and restarts of one process id.
pub fn default_worker_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}
