//! A worker inside a service, shut down gracefully on SIGTERM or Ctrl-C: it stops claiming,
//! lets running handlers finish within `shutdown_grace`, cancels the rest and hands their jobs
//! back (eligible at once, attempt not counted), records every result, and returns. Handlers
//! watch `ctx.cancelled()` to stop early.
//!
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example graceful_shutdown`, then Ctrl-C.

use std::time::Duration;

use faultline::worker::{HandlerRegistry, JobContext, JobError, Worker, WorkerConfig};
use faultline::{db, JobArgs, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Export {
    rows: u32,
}

impl JobArgs for Export {
    const KIND: &'static str = "export.rows";
}

async fn export(ctx: JobContext, export: Export) -> Result<(), JobError> {
    for row in 0..export.rows {
        tokio::select! {
            // Shutdown past the grace period, a cancel, or a lost lease: stop now; the job is
            // handed back (or its result dropped), never half-reported.
            _ = ctx.cancelled() => return Err(JobError::retryable(format!("stopped at row {row}"))),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    Ok(())
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let url = std::env::var("DATABASE_URL")?;
    let pool = db::connect(&url, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    let store = Store::new(pool);
    store.enqueue(Export { rows: 1000 }).await?;

    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(export);
    let config = WorkerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(store, registry, config)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    terminated().await;
    shutdown.cancel();
    running.await?;
    println!("worker stopped; every job is recorded or handed back");
    Ok(())
}
