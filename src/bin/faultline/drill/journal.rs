//! The execution journal the chaos drill reads: every handler run of a worker started with
//! `--drill-journal` is recorded in `faultline_drill.executions` (job, fencing token, attempt,
//! worker, started / succeeded / failed / stopped), before its result is reported. A success
//! that the fence then rejects is still in the journal, so it can be counted.

use std::time::Duration;

use faultline::worker::{ExecutionHook, HookFuture, JobContext, RunEnd};
use sqlx::PgPool;

pub struct Journal {
    pool: PgPool,
}

impl Journal {
    pub fn new(pool: PgPool) -> Self {
        Journal { pool }
    }

    async fn record(&self, ctx: &JobContext, event: &str, detail: Option<&str>) {
        // Best effort and bounded: a journal write must not hold a job through an outage.
        let insert = sqlx::query(
            "insert into faultline_drill.executions (job_id, token, attempt, worker, event, detail)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ctx.job_id)
        .bind(ctx.lease_token)
        .bind(ctx.attempt)
        .bind(ctx.worker_id.as_ref())
        .bind(event)
        .bind(detail)
        .execute(&self.pool);
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
