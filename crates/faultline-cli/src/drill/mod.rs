//! `faultline drill NAME`: failure drills (docs/guarantees.md) with real processes and real faults. Each
//! drill starts its own Postgres, a `faultline serve` and several `faultline worker` processes,
//! injects its fault, checks the outcome from the database and from every process's `/metrics`,
//! prints one line per event and a summary table, and exits non-zero if a check failed.

mod chaos;
mod db_outage;
mod duplicates;
mod enqueuer;
mod env;
mod failover;
mod lease_expiry;
mod poison;
mod python;
mod report;
mod retries;
mod waits;
mod worker_crash;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use report::Report;

use crate::args::duration;

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Which drill.
    #[arg(value_enum)]
    pub name: DrillName,

    /// Print the report as JSON (events go to stderr).
    #[arg(long)]
    pub json: bool,

    /// How long the chaos drill injects faults.
    #[arg(long, env = "FAULTLINE_DRILL_DURATION", default_value = "60s", value_parser = duration)]
    pub duration: Duration,

    /// Seed of the chaos drill's fault schedule (random, and printed, when unset).
    #[arg(long, env = "FAULTLINE_DRILL_SEED")]
    pub seed: Option<u64>,

    /// Python workers the chaos drill runs beside the binary's (on a queue of their own, with
    /// the same faults).
    #[arg(long, env = "FAULTLINE_DRILL_PYTHON_WORKERS", default_value_t = 0)]
    pub python_workers: usize,

    /// The failover drill with asynchronous replication: it reports what was lost or ran twice
    /// instead of failing on it.
    #[arg(long = "async")]
    pub asynchronous: bool,

    /// Use this server (a fresh database is created on it) instead of a private cluster. The
    /// db-outage and failover drills, which must stop servers of their own, are then skipped.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillName {
    WorkerCrash,
    /// worker-crash with Python workers (the HTTP worker protocol).
    WorkerCrashPython,
    Retries,
    LeaseExpiry,
    /// lease-expiry with Python workers (the HTTP worker protocol).
    LeaseExpiryPython,
    DbOutage,
    Duplicates,
    Chaos,
    Failover,
    All,
}

impl DrillName {
    const EACH: [DrillName; 9] = [
        DrillName::WorkerCrash,
        DrillName::WorkerCrashPython,
        DrillName::Retries,
        DrillName::LeaseExpiry,
        DrillName::LeaseExpiryPython,
        DrillName::DbOutage,
        DrillName::Duplicates,
        DrillName::Chaos,
        DrillName::Failover,
    ];

    fn label(self) -> &'static str {
        match self {
            DrillName::WorkerCrash => "worker-crash",
            DrillName::WorkerCrashPython => "worker-crash-python",
            DrillName::LeaseExpiryPython => "lease-expiry-python",
            DrillName::Retries => "retries",
            DrillName::LeaseExpiry => "lease-expiry",
            DrillName::DbOutage => "db-outage",
            DrillName::Duplicates => "duplicates",
            DrillName::Chaos => "chaos",
            DrillName::Failover => "failover",
            DrillName::All => "all",
        }
    }
}

/// Run the chosen drill (or each of them), then print the JSON or, for several, a summary; the
/// exit code says whether every drill passed (130 when interrupted).
pub async fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::signals::shutdown_token()?;
    let drills: Vec<DrillName> = match args.name {
        DrillName::All => DrillName::EACH.to_vec(),
        one => vec![one],
    };
    let mut reports = Vec::new();
    for drill in drills {
        let Some(report) = run_reported(drill, &args, &shutdown).await else {
            return Ok(ExitCode::from(130));
        };
        reports.push(report);
    }
    let passed = reports.iter().all(|r| r.passed);
    if args.json {
        print_json(passed, &reports)?;
    } else if reports.len() > 1 {
        print_summary(passed, &reports);
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Run one drill to its finished report (its table printed unless `--json`); `None` when
/// interrupted, after saying so.
async fn run_reported(
    drill: DrillName,
    args: &DrillArgs,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Report> {
    let mut report = Report::new(drill.label(), args.json);
    // Dropping the drill's future on Ctrl-C drops its environment, which kills every child.
    let outcome = tokio::select! {
        outcome = run_one(drill, &mut report, args) => outcome,
        _ = shutdown.cancelled() => {
            report.finish(Some(anyhow::anyhow!("interrupted")));
            eprintln!("interrupted; every process the drill started has been stopped");
            return None;
        }
    };
    report.finish(outcome.err());
    if !args.json {
        print!("{}", report.table());
    }
    Some(report)
}

/// Every report as one JSON document on stdout.
fn print_json(passed: bool, reports: &[Report]) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "passed": passed, "drills": reports }))?
    );
    Ok(())
}

/// One line per drill (verdict, checks passed, time), then the overall verdict.
fn print_summary(passed: bool, reports: &[Report]) {
    println!("\nsummary");
    for r in reports {
        let verdict = if r.skipped.is_some() {
            "SKIPPED"
        } else if r.passed {
            "PASSED"
        } else {
            "FAILED"
        };
        let checks = r.checks.iter().filter(|c| c.passed).count();
        println!(
            "  {:<14} {:<8} {:>3}/{:<3} checks  {:>6.1}s",
            r.drill,
            verdict,
            checks,
            r.checks.len(),
            r.seconds
        );
    }
    println!(
        "{}",
        if passed {
            "all drills passed"
        } else {
            "SOME DRILLS FAILED"
        }
    );
}

async fn run_one(drill: DrillName, report: &mut Report, args: &DrillArgs) -> anyhow::Result<()> {
    let db = args.database_url.as_deref();
    match drill {
        DrillName::WorkerCrash => worker_crash::run(report, db).await,
        DrillName::WorkerCrashPython => python::worker_crash(report, db).await,
        DrillName::LeaseExpiryPython => python::lease_expiry(report, db).await,
        DrillName::Retries => retries::run(report, db).await,
        DrillName::LeaseExpiry => lease_expiry::run(report, db).await,
        DrillName::DbOutage => db_outage::run(report, db).await,
        DrillName::Duplicates => duplicates::run(report, db).await,
        DrillName::Failover => failover::run(report, db, args.asynchronous).await,
        DrillName::Chaos => {
            chaos::run(report, db, args.duration, args.seed, args.python_workers).await
        }
        DrillName::All => unreachable!("expanded above"),
    }
}
