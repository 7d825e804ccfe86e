//! The worker runtime: typed handlers per job kind, batched claims, LISTEN/NOTIFY wake-ups,
//! heartbeats with self-fencing, graceful shutdown, and survival of database outages.
//!
//! ```no_run
//! # async fn demo(store: faultline::Store) {
//! use faultline::worker::{HandlerRegistry, JobContext, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut registry = HandlerRegistry::new();
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
mod attempt;
#[cfg(feature = "webhook")]
mod builtin;
mod config;
mod durable;
mod handler;
mod health;
mod heartbeat;
mod hook;
mod listener;
mod prefetch;
mod presence;
mod reporter;
mod runtime;
mod shared;
mod typed;
#[cfg(feature = "webhook")]
pub mod webhook;

#[cfg(feature = "webhook")]
pub use builtin::{builtin_registry, register_builtins};
pub use config::{default_worker_id, ConfigError, Listen, WorkerConfig};
pub use handler::RunFuture;
#[cfg(feature = "testing")]
pub(crate) use handler::Settled;
pub use handler::{FnHandler, Handler, HandlerRegistry, JobContext, JobError, JobResult};
pub use hook::{ExecutionHook, HookFuture, RunEnd};
pub use runtime::Worker;
#[cfg(feature = "webhook")]
pub use webhook::{ProxyError, WebhookConfig};
