//! Execution hooks: code the worker awaits around every handler run, for audit journals and
//! tests. `finished` is awaited before the result is reported, so a hook that records successes
//! sees every success a handler produced, including those the fence will then reject.

use std::future::Future;
use std::pin::Pin;

use super::handler::JobContext;

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

/// Called around every handler run. Keep it short: it delays the slot and the report.
pub trait ExecutionHook: Send + Sync + 'static {
    /// Before the handler starts.
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a>;
    /// After it ends, before its result is reported.
    fn finished<'a>(&'a self, ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a>;
}
