//! The job model: identifiers, states, what a caller submits ([`NewJob`]) and what the database
//! holds ([`Job`]).

use std::fmt;
use std::str::FromStr;

use crate::payload::Payload;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
use uuid::Uuid;

/// The queue a job goes to when the caller names none.
pub const DEFAULT_QUEUE: &str = "default";
/// The attempt budget of a job when the caller names none.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;
/// The largest payload accepted by default (serialized JSON bytes).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The largest handler result kept by default (serialized JSON bytes).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;
/// Longest queue name, kind and idempotency key (also a database constraint).
pub const MAX_NAME_LEN: usize = 255;

/// A job's identifier: a time-ordered UUID (v7), so ids sort roughly by creation time and the
/// primary-key index serves "newest first" listings.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(transparent)]
#[sqlx(transparent)]
#[cfg_attr(feature = "http", schema(value_type = String, format = Uuid, example = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"))]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh time-ordered id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// Where a job is in its life. See the crate docs for the transitions; the database rejects any
/// other (trigger `jobs_state_transition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (eligible once `next_run_at` has passed).
    Queued,
    /// Claimed by a worker that holds a lease on it.
    Running,
    /// Waiting for its dependencies (docs/library.md): `queued` once every one has succeeded,
    /// `cancelled` as soon as one fails or is cancelled. Never claimed.
    Waiting,
    /// Finished successfully (terminal).
    Succeeded,
    /// Out of attempts, or failed with a permanent error (terminal until retried by request).
    Failed,
    /// Cancelled by request (terminal until retried by request).
    Cancelled,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Waiting,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether no worker will touch the job again without an explicit request.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    /// The state's name, honouring width and alignment (`{:<9}` pads it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Returned when a string names no state.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown job state {0:?} (expected one of queued, running, waiting, succeeded, failed, \
     cancelled)"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

// Stored as text (with a CHECK constraint) rather than a Postgres enum, so that a later state can
// be added by a plain constraint change.
impl Type<Postgres> for JobState {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for JobState {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as Decode<Postgres>>::decode(value)?;
        Ok(s.parse()?)
    }
}

impl Encode<'_, Postgres> for JobState {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
    }
}

/// One failed attempt in a job's error history.
///
/// Read leniently: the history is JSON that other writers (an earlier release, an operator's
/// hand-made fix) may have shaped differently, and one odd entry must never make the job, or a
/// listing holding it, fail to load. A field of the wrong type reads as its default (a number as
/// text where text is expected).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct AttemptError {
    /// The attempt number (1-based) that failed.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub attempt: i32,
    /// The worker that held the lease.
    #[serde(default, deserialize_with = "lenient_optional_text")]
    pub worker: Option<String>,
    /// When the failure was recorded (database clock). An entry whose time cannot be read
    /// (written by hand, or by an old release with an overflowing backoff) reads as the Unix
    /// epoch rather than making the whole job unreadable.
    #[serde(default = "epoch", deserialize_with = "lenient_time")]
    pub at: DateTime<Utc>,
    /// The error text.
    #[serde(default, deserialize_with = "lenient_text")]
    pub error: String,
    /// Why the attempt ended: `error` (the handler failed) or `lease_expired` (the worker stopped
    /// heartbeating and the reaper took the job back).
    #[serde(default, deserialize_with = "lenient_text")]
    pub reason: String,
    /// When the next attempt was scheduled (backoff), if the failure was retried; `None` also
    /// when the stored time cannot be read.
    #[serde(default, deserialize_with = "lenient_optional_time")]
    pub retry_at: Option<DateTime<Utc>>,
}

fn epoch() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

fn lenient_i32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(value
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or_default())
}

fn lenient_optional_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text),
        other => Some(other.to_string()),
    })
}

fn lenient_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(lenient_optional_text(d)?.unwrap_or_default())
}

/// A time from the error history, or the epoch when it does not parse.
fn lenient_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    Ok(lenient_optional_time(d)?.unwrap_or(DateTime::UNIX_EPOCH))
}

