//! The execution journal the chaos drill reads: every handler run of a worker started with
//! `--drill-journal` is recorded in `faultline_drill.executions` (job, fencing token, attempt,
//! worker, started / succeeded / failed / stopped), before its result is reported. A success
//! that the fence then rejects is still in the journal, so it can be counted.
//!
//! A worker hook (production code, off unless the hidden flag is given), kept beside the
//! subcommands rather than inside the drills, so `worker` does not depend on `drill`.

use std::time::Duration;

use faultline::worker::{ExecutionHook, HandlerRegistry, HookFuture, JobContext, JobError, RunEnd};
use faultline::Store;

/// The drills' transactional kind, `drill_credit {"ms"}`: writes one row to
/// `faultline_drill.credits` (job, token), waits `ms` inside the transaction (a window for
/// stalls and kills), and completes in the same transaction (`complete_and_commit`). The chaos
/// drill checks that every succeeded credit job has exactly one row, under its final token, and
/// every failed one none.
pub fn register_credit(registry: &mut HandlerRegistry, store: Store) {
    #[derive(serde::Deserialize)]
    struct Credit {
        #[serde(default)]
        ms: u64,
    }
    registry.register_fn("drill_credit", move |ctx: JobContext, credit: Credit| {
        let store = store.clone();
        async move {
            let mut tx = store.pool().begin().await.map_err(JobError::retryable)?;
            sqlx::query("insert into faultline_drill.credits (job_id, token) values ($1, $2)")
                .bind(ctx.job_id)
                .bind(ctx.lease_token)
                .persistent(store.uses_prepared_statements())
                .execute(&mut *tx)
                .await
                .map_err(JobError::retryable)?;
            tokio::time::sleep(Duration::from_millis(credit.ms)).await;
            ctx.complete_and_commit(tx, ())
                .await
                .map_err(JobError::retryable)?;
            Ok(())
        }
    });
}

/// The drills' durable kind, `drill_steps {"steps", "ms", "sleep_after", "sleep_ms",
/// "hold_after", "hold_ms"}`: `steps` steps, each a `step_in` that writes one row to
/// `faultline_drill.step_rows` (job, step, token) and waits `ms` inside its transaction (a window
/// for stalls and kills); a durable sleep of `sleep_ms` after step `sleep_after`; a plain wait
/// of `hold_ms` after step `hold_after` when this run ran it (a window between steps). The chaos drill and the tests
/// check that every step's row is there exactly once, under the token that recorded the step.
pub fn register_steps(registry: &mut HandlerRegistry, store: Store) {
    #[derive(serde::Deserialize)]
    struct Steps {
        steps: u32,
        #[serde(default)]
        ms: u64,
        #[serde(default)]
        sleep_after: Option<u32>,
        #[serde(default)]
        sleep_ms: u64,
        #[serde(default)]
        hold_after: Option<u32>,
        #[serde(default)]
        hold_ms: u64,
    }
    registry.register_fn("drill_steps", move |ctx: JobContext, job: Steps| {
        let store = store.clone();
        async move {
            let (id, token) = (ctx.job_id, ctx.lease_token);
            let persistent = store.uses_prepared_statements();
            for i in 1..=job.steps.min(100) {
                let mut tx = store.pool().begin().await.map_err(JobError::retryable)?;
                // Whether this run ran the step (a recorded step returns without running).
                let ran = std::sync::atomic::AtomicBool::new(false);
                let step = async |conn: &mut sqlx::PgConnection| {
                    ran.store(true, std::sync::atomic::Ordering::Relaxed);
                    sqlx::query(
                        "insert into faultline_drill.step_rows (job_id, step, token) values ($1, $2, $3)",
                    )
                    .bind(id)
                    .bind(i as i32)
                    .bind(token)
                    .persistent(persistent)
                    .execute(&mut *conn)
                    .await?;
                    tokio::time::sleep(Duration::from_millis(job.ms)).await;
                    Ok(i)
                };
                ctx.step_in(&mut tx, &format!("s{i}"), step).await?;
                tx.commit().await.map_err(JobError::retryable)?;
                if job.hold_after == Some(i) && ran.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(job.hold_ms)).await;
                }
                if job.sleep_after == Some(i) {
                    ctx.sleep(Duration::from_millis(job.sleep_ms)).await?;
                }
            }
            Ok(())
        }
    });
}

pub struct Journal {
    store: Store,
}

impl Journal {
    pub fn new(store: Store) -> Self {
        Journal { store }
    }

    async fn record(&self, ctx: &JobContext, event: &str, detail: Option<&str>) {
        // Best effort and bounded: a journal write must not hold a job through an outage.
        // Behind PgBouncer, in a transaction of its own (as the store does; see its `exec.rs`).
        let insert = async {
            let mut tx = self.store.pool().begin().await?;
            sqlx::query(
                "insert into faultline_drill.executions (job_id, token, attempt, worker, event, detail)
                 values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(ctx.job_id)
            .bind(ctx.lease_token)
            .bind(ctx.attempt)
            .bind(ctx.worker_id.as_ref())
            .bind(event)
            .bind(detail)
            .persistent(self.store.uses_prepared_statements())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), insert).await;
    }
}

impl ExecutionHook for Journal {
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
        Box::pin(self.record(ctx, "started", None))
    }

    fn finished<'a>(&'a self, ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a> {
        Box::pin(async move {
            match end {
                RunEnd::Succeeded => self.record(ctx, "succeeded", None).await,
                RunEnd::Failed(error) => self.record(ctx, "failed", Some(error)).await,
                RunEnd::Stopped => self.record(ctx, "stopped", None).await,
            }
        })
    }
}
