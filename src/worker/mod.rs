//! The worker runtime: typed handlers per job kind, batched claims, LISTEN/NOTIFY wake-ups,
//! heartbeats with self-fencing, graceful shutdown, and survival of database outages.
//!
//! ```no_run
//! # async fn demo(store: faultline::Store) {
//! use faultline::worker::{builtin_registry, JobContext, WebhookConfig, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut registry = builtin_registry(WebhookConfig::default()).expect("no proxy configured");
//! registry.register_fn("greet", |ctx: JobContext, name: String| async move {
//!     println!("hello {name}, attempt {}", ctx.attempt);
//!     Ok(())
//! });
//! let worker = Worker::new(store, registry, WorkerConfig::default()).expect("valid config");
//! let shutdown = CancellationToken::new();
//! worker.run(shutdown).await; // returns after shutdown.cancel(), gracefully
//! # }
//! ```

mod active;
mod builtin;
mod config;
mod execute;
mod handler;
mod health;
mod heartbeat;
mod hook;
mod listener;
mod prefetch;
mod registry;
mod report;
mod reporter;
mod runtime;
mod shared;
mod typed;
pub mod webhook;

pub use builtin::{builtin_registry, register_builtins};
pub use config::{default_worker_id, ConfigError, Listen, WorkerConfig};
pub use handler::{FnHandler, Handler, HandlerRegistry, JobContext, JobError, JobResult};
pub use hook::{ExecutionHook, HookFuture, RunEnd, RunFuture};
pub use runtime::Worker;
pub use webhook::{ProxyError, WebhookConfig};
