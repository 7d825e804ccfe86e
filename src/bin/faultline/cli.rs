//! Command-line interface: every flag also reads a `FAULTLINE_*` environment variable, and
//! `DATABASE_URL` names the database.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::drill::DrillArgs;
use crate::jobs::JobsArgs;
use crate::migrate::MigrateArgs;
use crate::serve::ServeArgs;
use crate::up::UpArgs;
use crate::worker::WorkerArgs;

/// Faultline: a PostgreSQL-backed job queue built for correctness under failure.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema (idempotent; safe to run from several processes at once).
    Migrate(MigrateArgs),
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Run workers.
    Worker(Box<WorkerArgs>),
    /// Everything in one process, with a private Postgres unless DATABASE_URL is set.
    Up(Box<UpArgs>),
    /// Enqueue, inspect, retry and cancel jobs through the API.
    Jobs(Box<JobsArgs>),
    /// Failure drills: worker-crash, retries, lease-expiry, db-outage, duplicates, chaos, all.
    Drill(Box<DrillArgs>),
    /// The benchmark: enqueue, drain, latency, recovery, beside the raw-Postgres ceiling.
    Bench(Box<BenchArgs>),
}

/// The database to use.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub url: String,

    /// Most database connections this process holds.
    #[arg(
        long = "db-pool-size",
        env = "FAULTLINE_DB_POOL_SIZE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub pool_size: u32,
}

impl DatabaseArgs {
    /// A lazily connecting pool of `--db-pool-size` connections.
    pub fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        use anyhow::Context;
        faultline::db::connect(
            &self.url,
            &faultline::db::PoolConfig {
                max_connections: self.pool_size,
                ..faultline::db::PoolConfig::default()
            },
        )
        .context("--database-url (DATABASE_URL)")
    }
}

/// Parse a duration such as `30s`, `500ms`, `7d` or `1h 30m`, at most 100 years (a longer one
/// would overflow the times Postgres and the API can represent once added to now).
pub fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write a duration such as 500ms, 30s, 5m, 7d)"))?;
    match faultline::time_range::duration_problem(duration) {
        Some(problem) => Err(problem),
        None => Ok(duration),
    }
}

/// An `http://` or `https://` base URL.
pub fn http_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(text.to_owned())
        }
        Ok(url) => Err(format!(
            "expected an http:// or https:// URL, got scheme {:?}",
            url.scheme()
        )),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// A bearer token: visible ASCII only, since it travels in an HTTP header (a newline pasted
/// with it would otherwise surface as a confusing transport error).
pub fn token(text: &str) -> Result<String, String> {
    match text.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!(
            "a token is visible ASCII without spaces; this one contains {c:?}"
        )),
        None => Ok(text.to_owned()),
    }
}
