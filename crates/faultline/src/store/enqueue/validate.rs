//! What an enqueue checks before it writes anything: every field in bounds, keys and
//! dependencies well formed, the payload's text within its limit.

use crate::error::StoreError;
use crate::job::{NewJob, UniqueScope, MAX_UNIQUE_PERIOD_MS};
use crate::names::{label_problem, name_problem};
use crate::schedule::SLOT_KEY_PREFIX;
use crate::store::Store;
use crate::time_range::time_problem;

impl Store {
    /// Check a job against the bounds the database also enforces, and against what a worker
    /// can serve, so the caller gets an error naming the field rather than a constraint
    /// violation (or a job that no worker could ever take).
    pub(crate) fn validate(&self, job: &NewJob) -> Result<(), StoreError> {
        names_and_keys(job)?;
        run_bounds(job)?;
        uniqueness(job)
    }

    /// The payload as the JSON text stored (`json`, not `jsonb`, so that it comes back exactly
    /// as sent: numbers digit for digit, keys in their order, `\u0000` kept), within the size
    /// limit.
    pub(crate) fn payload_text(&self, job: &NewJob) -> Result<String, StoreError> {
        let text = job.payload.get();
        job.payload
            .check()
            .map_err(|e| StoreError::invalid("payload", format!("is not valid JSON: {e}")))?;
        if text.len() > self.config.max_payload_bytes {
            return Err(StoreError::invalid(
                "payload",
                format!(
                    "is {} bytes; at most {} allowed",
                    text.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        Ok(text.to_owned())
    }
}

/// The job's kind, queue and keys (idempotency, concurrency), and a webhook's payload, in that
/// order: the first problem, naming its field.
fn names_and_keys(job: &NewJob) -> Result<(), StoreError> {
    if let Some(problem) = name_problem(&job.kind) {
        return Err(StoreError::invalid("kind", problem));
    }
    if let Some(problem) = name_problem(&job.queue) {
        return Err(StoreError::invalid("queue", problem));
    }
    if let Some(key) = &job.idempotency_key {
        if let Some(problem) = label_problem(key) {
            return Err(StoreError::invalid("idempotency_key", problem));
        }
    }
    if job.kind == "webhook" {
        if let Some((field, message)) =
            crate::webhook_headers::payload_problem(&job.payload.to_value())
        {
            return Err(StoreError::invalid(field, message));
        }
    }
    if let Some(key) = &job.concurrency_key {
        if let Some(problem) = label_problem(key) {
            return Err(StoreError::invalid("concurrency_key", problem));
        }
    }
    Ok(())
}

/// How the job runs: attempts, timeout, start time and trace context, in that order: the first
/// problem, naming its field.
fn run_bounds(job: &NewJob) -> Result<(), StoreError> {
    if job.max_attempts < 1 {
        return Err(StoreError::invalid(
            "max_attempts",
            format!("must be at least 1, got {}", job.max_attempts),
        ));
    }
    if let Some(timeout) = job.timeout_ms {
        if timeout < 1 {
            return Err(StoreError::invalid(
                "timeout_ms",
                format!("must be at least 1, got {timeout}"),
            ));
        }
    }
    if let Some(problem) = job.run_at.and_then(time_problem) {
        return Err(StoreError::invalid("run_at", problem));
    }
    if let Some(problem) = job
        .traceparent
        .as_deref()
        .and_then(|t| crate::traceparent::Traceparent::parse(t).err())
    {
        return Err(StoreError::invalid("traceparent", problem));
    }
    Ok(())
}

/// The job's uniqueness: its key, then its period: the first problem, naming its field.
fn uniqueness(job: &NewJob) -> Result<(), StoreError> {
    if let Some(unique) = &job.unique {
        if let Some(problem) = unique.key.as_deref().and_then(label_problem) {
            return Err(StoreError::invalid("unique_key", problem));
        }
        if let UniqueScope::Period { period_ms } = unique.scope {
            if !(1..=MAX_UNIQUE_PERIOD_MS).contains(&period_ms) {
                return Err(StoreError::invalid(
                    "unique_period_ms",
                    format!("must be 1 to {MAX_UNIQUE_PERIOD_MS} (366 days), got {period_ms}"),
                ));
            }
        }
    }
    Ok(())
}

/// Who enqueues: a client (the API, the CLI, a library caller), or the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    Client,
    Scheduler,
}

impl Origin {
    /// A client's idempotency key in the scheduler's namespace (docs/operations.md): one could take a
    /// schedule's slot before it comes due, and the schedule would fire nothing for it.
    pub(super) fn key_problem(self, job: &NewJob) -> Result<(), StoreError> {
        match &job.idempotency_key {
            Some(key) if self == Origin::Client && key.starts_with(SLOT_KEY_PREFIX) => {
                Err(StoreError::invalid(
                    "idempotency_key",
                    format!(
                        "keys starting with {SLOT_KEY_PREFIX:?} are reserved for schedules' jobs"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Whether the caller asked for one job or a batch: a batch's errors name the job by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Single,
    Batch,
}

impl Shape {
    /// `error` about the job at index `i`, its field named as the caller knows it.
    pub(super) fn name(self, i: usize, error: StoreError) -> StoreError {
        match error {
            StoreError::Invalid { field, message } if self == Shape::Batch => StoreError::Invalid {
                field: format!("jobs[{i}].{field}"),
                message,
            },
            other => other,
        }
    }
}
