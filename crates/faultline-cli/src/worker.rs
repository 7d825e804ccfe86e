//! `faultline worker`: run workers until SIGTERM/SIGINT, then shut down gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use faultline::maintenance::MaintainerConfig;
use faultline::metrics::Metrics;
use faultline::worker::{
    builtin_registry, default_worker_id, Listen, WebhookConfig, Worker, WorkerConfig,
};
use faultline::{Backoff, Jitter, Store, StoreConfig};

use crate::args::{duration, DatabaseArgs, MaintainerOptions};
use crate::{metrics_server, signals};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub options: WorkerOptions,

    #[command(flatten)]
    pub maintainer: MaintainerOptions,
}

/// Worker settings shared by `worker` and `up`.
#[derive(Debug, Args)]
pub struct WorkerOptions {
    /// Queues to work, comma-separated.
    #[arg(
        long,
        env = "FAULTLINE_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// Most jobs run at once.
    #[arg(long, env = "FAULTLINE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u32,

    /// Jobs claimed ahead of free slots, waiting under a renewed lease (0: none).
    #[arg(long, env = "FAULTLINE_PREFETCH", default_value_t = 0)]
    pub prefetch: u32,

    /// Lease length: a job whose worker stops heartbeating is taken back this long after.
    #[arg(long, env = "FAULTLINE_LEASE_TTL", default_value = "30s", value_parser = duration)]
    pub lease_ttl: Duration,

    /// Time between heartbeats (default: a third of the lease TTL).
    #[arg(long, env = "FAULTLINE_HEARTBEAT_INTERVAL", value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,

    /// Claim at least this often without a notification.
    #[arg(long, env = "FAULTLINE_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub poll_interval: Duration,

    /// On SIGTERM/SIGINT, how long running jobs may finish before being handed back.
    #[arg(long, env = "FAULTLINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "FAULTLINE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// This worker's name in leases (default: hostname-pid-random).
    #[arg(long, env = "FAULTLINE_WORKER_ID")]
    pub worker_id: Option<String>,

    /// A direct Postgres URL for `LISTEN` wake-ups, when DATABASE_URL goes through a
    /// transaction-pooling PgBouncer (without it, such a worker finds jobs by polling).
    #[arg(
        long,
        env = "FAULTLINE_LISTEN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub listen_database_url: Option<String>,

    /// Retry backoff base: the delay after the first failed attempt (before jitter).
    #[arg(long, env = "FAULTLINE_RETRY_BASE", default_value = "1s", value_parser = duration)]
    pub retry_base: Duration,

    /// Retry backoff cap: no retry waits longer.
    #[arg(long, env = "FAULTLINE_RETRY_CAP", default_value = "1h", value_parser = duration)]
    pub retry_cap: Duration,

    /// Let the webhook kind reach loopback, private and link-local addresses.
    #[arg(long, env = "FAULTLINE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Record every handler run in faultline_drill.executions (used by `faultline drill chaos`).
    #[arg(long, hide = true)]
    pub drill_journal: bool,

    /// Keep that journal in this database instead (a drill whose database fails over).
    #[arg(long, hide = true, value_name = "URL")]
    pub drill_journal_url: Option<String>,

    /// Fire schedules in this process whether or not it leads (tests of exactly-once firing
    /// from many processes at once).
    #[arg(long, hide = true)]
    pub drill_schedule_always: bool,

    /// Send webhooks through this HTTP proxy (http://host:port). Proxy variables in the
    /// environment (HTTP_PROXY, HTTPS_PROXY) are ignored: they would bypass the address guard.
    #[arg(long, env = "FAULTLINE_WEBHOOK_PROXY", value_name = "URL")]
    pub webhook_proxy: Option<String>,

