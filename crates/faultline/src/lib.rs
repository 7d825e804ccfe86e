//! # Faultline
//!
//! A PostgreSQL-backed job queue whose selling point is correctness under failure: worker
//! crashes, duplicate submissions and database outages never lose a job, never run a job past
//! its attempt budget, and never let a worker that lost its lease overwrite the result of the
//! worker that holds it. Postgres is the only source of truth.
//!
//! ## A tour
//!
//! **A job is a type** ([`JobArgs`]): its kind a constant, its payload the type through serde,
//! its defaults ([`JobOptions`]) written once.
//!
//! ```
//! use std::time::Duration;
//! use faultline::{JobArgs, JobOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendWelcome {
//!     user_id: i64,
//! }
//!
//! impl JobArgs for SendWelcome {
//!     const KIND: &'static str = "welcome.send";
//!     fn options() -> JobOptions {
//!         JobOptions {
//!             queue: Some("mail".into()),
//!             max_attempts: Some(8),
//!             timeout: Some(Duration::from_secs(30)),
//!             ..JobOptions::default()
//!         }
//!     }
//! }
//! ```
//!
//! **Enqueue it** with [`Store::enqueue`], or with [`Store::enqueue_in`] inside your own
//! transaction, so that the job exists only if your own writes commit:
//!
//! ```no_run
//! # use faultline::{JobArgs, JobOptions};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct SendWelcome { user_id: i64 }
//! # impl JobArgs for SendWelcome { const KIND: &'static str = "welcome.send"; }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use faultline::{db, Store};
//!
//! let pool = db::connect("postgres://localhost/app", &db::PoolConfig::default())?;
//! db::migrate(&pool).await?; // the `faultline` schema, idempotent and advisory-locked
//! let store = Store::new(pool.clone());
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("insert into users (id) values (42)").execute(&mut *tx).await?;
//! store.enqueue_in(&mut tx, SendWelcome { user_id: 42 }).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! **Work it** with a [`Worker`](worker::Worker): one typed handler per type; the worker claims
//! in batches, renews each lease by heartbeat, fences every report by the lease's token, and
//! stops gracefully on the token you cancel.
//!
//! ```no_run
//! # use faultline::{JobArgs, JobOptions, Store};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct SendWelcome { user_id: i64 }
//! # impl JobArgs for SendWelcome { const KIND: &'static str = "welcome.send"; }
//! # async fn demo(store: Store) -> Result<(), Box<dyn std::error::Error>> {
//! use faultline::worker::{HandlerRegistry, JobContext, JobError, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! async fn send_welcome(ctx: JobContext, job: SendWelcome) -> Result<(), JobError> {
//!     println!("welcome user {} (attempt {})", job.user_id, ctx.attempt);
//!     Ok(())
//! }
//!
//! let mut registry = HandlerRegistry::new();
//! registry.register_job_fn(send_welcome);
//! // No queues named: `default` and the typed handlers' queues (`mail` here).
//! let worker = Worker::new(store, registry, WorkerConfig::default())?;
//! let shutdown = CancellationToken::new();
//! worker.run(shutdown).await; // returns once `shutdown` is cancelled and work has drained
//! # Ok(()) }
//! ```
//!
//! **Test it** with [`testing`] (feature `testing`): run the jobs a call enqueued inline,
//! assert what was enqueued, move retries' backoff to now.
//!
//! ## Where things are
//!
//! - [`Job`], [`NewJob`], [`JobState`], [`JobId`], [`Payload`]: the model. A payload is JSON
//!   kept as the exact text it was given in.
//! - [`Store`]: every state transition, one method each, fenced by the lease token ([`Lease`]);
//!   the table in [`store`] lists them.
//! - [`worker`]: the runtime that runs handlers; [`maintenance`]: the elected maintainer and
//!   the services it runs (reaper, pruner, scheduler, depth sampler).
//! - [`db`]: connecting and migrating; [`schedule`]: cron schedules; [`metrics`]: the
//!   Prometheus registry.
//! - Features: `http` (the HTTP API and dashboard, [`http`]), `webhook` (the built-in job
//!   kinds, `webhook` among them), `testing`, `otel` (traces across the queue). None is on by
//!   default.
//!
//! The repository's `docs/` has the architecture (the life of a job through the code), the
//! guarantees and how each is enforced, operations and the HTTP API.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod db;
pub mod error;
mod fingerprint;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
mod job_args;
mod lease;
pub mod maintenance;
pub mod metrics;
mod names;
#[cfg(feature = "otel")]
pub mod otel;
mod payload;
mod retry;
pub mod schedule;
mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod text;
#[doc(hidden)]
pub mod time_range;
#[doc(hidden)]
pub mod traceparent;
mod webhook_headers;
pub mod worker;

/// The sqlx this crate is built with: `faultline::sqlx::PgPool`, transactions for
/// [`Store::enqueue_in`], without a second, possibly different, sqlx in the application.
pub use sqlx;
/// The token that stops a [`worker::Worker`] (and the maintainer) gracefully: cancel it.
pub use tokio_util::sync::CancellationToken;

/// What most applications use, in one import: `use faultline::prelude::*;`.
pub mod prelude {
    pub use crate::schedule::{Misfire, ScheduleSpec};
    pub use crate::worker::{
        HandlerRegistry, JobContext, JobError, JobResult, Worker, WorkerConfig,
    };
    pub use crate::{
        db, CancellationToken, Enqueued, Job, JobArgs, JobId, JobOptions, JobState, NewJob,
        Payload, Store, StoreConfig, StoreError,
    };
}

pub use error::StoreError;
/// `#[derive(JobArgs)]` with `#[job(kind = "...", queue = "...", max_attempts = N,
/// priority = N, timeout = "30s", unique = "active")]` (feature `derive`, on by default).
#[cfg(feature = "derive")]
pub use faultline_macros::JobArgs;
pub use job::{
    AttemptError, Dependency, Job, JobFilter, JobId, JobState, NewJob, Page, QueueStats, RateLimit,
    Unique, UniqueScope,
};
pub use job_args::{IntoNewJob, JobArgs, JobOptions};
pub use lease::{Lease, LeaseLostReason};
pub use payload::Payload;
pub use retry::{Backoff, Jitter};
pub use store::{
    BatchItem, ClaimOutcome, Claimed, Enqueued, FailOutcome, HistoryOutcome, ReapOutcome,
    ReapedJob, Store, StoreConfig, Throttle,
};
