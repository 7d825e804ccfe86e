//! Command-line interface: the subcommands. Every flag also reads a `FAULTLINE_*` environment
//! variable, and `DATABASE_URL` names the database; the argument types several subcommands
//! share are in `args.rs`.

use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::drill::DrillArgs;
use crate::jobs::JobsArgs;
use crate::migrate::MigrateArgs;
use crate::queues::QueuesArgs;
use crate::schedules::SchedulesArgs;
use crate::serve::ServeArgs;
use crate::up::UpArgs;
use crate::worker::WorkerArgs;
use crate::workers::WorkersArgs;

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
    /// List the live worker processes and the elected maintainer, through the API.
    Workers(Box<WorkersArgs>),
    /// List queues, pause and resume them, set their limits, through the API.
    Queues(Box<QueuesArgs>),
    /// List, read, declare, delete, pause and resume cron schedules, through the API.
    Schedules(Box<SchedulesArgs>),
    /// Failure drills: worker-crash, retries, lease-expiry, db-outage, duplicates, chaos, all.
    Drill(Box<DrillArgs>),
    /// The benchmark: enqueue, drain, latency, recovery, beside the raw-Postgres ceiling.
    Bench(Box<BenchArgs>),
}
