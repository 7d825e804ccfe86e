//! `faultline serve`: the HTTP API.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use faultline::http::{self, ApiConfig, AppState};
use faultline::maintenance::{Maintainer, MaintainerConfig};
use faultline::metrics::Metrics;
use faultline::{db, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::args::{duration, token, DatabaseArgs, MaintainerOptions};
use crate::signals;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub api: ApiOptions,

    #[command(flatten)]
    pub maintainer: MaintainerOptions,
}

/// API settings shared by `serve` and `up`.
#[derive(Debug, Args)]
pub struct ApiOptions {
    /// Address to serve the API on.
    #[arg(long, env = "FAULTLINE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Require `Authorization: Bearer <token>` on every route but /health, /ready, /metrics.
    #[arg(long, env = "FAULTLINE_API_TOKEN", hide_env_values = true, value_parser = token)]
    pub api_token: Option<String>,

    /// Largest job payload in bytes.
    #[arg(long, env = "FAULTLINE_MAX_PAYLOAD_BYTES", default_value_t = faultline::job::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// Requests taking longer are answered 408.
    #[arg(long, env = "FAULTLINE_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Most HTTP connections served at once; one more is answered 503 and closed.
    #[arg(long, env = "FAULTLINE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// How long a client may take to send a request's headers (also the idle keep-alive time).
    #[arg(long, env = "FAULTLINE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Host names answered besides loopback ones while --listen is a loopback address
    /// (comma-separated; DNS rebinding protection). Ignored on other addresses.
    #[arg(long, env = "FAULTLINE_ALLOWED_HOSTS", value_delimiter = ',', value_parser = allowed_host)]
    pub allowed_hosts: Vec<String>,
}

fn allowed_host(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    match http::allowed_host_problem(entry) {
        Some(problem) => Err(problem),
        None => Ok(entry
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase()),
    }
}

impl ApiOptions {
    pub fn api_config(&self) -> ApiConfig {
        ApiConfig {
            api_token: self.api_token.clone().filter(|t| !t.is_empty()),
            max_payload_bytes: self.max_payload_bytes,
            request_timeout: self.request_timeout,
            hosts: http::HostPolicy {
                loopback_only: self.listen.ip().is_loopback(),
                allowed: self.allowed_hosts.clone(),
            },
            ..ApiConfig::default()
        }
    }

    pub fn server_config(&self) -> anyhow::Result<http::ServerConfig> {
        anyhow::ensure!(
            self.header_read_timeout >= Duration::from_millis(10),
            "--header-read-timeout must be at least 10ms"
        );
        Ok(http::ServerConfig {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
            ..http::ServerConfig::default()
        })
    }

    /// Bind the listener now, so a taken port fails start-up with a clear error.
    pub async fn bind(&self) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", self.listen))
    }

    /// Serve the API until `shutdown`; with `maintainer`, stand for election as the cluster's
    /// maintainer meanwhile.
    pub fn spawn(
        &self,
        listener: tokio::net::TcpListener,
        store: Store,
        metrics: Arc<Metrics>,
        maintainer: Option<MaintainerConfig>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let maintainer = maintainer.map(|config| {
            Maintainer::new(store.clone(), config, metrics.clone(), api_holder_name())
        });
        let router = http::app(AppState::new(store, metrics, self.api_config()));
        let server = self.server_config().unwrap_or_default();
        tokio::spawn(async move {
            let maintaining = maintainer.map(|m| tokio::spawn(m.run(shutdown.clone())));
            if let Err(e) = http::serve_with(listener, router, server, shutdown.clone()).await {
                tracing::error!(error = %e, "the API server failed");
                shutdown.cancel();
            }
            if let Some(maintaining) = maintaining {
                let _ = maintaining.await;
            }
        })
    }
}

/// The name an API process leads under: `api-hostname-pid`.
fn api_holder_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("api-{host}-{}", std::process::id())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let schedules = args.maintainer.schedule_file()?;
    let pool = args.database.pool()?;
    let maintainer = args.maintainer.config()?;
    let store = Store::with_config(
        pool.clone(),
        StoreConfig {
            max_payload_bytes: args.api.max_payload_bytes,
            prepared_statements: !args.database.pooled(),
            ..StoreConfig::default()
        },
    );
    let shutdown = signals::shutdown_token()?;
    args.maintainer
        .declare_schedules(schedules, &store, &shutdown)?;
    // The API starts even while the database is down (it answers 503 meanwhile); a database
    // that answers with an old schema is worth a warning.
    match db::schema_is_current(&pool).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the database schema is not current; run `faultline migrate`"),
        Err(e) => {
            tracing::warn!(error = %e, "database not reachable yet; answering 503 until it is")
        }
    }
    args.api.server_config()?;
    let listener = args.api.bind().await?;
    tracing::info!("API on http://{}", listener.local_addr()?);
    let api = args.api.spawn(
        listener,
        store,
        Arc::new(Metrics::new()),
        maintainer,
        shutdown.clone(),
    );
    let _ = api.await;
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
