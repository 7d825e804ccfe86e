//! A typed job and its worker: the job type names its kind and defaults once; the caller
//! enqueues a value; the worker registers one typed handler per type.
//!
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example typed_worker`

use std::time::Duration;

use faultline::worker::{HandlerRegistry, JobContext, JobError, Worker, WorkerConfig};
use faultline::{db, JobArgs, JobOptions, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The job's arguments: the payload is this type, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct SendWelcome {
    user_id: i64,
    email: String,
}

impl JobArgs for SendWelcome {
    const KIND: &'static str = "welcome.send";
    fn options() -> JobOptions {
        JobOptions {
            queue: Some("mail".into()),
            max_attempts: Some(8),
            timeout: Some(Duration::from_secs(30)),
            ..JobOptions::default()
        }
    }
}

async fn send_welcome(ctx: JobContext, job: SendWelcome) -> Result<(), JobError> {
    if job.email.is_empty() {
        // No retry can fix this one.
        return Err(JobError::permanent("no email address"));
    }
    println!(
        "welcome mail to {} (user {}), attempt {}/{}",
        job.email, job.user_id, ctx.attempt, ctx.max_attempts
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = db::connect(&url, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    let store = Store::new(pool);

    store
        .enqueue(SendWelcome {
            user_id: 42,
            email: "ada@example.com".into(),
        })
        .await?;

    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(send_welcome);
    let config = WorkerConfig {
        queues: vec!["mail".into()],
        ..WorkerConfig::default()
    };
    let worker = Worker::new(store, registry, config)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
    });
    worker.run(shutdown).await;
    Ok(())
}
