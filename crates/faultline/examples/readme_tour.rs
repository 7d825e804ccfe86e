//! The README's tour, block by block, as written there (generated: `make readme`; the
//! test `readme_tour` checks that they agree). It compiles with the tests; run it with
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example readme_tour`.
// The tour's other steps are functions that its `main` does not call.
#![allow(dead_code)]

use faultline::prelude::*; // Store, JobArgs, Worker, HandlerRegistry, JobContext, JobError, …
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, JobArgs)]
#[job(
    kind = "welcome.send",
    queue = "mail",
    max_attempts = 8,
    timeout = "30s"
)]
struct SendWelcome {
    user_id: i64,
    email: String,
}

async fn sign_up(pool: &sqlx::PgPool, store: &Store, email: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let user_id: i64 = sqlx::query_scalar("insert into users (email) values ($1) returning id")
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
    store
        .enqueue_in(
            &mut tx,
            SendWelcome {
                user_id,
                email: email.into(),
            },
        )
        .await?;
    tx.commit().await?; // the user and the welcome job commit together, or neither exists
    Ok(())
}

async fn send_welcome(ctx: JobContext, job: SendWelcome) -> Result<(), JobError> {
    if job.email.is_empty() {
        return Err(JobError::permanent("no email address")); // no retry can fix this one
    }
    println!(
        "welcome mail to {} (attempt {}/{}, fencing token {})",
        job.email, ctx.attempt, ctx.max_attempts, ctx.lease_token
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = db::connect(&std::env::var("DATABASE_URL")?, &db::PoolConfig::default())?;
    db::migrate(&pool).await?; // idempotent; safe from many processes at once
    let store = Store::new(pool.clone());
    store
        .enqueue(SendWelcome {
            user_id: 42,
            email: "ada@example.com".into(),
        })
        .await?;

    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(send_welcome);
    // No queues named: it serves `default` and every queue its typed handlers' jobs go to
    // (`mail`, from `SendWelcome`'s options).
    let worker = Worker::new(store, registry, WorkerConfig::default())?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    // Graceful: running jobs get `shutdown_grace` (30 s), the rest are handed back unspent.
    worker.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline::testing;

    #[tokio::test]
    async fn a_welcome_is_enqueued_and_runs() -> anyhow::Result<()> {
        let pool = db::connect(&std::env::var("DATABASE_URL")?, &db::PoolConfig::default())?;
        db::migrate(&pool).await?;
        let store = Store::new(pool.clone());

        // What the code under test enqueued, seen inside its transaction…
        let mut tx = pool.begin().await?;
        store
            .enqueue_in(
                &mut tx,
                SendWelcome {
                    user_id: 7,
                    email: "a@b.c".into(),
                },
            )
            .await?;
        testing::assert_enqueued(&mut *tx, |w: &SendWelcome| w.user_id == 7).await?;
        tx.commit().await?;

        // …and run inline, through the same handler and fencing as a worker.
        let mut registry = HandlerRegistry::new();
        registry.register_job_fn(send_welcome);
        let report = testing::drain(&store, &registry, &["mail"]).await?;
        assert_eq!(report.succeeded(), 1);
        Ok(())
    }
}

async fn schedule_welcomes(store: &Store) -> anyhow::Result<()> {
    let team = SendWelcome {
        user_id: 0,
        email: "team@example.com".into(),
    };
    let spec = ScheduleSpec::for_job("0 9 * * 1-5", &team)?
        .timezone("Europe/Paris")
        .misfire(Misfire::Skip);
    store.put_schedule("weekday-welcome", &spec).await?; // fired by the elected maintainer
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, JobArgs)]
#[job(kind = "checkout", queue = "orders", max_attempts = 10)]
struct Checkout {
    order_id: i64,
    cents: i64,
}

fn register_checkout(registry: &mut HandlerRegistry, pool: sqlx::PgPool) {
    registry.register_job_fn(move |ctx, order: Checkout| checkout(pool.clone(), ctx, order));
}

async fn checkout(pool: sqlx::PgPool, ctx: JobContext, order: Checkout) -> Result<(), JobError> {
    // Charged once, whatever happens after: the charge's row and its record commit together.
    let mut tx = pool.begin().await?;
    let charge: String = ctx
        .step_in(&mut tx, "charge", async |conn: &mut sqlx::PgConnection| {
            let id: String = sqlx::query_scalar(
                "insert into charges (order_id, cents) values ($1, $2) returning id::text",
            )
            .bind(order.order_id)
            .bind(order.cents)
            .fetch_one(&mut *conn)
            .await?;
            Ok(id)
        })
        .await?;
    tx.commit().await?;
    // Mailed once: a retry after this point does not mail again.
    ctx.step("receipt", async {
        println!("receipt for order {} (charge {charge})", order.order_id);
        Ok(())
    })
    .await?;
    // Parked in `waiting` (no worker held) until POST /v1/jobs/{id}/signals/refund, or 30 days.
    let refund = ctx
        .wait_for_signal("refund", std::time::Duration::from_secs(30 * 86_400))
        .await?;
    if let Some(refund) = refund {
        ctx.step("refund", async move {
            println!("refund {refund} for charge {charge}");
            Ok(())
        })
        .await?;
    }
    Ok(())
}
