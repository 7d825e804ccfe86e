//! The store's typed errors. Every variant is one a caller can match on: the HTTP layer maps them
//! to statuses, the worker counts `LeaseLost` as a stale report.

use crate::job::{JobId, JobState};
use crate::lease::LeaseLostReason;

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A field of the request is out of bounds; nothing was written.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field, as named in the API (`jobs[3].queue` for a job of a batch).
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),

    /// No schedule has this name.
    #[error("schedule {0:?} not found")]
    ScheduleNotFound(String),

    /// The idempotency key is taken by a job created from a different request.
    #[error("idempotency key {key:?} is already used by job {existing} with a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The job that holds it.
        existing: JobId,
    },

    /// The job is not in a state this request can move it from; nothing changed.
    #[error("job {id} is {state}: cannot {action} it")]
    InvalidTransition {
        /// The job.
        id: JobId,
        /// Its current state.
        state: JobState,
        /// What was asked (`cancel`, `retry`).
        action: &'static str,
    },

    /// A retry of a job whose dependency failed or was cancelled: it would only be cancelled
    /// again. Retry the dependency first; nothing changed.
    #[error("job {id} depends on job {dependency}, which is {state}: retry that job first")]
    DependencyFailed {
        /// The job.
        id: JobId,
        /// The dependency that failed or was cancelled.
        dependency: JobId,
        /// Its state.
        state: JobState,
    },

    /// A retry of a job unique while live (`UniqueScope::Active`) while another live job holds
    /// its uniqueness key: two live jobs would share it. Nothing changed; retry it once that
    /// job has finished.
    #[error("job {id} cannot be retried: another live job holds its uniqueness key")]
    UniqueKeyHeld {
        /// The job.
        id: JobId,
    },

    /// The caller's lease (id + fencing token) is no longer the job's live lease: the report was
    /// rejected and changed nothing.
    #[error("lease on job {id} lost: {reason}")]
    LeaseLost {
        /// The job.
        id: JobId,
        /// Why the lease no longer holds.
        reason: LeaseLostReason,
    },

    /// The database refused or could not be reached. (Not a `source`: the message already
    /// carries the cause, so an error chain prints it once.)
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl StoreError {
    /// True when the database could not be reached (connection refused or dropped, pool timed
    /// out): the request may succeed if retried once the database is back. The API answers 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => is_unavailable(e),
            _ => false,
        }
    }

    /// True when the database refused this statement for good (a data exception, a constraint,
    /// a value it cannot store): retrying the same statement fails the same way, so a caller
    /// must not loop on it as if the database were away. See [`is_transient`].
    pub fn is_permanent_database_error(&self) -> bool {
        match self {
            StoreError::Database(e) => !is_transient(e),
            _ => false,
        }
    }

    /// A field error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// True when retrying the same statement later may succeed: the database is unreachable
/// ([`is_unavailable`]), or it aborted the statement for a reason of the moment — a
/// serialization failure (40001), a deadlock (40P01), a lock or statement timeout (55P03,
/// 57014), insufficient resources (class 53). Anything else (data exceptions in class 22,
/// constraint violations in class 23, a value that cannot be encoded or decoded) is permanent.
pub fn is_transient(error: &sqlx::Error) -> bool {
    if is_unavailable(error) {
        return true;
    }
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(code.as_ref(), "40001" | "40P01" | "55P03" | "57014") || code.starts_with("53")
        }),
        _ => false,
    }
}

/// True when a sqlx error means "the database is not there right now" rather than "the database
/// refused this statement".
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            // Class 08 (connection exception), 57P01..57P03 (admin/crash shutdown, cannot
            // connect now), 53300 (too many connections).
            db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("57P") || code == "53300"
            })
        }
        _ => false,
    }
}
