//! The built-in job kinds that make the binary useful without writing Rust: `noop`, `sleep`,
//! `fail` and `webhook` (in its own module).

use std::time::Duration;

use serde::Deserialize;

use super::handler::{HandlerRegistry, JobContext, JobError, JobResult};
use super::webhook::{ProxyError, Webhook, WebhookConfig};

/// `sleep` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sleep {
    ms: u64,
}

/// `fail` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    times: u32,
    /// The error text of the failing attempts (default: says it fails on purpose).
    #[serde(default)]
    message: Option<String>,
}

/// A registry with every built-in kind.
///
/// # Errors
/// [`ProxyError`] when the webhook settings name a proxy that cannot be used.
pub fn builtin_registry(webhook: WebhookConfig) -> Result<HandlerRegistry, ProxyError> {
    let mut registry = HandlerRegistry::new();
    register_builtins(&mut registry, webhook)?;
    Ok(registry)
}

/// Add the built-in kinds to `registry`:
/// - `noop`: succeeds at once (any payload);
/// - `sleep {"ms": N}`: sleeps N ms, stopping early when cancelled;
/// - `fail {"times": N, "message"?: text}`: fails (retryably, with `message` as the error when
///   given) its first N attempts, then succeeds;
/// - `webhook {"url", "method", "headers", "body"}`: see [`super::webhook`].
///
/// # Errors
/// [`ProxyError`] when the webhook settings name a proxy that cannot be used.
pub fn register_builtins(
    registry: &mut HandlerRegistry,
    webhook: WebhookConfig,
) -> Result<(), ProxyError> {
    registry.register_fn("noop", |_ctx: JobContext, _payload: crate::Payload| async {
        Ok(())
    });
    registry.register_fn("sleep", |ctx: JobContext, sleep: Sleep| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep.ms)) => Ok(()),
            _ = ctx.cancelled() => Err(JobError::retryable("cancelled while sleeping")),
        }
    });
    registry.register_fn("fail", |ctx: JobContext, fail: Fail| async move {
        fail_first(&ctx, fail.times, fail.message.as_deref())
    });
    registry.register("webhook", Webhook::new(webhook)?);
    Ok(())
}

fn fail_first(ctx: &JobContext, times: u32, message: Option<&str>) -> JobResult {
    if i64::from(ctx.attempt) <= i64::from(times) {
        Err(JobError::retryable(match message {
            Some(message) => message.to_owned(),
            None => format!(
                "failing on purpose: attempt {} of the first {times} that fail",
                ctx.attempt
            ),
        }))
    } else {
        Ok(())
    }
}
