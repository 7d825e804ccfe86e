//! Exactly-once effects: the handler writes to the application's tables and completes the job
//! in one transaction (`complete_and_commit`). A worker that lost its lease (stalled past it,
//! while another worker took the job over) is refused at commit and its writes roll back, so
//! the account is credited once, whatever crashes or stalls.
//!
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example exactly_once`

use std::time::Duration;

use faultline::worker::{HandlerRegistry, JobContext, JobError, Worker, WorkerConfig};
use faultline::{db, JobArgs, Store};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Credit {
    account: String,
    cents: i64,
}

impl JobArgs for Credit {
    const KIND: &'static str = "account.credit";
}

async fn credit(pool: PgPool, ctx: JobContext, credit: Credit) -> Result<(), JobError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into accounts (id, cents) values ($1, $2)
         on conflict (id) do update set cents = accounts.cents + excluded.cents",
    )
    .bind(&credit.account)
    .bind(credit.cents)
    .execute(&mut *tx)
    .await?;
    // The credit and the job's success commit together, fenced by this attempt's lease; on
    // LeaseLost the transaction is rolled back here, and the credit with it.
    ctx.complete_and_commit(tx, ()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = db::connect(&url, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    sqlx::query("create table if not exists accounts (id text primary key, cents bigint not null)")
        .execute(&pool)
        .await?;
    let store = Store::new(pool.clone());
    let job = store
        .enqueue(Credit {
            account: "acct-1".into(),
            cents: 500,
        })
        .await?
        .into_job();

    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(move |ctx, job: Credit| credit(pool.clone(), ctx, job));
    let worker = Worker::new(store.clone(), registry, WorkerConfig::default())?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // Until the job has finished (or 30 s have passed), then a graceful shutdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !store.get(job.id).await?.state.is_terminal() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await?;
    println!("job {}: {:?}", job.id, store.get(job.id).await?.state);
    Ok(())
}