    /// Largest handler result kept, in bytes of JSON (at most 16 MiB); a larger one fails the
    /// attempt rather than being truncated.
    #[arg(
        long,
        env = "FAULTLINE_MAX_RESULT_BYTES",
        default_value_t = 65536,
        value_parser = clap::value_parser!(u32).range(0..=16 * 1024 * 1024)
    )]
    pub max_result_bytes: u32,

    /// Webhook request timeout (a payload's timeout_ms overrides it).
    #[arg(long, env = "FAULTLINE_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub webhook_timeout: Duration,
}

impl WorkerOptions {
    pub fn store_config(&self, pooled: bool) -> anyhow::Result<StoreConfig> {
        anyhow::ensure!(
            self.retry_base <= self.retry_cap,
            "--retry-base ({}) must not exceed --retry-cap ({})",
            humantime::format_duration(self.retry_base),
            humantime::format_duration(self.retry_cap)
        );
        Ok(StoreConfig {
            backoff: Backoff {
                base: self.retry_base,
                cap: self.retry_cap,
                jitter: Jitter::Equal,
            },
            prepared_statements: !pooled,
            max_result_bytes: self.max_result_bytes as usize,
            ..StoreConfig::default()
        })
    }

    /// The worker's settings; `pooled` when DATABASE_URL goes through PgBouncer (no `LISTEN`
    /// on it), `maintainer` when this worker stands for election.
    pub fn worker_config(
        &self,
        pooled: bool,
        maintainer: Option<MaintainerConfig>,
    ) -> WorkerConfig {
        let listen = match (&self.listen_database_url, pooled) {
            (Some(url), _) => Listen::Url(url.clone()),
            (None, true) => Listen::Off,
            (None, false) => Listen::Pool,
        };
        WorkerConfig {
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            queues: self.queues.iter().map(|q| q.trim().to_owned()).collect(),
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            lease_ttl: self.lease_ttl,
            heartbeat_interval: self.heartbeat_interval,
            poll_interval: self.poll_interval,
            shutdown_grace: self.shutdown_grace,
            maintainer,
            listen,
        }
    }

    pub fn webhook_config(&self) -> WebhookConfig {
        WebhookConfig {
            allow_private: self.webhook_allow_private,
            timeout: self.webhook_timeout,
            proxy: self.webhook_proxy.clone(),
        }
    }
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let schedules = args.maintainer.schedule_file()?;
    let pool = args.database.pool()?;
    let options = &args.options;
    let pooled = args.database.pooled();
    let store = Store::with_config(pool.clone(), options.store_config(pooled)?);
    let metrics = Arc::new(Metrics::new());
    let store_for_schedules = store.clone();
    let mut registry = builtin_registry(options.webhook_config()).context("--webhook-proxy")?;
    if options.drill_journal {
        crate::journal::register_credit(&mut registry, store.clone());
        crate::journal::register_steps(&mut registry, store.clone());
    }
    let worker = Worker::new(
        store.clone(),
        registry,
        options.worker_config(pooled, args.maintainer.config()?),
    )
    .map_err(crate::args::flag_error)?
    .with_metrics(metrics.clone());
    let worker = if options.drill_journal {
        let journal = match &options.drill_journal_url {
            Some(url) => Store::new(
                faultline::db::connect(url, &faultline::db::PoolConfig::default())
                    .context("--drill-journal-url")?,
            ),
            None => store,
        };
        worker.with_hook(Arc::new(crate::journal::Journal::new(journal)))
    } else {
        worker
    };
    let shutdown = signals::shutdown_token()?;
    args.maintainer
        .declare_schedules(schedules, &store_for_schedules, &shutdown)?;

    crate::wait_for_schema(&pool, &shutdown).await?;
    if options.drill_schedule_always {
        let scheduler = faultline::maintenance::Scheduler::new(
            store_for_schedules.clone(),
            faultline::maintenance::SchedulerConfig::default(),
            metrics.clone(),
        );
        let shutdown = shutdown.clone();
        tokio::spawn(async move { scheduler.run(shutdown).await });
    }
    let metrics_task = match options.metrics_listen {
        Some(addr) => Some(metrics_server::spawn(addr, metrics, shutdown.clone()).await?),
        None => None,
    };
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
