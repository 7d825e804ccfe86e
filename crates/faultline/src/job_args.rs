//! Typed jobs: a Rust type is a job's arguments, its kind a constant of the type, so callers
//! enqueue `SendEmail { .. }` without spelling the kind, and workers register one typed handler
//! per type (see [`crate::worker::HandlerRegistry::register_job`]).
//!
//! ```
//! use faultline::{JobArgs, JobOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String, subject: String }
//!
//! impl JobArgs for SendEmail {
//!     const KIND: &'static str = "email.send";
//!     fn options() -> JobOptions {
//!         JobOptions { queue: Some("mail".into()), max_attempts: Some(3), ..JobOptions::default() }
//!     }
//! }
//!
//! let job = faultline::NewJob::from_args(&SendEmail { to: "a@b.c".into(), subject: "hi".into() })
//!     .unwrap()
//!     .with_priority(-1);
//! assert_eq!((job.kind.as_str(), job.queue.as_str(), job.max_attempts), ("email.send", "mail", 3));
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use crate::job::{NewJob, Unique, UniqueScope};

/// The arguments of one kind of job. The payload is the type serialised with serde (and read
/// back with serde by the worker), so it must round-trip through JSON.
pub trait JobArgs: Serialize + DeserializeOwned + Send + 'static {
    /// The job kind: the name workers route on and the API shows. Changing it orphans the jobs
    /// already queued under the old name.
    const KIND: &'static str;

    /// Defaults for every job of this type; each can still be overridden on the [`NewJob`]
    /// made by [`NewJob::from_args`].
    fn options() -> JobOptions {
        JobOptions::default()
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed
    /// retryably; `None` (the default) for the store's backoff. A handler's
    /// [`JobError::retry_after`](crate::worker::JobError::retry_after) overrides it.
    fn backoff(attempt: u32) -> Option<Duration> {
        let _ = attempt;
        None
    }
}

/// Per-type defaults of a typed job ([`JobArgs::options`]); `None` keeps the queue's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// The queue (`default` when `None`).
    pub queue: Option<String>,
    /// Lower runs first (0 when `None`).
    pub priority: Option<i16>,
    /// The attempt budget (5 when `None`).
    pub max_attempts: Option<i32>,
    /// Each attempt's execution timeout (whole milliseconds). A worker that registers the type
    /// also uses it for jobs of this kind enqueued without one (over HTTP, say).
    pub timeout: Option<Duration>,
    /// Uniqueness with the key derived from kind, queue and arguments: e.g.
    /// `Some(UniqueScope::Active)` for "at most one pending job with these arguments".
    pub unique: Option<UniqueScope>,
}

impl NewJob {
    /// A job of type `A`: kind `A::KIND`, `args` as its payload, `A::options()` applied.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] (field `payload`) when `args` cannot be serialised as JSON (a map
    /// with non-string keys, a failing `Serialize` impl).
    pub fn from_args<A: JobArgs>(args: &A) -> Result<NewJob, StoreError> {
        let payload = crate::payload::Payload::serialize(args).map_err(|e| {
            StoreError::invalid(
                "payload",
                format!(
                    "{} cannot be written as JSON: {e}",
                    std::any::type_name::<A>()
                ),
            )
        })?;
        let options = A::options();
        let mut job = NewJob::new(A::KIND, payload);
        if let Some(queue) = options.queue {
            job.queue = queue;
        }
        if let Some(priority) = options.priority {
            job.priority = priority;
        }
        if let Some(max_attempts) = options.max_attempts {
            job.max_attempts = max_attempts;
        }
        if let Some(timeout) = options.timeout {
            job.timeout_ms = Some(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
        }
        job.unique = options.unique.map(|scope| Unique { key: None, scope });
        Ok(job)
    }
}

/// What [`crate::Store::enqueue`] takes: a [`NewJob`], or any [`JobArgs`] value (its kind and
/// options from the type).
pub trait IntoNewJob {
    /// The job to enqueue.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when typed arguments cannot be serialised.
    fn into_new_job(self) -> Result<NewJob, StoreError>;
}

impl IntoNewJob for NewJob {
    fn into_new_job(self) -> Result<NewJob, StoreError> {
        Ok(self)
    }
}

impl<A: JobArgs> IntoNewJob for A {
    fn into_new_job(self) -> Result<NewJob, StoreError> {
        NewJob::from_args(&self)
    }
}
