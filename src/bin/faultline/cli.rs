//! Command-line interface: every flag also reads a `FAULTLINE_*` environment variable, and
//! `DATABASE_URL` names the database.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use faultline::db;

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
    Serve(Pending),
    /// Run workers.
    Worker(Pending),
    /// Everything in one process, with a private Postgres unless DATABASE_URL is set.
    Up(Pending),
    /// Enqueue, inspect, retry and cancel jobs through the API.
    Jobs(Pending),
    /// Failure drills: worker-crash, retries, lease-expiry, db-outage, duplicates, all.
    Drill(Pending),
    /// The benchmark.
    Bench(Pending),
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Migrate(_) => "migrate",
            Command::Serve(_) => "serve",
            Command::Worker(_) => "worker",
            Command::Up(_) => "up",
            Command::Jobs(_) => "jobs",
            Command::Drill(_) => "drill",
            Command::Bench(_) => "bench",
        }
    }
}

/// The database to use.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// A subcommand that a later release fills in; it accepts any arguments and refuses to run.
#[derive(Debug, Args)]
pub struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&args.database.url, &db::PoolConfig::default())?;
    db::migrate(&pool)
        .await
        .context("could not apply the schema")?;
    let current = db::schema_is_current(&pool).await?;
    pool.close().await;
    anyhow::ensure!(current, "migrations ran but the schema is not current");
    tracing::info!("schema is current");
    Ok(ExitCode::SUCCESS)
}
