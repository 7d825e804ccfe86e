//! # Faultline
//!
//! A PostgreSQL-backed job queue whose selling point is correctness under failure: worker
//! crashes, duplicate submissions and database outages never lose a job, never run a job past
//! its attempt budget, and never let a worker that lost its lease overwrite the result of the
//! worker that holds it. Postgres is the only source of truth.
//!
//! ## A tour
//!
//! ```text
//!   enqueue ──► queued ──claim_batch──► running ──complete──► succeeded
//!                 ▲  │                  │  │ │
//!                 │  │ cancel           │  │ └─fail_attempt (spent / permanent)──► failed ─┐
//!                 │  ▼                  │  └──────cancel───────► cancelled ──────────────┐ │
//!                 │ cancelled           │                                              │ │
//!                 ├──── fail_attempt (retryable, backoff) / reap_expired / release ◄───┘ │
//!                 └──────────────────────────── retry ◄──────────────────────────────────┴┘
//! ```
//!
//! - [`job`]: the model ([`Job`], [`NewJob`], [`JobState`], [`JobId`]).
//! - [`Store`]: every transition, one method each, fenced by the lease token
//!   ([`Lease`]); see the table in the [`store`] module.
//! - [`retry`]: the backoff policy.
//! - [`db`]: connecting and migrating (`faultline.jobs`, in its own schema).
//! - [`worker`]: the runtime that runs handlers: claims, heartbeats, fencing, shutdown.
//! - [`maintenance`]: the reaper (expired leases) and the pruner (retention).
//! - [`metrics`]: every Prometheus metric, by its fixed name.
//! - [`pg`]: a private Postgres cluster (for `faultline up`, drills, the benchmark and tests).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use faultline::{db, NewJob, Store};
//!
//! let pool = db::connect("postgres://localhost/app", &db::PoolConfig::default())?;
//! db::migrate(&pool).await?;
//! let store = Store::new(pool.clone());
//!
//! // Enqueue inside your own transaction: the job exists only if it commits.
//! let mut tx = pool.begin().await?;
//! store.enqueue_in(&mut tx, NewJob::new("email.send", serde_json::json!({"to": "a@b.c"}))).await?;
//! tx.commit().await?;
//!
//! // A worker claims, then reports under its lease.
//! for claimed in store.claim_batch(&["default".into()], "worker-1", 10, Duration::from_secs(30)).await? {
//!     store.complete(&claimed.lease).await?;
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod db;
pub mod error;
mod fingerprint;
pub mod http;
pub mod job;
pub mod job_args;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod names;
#[cfg(feature = "otel")]
pub mod otel;
pub mod pg;
pub mod retry;
pub mod schedule;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod time_range;
pub mod traceparent;
mod webhook_headers;
pub mod worker;

pub use error::StoreError;
pub use job::{
    AttemptError, Dependency, Job, JobFilter, JobId, JobState, NewJob, Page, QueueStats, RateLimit,
    Unique, UniqueScope,
};
pub use job_args::{IntoNewJob, JobArgs, JobOptions};
pub use lease::{Lease, LeaseLostReason};
pub use retry::{Backoff, Jitter};
pub use store::{
    BatchItem, ClaimOutcome, Claimed, Enqueued, FailOutcome, HistoryOutcome, ReapOutcome,
    ReapedJob, Store, StoreConfig, Throttle,
};
