//! Execution hooks: middleware the worker runs around every handler run — logging, metrics,
//! audit journals, tenant context, tracing spans — without wrapping each handler. A worker takes
//! any number ([`crate::worker::Worker::with_hook`]): `started` in the order they were added,
//! `wrap` nesting the first outermost, `finished` in reverse order. `finished` is awaited before
//! the result is reported, so a hook that records successes sees every success a handler
//! produced, including those the fence will then reject.
//!
//! ```
//! use faultline::worker::{ExecutionHook, HookFuture, JobContext, RunEnd, RunFuture};
//!
//! tokio::task_local! { static TENANT: String; }
//!
//! /// Logs every run, and runs each handler with its queue as the tenant in a task-local.
//! struct Tenancy;
//!
//! impl ExecutionHook for Tenancy {
//!     fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
//!         Box::pin(async move { tracing::info!(job = %ctx.job_id, "started") })
//!     }
//!     fn finished<'a>(&'a self, ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a> {
//!         Box::pin(async move { tracing::info!(job = %ctx.job_id, ?end, "finished") })
//!     }
//!     fn wrap(&self, ctx: &JobContext, run: RunFuture) -> RunFuture {
//!         Box::pin(TENANT.scope(ctx.queue.clone(), run))
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;

use super::handler::{JobContext, RunFuture};

/// What a hook is told when a handler run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The handler returned `Ok`.
    Succeeded,
    /// The handler failed (the message), timed out or panicked.
    Failed(String),
    /// The run was stopped (lease lost, shutdown, self-fence) before it produced a result.
    Stopped,
}

/// A boxed future returned by hooks.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Called around every handler run. Keep it short: it delays the slot and the report. Every
/// method has a default that does nothing, so a hook implements only what it needs.
pub trait ExecutionHook: Send + Sync + 'static {
    /// Before the handler starts.
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
        let _ = ctx;
        Box::pin(async {})
    }

    /// After it ends, before its result is reported.
    fn finished<'a>(&'a self, ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a> {
        let _ = (ctx, end);
        Box::pin(async {})
    }

    /// The handler's run, wrapped: give it a span (`tracing::Instrument`), a task-local
    /// (tenant, request id), a measure of its time. The wrapped future runs in the handler's
    /// own task, under its timeout and stop signal; what it returns is the run's outcome.
    fn wrap(&self, ctx: &JobContext, run: RunFuture) -> RunFuture {
        let _ = ctx;
        run
    }
}
