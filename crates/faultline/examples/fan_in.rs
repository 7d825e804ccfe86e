//! A fan-in workflow: three fetches run in parallel, and a report runs once all three have
//! succeeded (it is cancelled if one fails for good). One batch, one transaction: the report
//! names the fetches by their index in the batch.
//!
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example fan_in`

use faultline::{db, BatchItem, Dependency, JobArgs, NewJob, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Fetch {
    region: String,
}

impl JobArgs for Fetch {
    const KIND: &'static str = "sales.fetch";
}

#[derive(Serialize, Deserialize)]
struct Report {
    title: String,
}

impl JobArgs for Report {
    const KIND: &'static str = "sales.report";
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = db::connect(&url, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    let store = Store::new(pool);

    let mut jobs = Vec::new();
    for region in ["eu", "us", "apac"] {
        jobs.push(NewJob::from_args(&Fetch {
            region: region.into(),
        })?);
    }
    let mut report = NewJob::from_args(&Report {
        title: "weekly sales".into(),
    })?;
    // Earlier jobs of the same batch, by index; existing jobs by id (`Dependency::Job`).
    report.depends_on = (0..jobs.len()).map(Dependency::Earlier).collect();
    jobs.push(report);

    for item in store.enqueue_batch(jobs).await? {
        if let BatchItem::Created(job) = item {
            println!("{} {} ({:?})", job.id, job.kind, job.state);
        }
    }
    // The report is `waiting` until the three fetches have succeeded; see
    // `GET /v1/jobs/{id}/dependents` for what waits on a job.
    Ok(())
}
