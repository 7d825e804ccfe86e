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
        | Command::Bench(_) => "error",
        _ => "info",
    };
    init_tracing(default_level);
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
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

fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FAULTLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
