//! The `faultline` binary: one process per subcommand, all built on the library.

mod args;
mod bench;
mod cli;
mod drill;
mod jobs;
mod journal;
mod metrics_server;
mod migrate;
mod queues;
mod schedules;
mod serve;
mod signals;
mod up;
mod worker;
mod workers;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A drill's report is its output; its own database connections' warnings (the drill stops
    // Postgres on purpose) would only clutter it. The processes it starts log to their files.
    let default_level = match cli.command {
        Command::Drill(_)
        | Command::Jobs(_)
        | Command::Workers(_)
        | Command::Queues(_)
        | Command::Schedules(_)
        | Command::Bench(_) => "error",
        _ => "info",
    };
    let exporter = match init_tracing(default_level) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    exporter.flush();
    code
}

/// The trace exporter, when one is configured (feature `otel`): flushed before exit.
struct Exporter(#[cfg(feature = "otel")] Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Exporter {
    fn flush(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.0 {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: traces not all exported: {e}");
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate(args) => migrate::run(args).await,
        Command::Worker(args) => worker::run(*args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Up(args) => up::run(*args).await,
        Command::Jobs(args) => jobs::run(*args).await,
        Command::Workers(args) => workers::run(*args).await,
        Command::Queues(args) => queues::run(*args).await,
        Command::Schedules(args) => schedules::run(*args).await,
        Command::Drill(args) => drill::run(*args).await,
        Command::Bench(args) => bench::run(*args).await,
    }
}

/// Wait until the database answers and check that its schema is current. A database that is
/// down at start-up is waited for (logged once); a schema that is behind is an error, because
/// running against it would fail on every claim.
pub async fn wait_for_schema(pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut logged = false;
    loop {
        match faultline::db::schema_is_current(pool).await {
            Ok(true) => return Ok(()),
            Ok(false) => {
                anyhow::bail!("the database schema is not current; run `faultline migrate` first")
            }
            Err(faultline::db::DbError::Database(e)) if faultline::error::is_unavailable(&e) => {
                if !logged {
                    tracing::warn!(error = %e, "database not reachable yet; waiting for it");
                    logged = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => anyhow::bail!("shut down before the database answered"),
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot use the database")),
        }
    }
}

/// Logs to stderr, filtered by `FAULTLINE_LOG` (or `RUST_LOG`); with the `otel` feature and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP.
fn init_tracing(default_level: &str) -> Result<Exporter, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FAULTLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TracerProvider;
        let provider = faultline::otel::otlp_from_env()?;
        let layer = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("faultline")));
        registry.with(layer).init();
        Ok(Exporter(provider))
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Ok(Exporter())
    }
}
