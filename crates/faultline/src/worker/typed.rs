//! Typed handlers: one per [`JobArgs`] type, registered without spelling the kind.
//!
//! ```
//! use faultline::worker::{HandlerRegistry, JobContext};
//! use faultline::JobArgs;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Resize { image: String, width: u32 }
//! impl JobArgs for Resize { const KIND: &'static str = "image.resize"; }
//!
//! let mut registry = HandlerRegistry::new();
//! registry.register_job_fn(|_ctx: JobContext, job: Resize| async move {
//!     println!("resizing {} to {}px", job.image, job.width);
//!     Ok(())
//! });
//! assert_eq!(registry.kinds(), ["image.resize"]);
//! ```

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use super::handler::{BoxedJob, ErasedHandler, FnHandler, Handler, HandlerRegistry, JobContext};
use super::handler::{JobError, JobResult};
use crate::job_args::JobArgs;
use crate::payload::Payload;

/// A [`Handler`] whose payload is a [`JobArgs`] type: its errors name the Rust type.
struct Typed<H>(H);

impl<H> ErasedHandler for Typed<H>
where
    H: Handler,
    H::Payload: JobArgs,
{
    fn call(self: Arc<Self>, ctx: JobContext, payload: Payload) -> BoxedJob {
        Box::pin(async move {
            let name = std::any::type_name::<H::Payload>();
            let kind = <H::Payload as JobArgs>::KIND;
            if ctx.kind != kind {
                return Err(JobError::permanent(format!(
                    "job type {name} runs kind {kind:?}, but this job is of kind {:?}",
                    ctx.kind
                )));
            }
            let args = payload.deserialize::<H::Payload>().map_err(|e| {
                JobError::permanent(format!(
                    "invalid payload for job type {name} (kind {kind:?}): {e}"
                ))
            })?;
            let attempt = u32::try_from(ctx.attempt).unwrap_or(1);
            let output = self
                .0
                .handle(ctx, args)
                .await
                .map_err(|e| e.or_delay(<H::Payload as JobArgs>::backoff(attempt)))?;
            Payload::serialize(&output).map_err(|e| {
                JobError::permanent(format!("the result of job type {name} is not JSON: {e}"))
            })
        })
    }
}

impl HandlerRegistry {
    /// Run `handler` for jobs of its payload type's kind (`H::Payload::KIND`), replacing any
    /// handler registered for that kind. A job whose payload does not deserialise into the type,
    /// or whose kind is not the type's, fails permanently with an error naming the type. The
    /// type's [`JobOptions::timeout`](crate::JobOptions::timeout), if set, becomes the kind's
    /// default timeout; its [`JobOptions::queue`](crate::JobOptions::queue) is a queue a
    /// [`Worker`](super::Worker) built without explicit queues serves.
    pub fn register_job<H>(&mut self, handler: H) -> &mut Self
    where
        H: Handler,
        H::Payload: JobArgs,
    {
        let kind = <H::Payload as JobArgs>::KIND;
        let options = <H::Payload as JobArgs>::options();
        if let Some(timeout) = options.timeout {
            self.set_timeout(kind, timeout);
        }
        let queue = options
            .queue
            .unwrap_or_else(|| crate::job::DEFAULT_QUEUE.to_owned());
        self.insert_erased(kind, Arc::new(Typed(handler)));
        self.set_queue(kind, queue);
        self
    }

    /// Run an async closure for jobs of type `A` (see [`HandlerRegistry::register_job`]).
    pub fn register_job_fn<A, O, F, Fut>(&mut self, f: F) -> &mut Self
    where
        A: JobArgs,
        O: Serialize + Send + 'static,
        F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult<O>> + Send + 'static,
    {
        self.register_job(FnHandler::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ping {
        n: u8,
    }
    impl JobArgs for Ping {
        const KIND: &'static str = "ping";
    }

    fn context(kind: &str) -> JobContext {
        JobContext {
            max_attempts: 1,
            worker_id: Arc::from("w"),
            ..JobContext::for_test(kind)
        }
    }

    fn plus_one(_ctx: JobContext, ping: Ping) -> std::future::Ready<JobResult<u8>> {
        std::future::ready(Ok(ping.n + 1))
    }

    fn handler() -> Arc<dyn ErasedHandler> {
        Arc::new(Typed(FnHandler::new(plus_one)))
    }

    #[tokio::test]
    async fn a_typed_handler_runs_its_kind_and_refuses_another_naming_the_type() {
        let out = handler()
            .call(context("ping"), serde_json::json!({"n": 1}).into())
            .await;
        assert_eq!(out.map(|p| p.to_value()), Ok(serde_json::json!(2)));
        let err = handler()
            .call(context("pong"), serde_json::json!({"n": 1}).into())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("Ping"), "{err}");
        assert!(err.message().contains("\"pong\""), "{err}");
        let err = handler()
            .call(context("ping"), serde_json::json!({"n": 300}).into())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().contains("invalid payload for job type"),
            "{err}"
        );
    }
}