fn lenient_optional_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The queue it is on.
    pub queue: String,
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input.
    #[cfg_attr(feature = "http", schema(value_type = serde_json::Value))]
    #[serde(default)]
    pub payload: Payload,
    /// Where it is in its life.
    pub state: JobState,
    /// Lower runs first.
    pub priority: i16,
    /// Attempts started so far (a lease handed back at shutdown is not counted).
    pub attempts: i32,
    /// The attempt budget.
    pub max_attempts: i32,
    /// Not eligible before this time.
    pub next_run_at: DateTime<Utc>,
    /// Per-job execution timeout in milliseconds, if set.
    pub timeout_ms: Option<i32>,
    /// The worker holding (or that last held) the lease.
    pub lease_owner: Option<String>,
    /// When the current lease lapses; set exactly while `running`.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The fencing token of the current (or last) lease.
    pub lease_token: Option<i64>,
    /// The submitter's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The last error text.
    pub last_error: Option<String>,
    /// Every failed attempt, oldest first.
    #[sqlx(json)]
    #[serde(default)]
    pub errors: Vec<AttemptError>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// At most the queue's `key_concurrency` running jobs share this key (docs/operations.md).
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// What the handler returned on success (docs/library.md), exactly as it was sent; `None` before
    /// success, or when the handler returned nothing.
    #[serde(default)]
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub result: Option<Payload>,
    /// The jobs this one waits for (docs/library.md): it runs once every one has succeeded.
    #[serde(default)]
    pub depends_on: Vec<JobId>,
    /// How many of `depends_on` have not succeeded yet (0 unless `waiting`).
    #[serde(default)]
    pub pending_dependencies: i32,
    /// Its uniqueness key (given or derived), if it was enqueued with a [`UniqueScope`].
    #[serde(default)]
    pub unique_key: Option<String>,
    /// The period of its uniqueness in milliseconds (`None`: unique while live, or no key).
    #[serde(default)]
    pub unique_period_ms: Option<i64>,
    /// The W3C `traceparent` of the context that enqueued it, if any: the worker runs the
    /// handler in a span whose parent it is (feature `otel`).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The durable steps it recorded, oldest first (docs/durable.md): filled by
    /// [`crate::Store::get`]; empty in listings and claims.
    #[serde(default)]
    #[sqlx(skip)]
    pub steps: Vec<crate::step::Step>,
    /// While parked for a signal (`waiting`): which, and until when. Filled by
    /// [`crate::Store::get`].
    #[serde(default)]
    #[sqlx(skip)]
    pub waiting_for: Option<crate::step::WaitingFor>,
}

/// A job to enqueue. Build one with [`NewJob::new`] and the `with_*` methods.
///
/// ```
/// use faultline::NewJob;
/// let job = NewJob::new("email.send", serde_json::json!({"to": "a@example.com"}))
///     .with_queue("mail")
///     .with_max_attempts(3)
///     .with_idempotency_key("signup-42");
/// assert_eq!(job.queue, "mail");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input, as the exact JSON text it was given in.
    pub payload: Payload,
    /// The queue; `default` unless set.
    pub queue: String,
    /// Lower runs first; 0 unless set.
    pub priority: i16,
    /// Attempt budget (≥ 1); 5 unless set.
    pub max_attempts: i32,
    /// Not eligible before this time; now unless set.
    pub run_at: Option<DateTime<Utc>>,
    /// At most one job exists per key.
    pub idempotency_key: Option<String>,
    /// Per-job execution timeout in milliseconds.
    pub timeout_ms: Option<i32>,
    /// At most the queue's `key_concurrency` (default 1) running jobs share this key.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// The jobs this one waits for (at most [`MAX_DEPENDENCIES`]): it starts `waiting`, becomes
    /// `queued` once every one has succeeded, and is cancelled as soon as one fails or is
    /// cancelled.
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    /// Uniqueness (see [`UniqueScope`]): at most one job per key in the scope; a duplicate
    /// returns the existing job instead of creating one.
    #[serde(default)]
    pub unique: Option<Unique>,
    /// The W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) of the context enqueueing it;
    /// with the `otel` feature, the current span's when `None`. Not part of the request an
    /// idempotency key stands for.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A job's uniqueness: a key and the scope in which it is unique. Independent of the idempotency
/// key, which stays unique for as long as its job is retained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unique {
    /// The key; `None` derives it from the job's kind, queue and payload (object keys in any
    /// order give the same key).
    pub key: Option<String>,
    /// Where the key is unique.
    pub scope: UniqueScope,
}

/// Where a uniqueness key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UniqueScope {
    /// At most one live job (queued, waiting or running) per key: the usual "one pending refresh
    /// per account". Once that job has finished, a new one may be created.
    Active,
    /// At most one job per key enqueued within `period_ms` milliseconds of the enqueue that
    /// created the last one, whatever became of it.
    Period {
        /// The period, 1 ms to [`MAX_UNIQUE_PERIOD_MS`].
        period_ms: i64,
    },
}

/// The longest uniqueness period: 366 days.
pub const MAX_UNIQUE_PERIOD_MS: i64 = 366 * 24 * 3600 * 1000;

/// Most dependencies one job may have.
pub const MAX_DEPENDENCIES: usize = 100;

/// A job another waits for: an existing job, or (in a batch) an earlier job of the same batch.
/// In JSON, a job id (a UUID string) or an index (a non-negative integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Dependency {
    /// A job that exists already (live or retained in history).
    Job(JobId),
    /// The job at this index of the same batch; it must come earlier in the batch.
    Earlier(usize),
}

impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dependency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a job id (UUID) or the index of an earlier job of the same batch")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Dependency, E> {
                text.parse().map(Dependency::Job).map_err(|_| {
                    E::custom(format!(
                        "expected a job id (UUID) or the index of an earlier job of the same \
                         batch, got {text:?}"
                    ))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Dependency, E> {
                usize::try_from(n)
                    .map(Dependency::Earlier)
                    .map_err(|_| E::custom(format!("index {n} is out of range")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Dependency, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "an index of an earlier job cannot be negative, got {n}"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<JobId> for Dependency {
    fn from(id: JobId) -> Self {
        Dependency::Job(id)
    }
}

impl NewJob {
    /// A job of `kind` with `payload`, and defaults for everything else.
    pub fn new(kind: impl Into<String>, payload: impl Into<Payload>) -> Self {
        NewJob {
            kind: kind.into(),
            payload: payload.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: None,
            idempotency_key: None,
            timeout_ms: None,
            concurrency_key: None,
            depends_on: Vec::new(),
            unique: None,
            traceparent: None,
        }
    }

    /// Continue the trace `traceparent` (a W3C `traceparent` header value) in the worker.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// At most one live job (queued, waiting or running) with this job's uniqueness key: while
    /// one exists, enqueueing another returns it ([`crate::Enqueued::Duplicate`]). The key is
    /// the one given with [`NewJob::with_unique_key`], else derived from kind, queue and payload.
    pub fn unique_while_active(mut self) -> Self {
        let key = self.unique.take().and_then(|u| u.key);
        self.unique = Some(Unique {
            key,
            scope: UniqueScope::Active,
        });
        self
    }

    /// At most one job with this job's uniqueness key enqueued within `period` (rounded down to
    /// whole milliseconds) of the enqueue that created the last one.
    pub fn unique_for(mut self, period: std::time::Duration) -> Self {
        let key = self.unique.take().and_then(|u| u.key);
        let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
        self.unique = Some(Unique {
            key,
            scope: UniqueScope::Period { period_ms },
        });
        self
    }

    /// Use `key` as the uniqueness key (scope: active unless [`NewJob::unique_for`] is called).
    pub fn with_unique_key(mut self, key: impl Into<String>) -> Self {
        let scope = self.unique.take().map_or(UniqueScope::Active, |u| u.scope);
        self.unique = Some(Unique {
            key: Some(key.into()),
            scope,
        });
        self
    }

    /// Put it on `queue`.
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Lower runs first.
    pub fn with_priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Attempt budget (must be ≥ 1).
    pub fn with_max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Not eligible before `at`.
    pub fn with_run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// At most one job exists per key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Run at most the queue's `key_concurrency` (default 1) jobs with this key at once.
    pub fn with_concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Run only once `dependency` has succeeded (see [`NewJob::depends_on`]); may be given many
    /// times.
    pub fn with_dependency(mut self, dependency: impl Into<Dependency>) -> Self {
        self.depends_on.push(dependency.into());
        self
    }

    /// Per-job execution timeout.
    pub fn with_timeout_ms(mut self, timeout_ms: i32) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

/// Filters for [`crate::Store::list`]; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this queue.
    pub queue: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only the job with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only jobs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_before: Option<DateTime<Utc>>,
}

/// One page of a listing, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Page {
    /// The jobs on this page.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<JobId>,
}

/// Per-queue counts, for dashboards and the depth gauges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Jobs queued (eligible now or later).
    pub queued: i64,
    /// Jobs running.
    pub running: i64,
    /// Jobs waiting for their dependencies.
    #[serde(default)]
    pub waiting: i64,
    /// Jobs succeeded (not yet pruned).
    pub succeeded: i64,
    /// Jobs failed.
    pub failed: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// Seconds since the oldest eligible queued job became eligible; 0 when none waits.
    pub oldest_eligible_age_seconds: f64,
    /// Claims take nothing from the queue (enqueues are still accepted).
    #[serde(default)]
    pub paused: bool,
    /// At most this many of its jobs running at once, all workers together.
    #[serde(default)]
    pub concurrency_limit: Option<i32>,
    /// At most `count` job starts per `period_ms`, all workers together.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// At most this many running jobs per `concurrency_key` (null: the default, 1).
    #[serde(default)]
    pub key_concurrency: Option<i32>,
}

/// A queue's rate limit: at most `count` job starts in any `period_ms`, all workers together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Starts allowed per period (1 to 1,000,000).
    pub count: i32,
    /// The period in milliseconds (1 to 86,400,000).
    pub period_ms: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_honours_width_and_alignment() {
        assert_eq!(format!("[{:<9}]", JobState::Queued), "[queued   ]");
        assert_eq!(format!("[{:>9}]", JobState::Failed), "[   failed]");
        assert_eq!(JobState::Running.to_string(), "running");
    }
}
