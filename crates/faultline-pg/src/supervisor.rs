//! Keeps a private cluster running: `faultline up`'s Postgres is restarted when it dies (a crash,
//! an OOM kill, `pg_ctl stop -m immediate`), with backoff, while the API and the workers ride
//! the outage out as they would any other (503s, backoff, reconnect).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Cluster, PgError};

/// Settings of a [`Supervisor`].
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// How often the server process is checked (default 500 ms).
    pub interval: Duration,
    /// Longest wait between failed restarts (default 30 s); the wait doubles from `interval`.
    pub max_backoff: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuperviseOutcome {
    /// The server was found dead and started again.
    pub restarted: bool,
}

/// Restarts a cluster whose server has exited.
#[derive(Debug)]
pub struct Supervisor {
    cluster: Arc<Cluster>,
    config: SupervisorConfig,
}

impl Supervisor {
    /// A supervisor of `cluster`.
    pub fn new(cluster: Arc<Cluster>, config: SupervisorConfig) -> Self {
        Supervisor { cluster, config }
    }

    /// Check once; start the server again if it is not running.
    ///
    /// # Errors
    /// The [`PgError`] of the failed start (the caller backs off and tries again).
    pub async fn run_once(&self) -> Result<SuperviseOutcome, PgError> {
        if self.cluster.is_running() {
            return Ok(SuperviseOutcome::default());
        }
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.start())
            .await
            .map_err(|e| PgError::Io {
                context: "join the restart task".into(),
                source: std::io::Error::other(e),
            })??;
        Ok(SuperviseOutcome { restarted: true })
    }

    /// Check every `interval` until `shutdown`, restarting the server when it died; failed
    /// restarts are retried with doubling waits up to `max_backoff`. Logs a line per death,
    /// per failed restart and per recovery.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = if failures == 0 {
                self.config.interval
            } else {
                (self.config.interval * 2u32.saturating_pow(failures)).min(self.config.max_backoff)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            if failures == 0 && !self.cluster.is_running() {
                tracing::warn!("the private Postgres exited; restarting it");
            }
            match self.run_once().await {
                Ok(SuperviseOutcome { restarted: true }) => {
                    tracing::info!(
                        failed_attempts = failures,
                        "the private Postgres is running again"
                    );
                    failures = 0;
                }
                Ok(_) => {}
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, attempt = failures, "restarting the private Postgres failed; retrying");
                }
            }
        }
    }
}
